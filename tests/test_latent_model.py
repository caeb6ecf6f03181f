import math

import pytest
import torch
from pyro import poutine

from pyro_lfbm import EnergyPrior, FlowPrior, GaussianPrior, LatentModel
from pyro_lfbm.models import PIXEL_LIKELIHOODS, PixelBernoulli
from pyro_lfbm.nets import MNISTGenerator

PRIORS = {
    "gaussian": lambda d: GaussianPrior(d),
    "flow": lambda d: FlowPrior(d, num_steps=2, hidden_dim=16),
    "energy": lambda d: EnergyPrior(d, hidden_dims=(16,), num_prior_steps=3),
}


def make_model(prior="flow", latent_dim=6, sigma=0.3, pixel_likelihood="gaussian"):
    model = LatentModel(PRIORS[prior](latent_dim), MNISTGenerator(latent_dim, hidden_dim=32, channels=8), sigma=sigma,
                        pixel_likelihood=pixel_likelihood)
    return model.eval()  # BatchNorm on running statistics: the comparison is exact


def trace_log_prob(model, x, z, mask=None):
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x, mask)
    trace.compute_log_prob()
    return trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("pixel_likelihood", PIXEL_LIKELIHOODS)
def test_log_joint_equals_pyro_trace(prior, masked, pixel_likelihood):
    model = make_model(prior, pixel_likelihood=pixel_likelihood)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    z = torch.randn(5, 6)
    mask = (torch.rand(5, 1, 28, 28) > 0.4).float() if masked else None
    direct = model.log_joint(x, mask, z=z)
    assert direct.shape == (5,)
    assert torch.allclose(direct, trace_log_prob(model, x, z, mask), atol=1e-4)


def test_log_joint_matches_closed_form():
    model = make_model("gaussian", sigma=0.5)
    x, z = torch.rand(3, 1, 28, 28), torch.randn(3, 6)
    mean = model.generator(z)
    expected = (
        torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        + torch.distributions.Normal(mean, 0.5).log_prob(x).flatten(1).sum(-1)
    )
    assert torch.allclose(model.log_joint(x, z=z), expected, atol=1e-3)


def test_bernoulli_log_joint_is_torchs_bernoulli_on_binary_images_and_the_cross_entropy_on_grey_ones():
    model = make_model("gaussian", pixel_likelihood="bernoulli")
    z = torch.randn(3, 6)
    q = ((model.generator(z) + 1) / 2).double()
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1).double()
    binary = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    expected = prior + torch.distributions.Bernoulli(probs=q).log_prob(binary.double()).flatten(1).sum(-1)
    torch.testing.assert_close(model.log_joint(2 * binary - 1, z=z).double(), expected, atol=1e-3, rtol=1e-6)
    grey = torch.rand(3, 1, 28, 28)
    cross_entropy = (grey * q.log() + (1 - grey) * (1 - q).log()).flatten(1).sum(-1)
    torch.testing.assert_close(model.log_joint(2 * grey - 1, z=z).double(), prior + cross_entropy, atol=1e-3, rtol=1e-6)
    # sigma is the Gaussian's only: it does not enter
    other = make_model("gaussian", sigma=0.9, pixel_likelihood="bernoulli")
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.log_joint(2 * grey - 1, z=z), model.log_joint(2 * grey - 1, z=z))


def test_pixel_bernoulli_is_a_pyro_distribution_that_draws_ink_at_its_probability():
    mean = torch.tensor([[-1.0, -0.5, 0.0, 0.6, 1.0]])
    d = PixelBernoulli(mean)
    draws = d.sample((20000,))
    assert draws.shape == (20000, 1, 5) and set(draws.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(((draws + 1) / 2).mean(0), (mean + 1) / 2, atol=0.015, rtol=0)
    # saturated pixels cost at most -log(1e-6) nats, never infinity
    assert torch.isfinite(d.log_prob(-d.mean)).all() and (-d.log_prob(-d.mean)).max() < 14
    expanded = d.expand((4, 5))
    assert expanded.batch_shape == (4, 5) and torch.equal(expanded.log_prob(torch.zeros(4, 5))[0], d.log_prob(torch.zeros(1, 5))[0])
    with pytest.raises(ValueError):
        PixelBernoulli(torch.tensor([1.5]), validate_args=True)
    with pytest.raises(ValueError, match="unknown pixel_likelihood 'poisson'"):
        make_model(pixel_likelihood="poisson")


def test_bernoulli_model_trains_by_svi_and_synthesises_binary_images():
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    from pyro_lfbm import EncoderGuide
    from pyro_lfbm.nets import MNISTEncoder

    pyro.set_rng_seed(0)
    model = make_model("flow", pixel_likelihood="bernoulli").train()
    guide = EncoderGuide(MNISTEncoder(6, hidden_dim=32, channels=8))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    x = 2 * torch.bernoulli(torch.full((16, 1, 28, 28), 0.2)) - 1
    losses = [svi.step(x) for _ in range(30)]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    images = model.eval().sample(4, noise=True)
    assert images.shape == (4, 1, 28, 28) and set(images.unique().tolist()) <= {-1.0, 1.0}


def test_a_model_pickled_before_the_likelihood_choice_loads_as_gaussian():
    import pickle

    model = make_model("gaussian", sigma=0.5)
    del model.__dict__["pixel_likelihood"]  # what a model pickled by an earlier version holds
    loaded = pickle.loads(pickle.dumps(model))
    assert loaded.pixel_likelihood == "gaussian"
    reference = make_model("gaussian", sigma=0.5)
    reference.load_state_dict(model.state_dict())
    x, z = torch.rand(2, 1, 28, 28), torch.randn(2, 6)
    assert torch.equal(loaded.log_joint(x, z=z), reference.log_joint(x, z=z))


def test_masked_pixels_have_no_influence():
    model = make_model("flow")
    x, z = torch.rand(4, 1, 28, 28), torch.randn(4, 6)
    mask = torch.ones_like(x)
    mask[:, :, 10:20, 5:15] = 0
    changed = x.clone()
    changed[:, :, 10:20, 5:15] = 100.0
    assert torch.equal(model.log_joint(x, mask, z=z), model.log_joint(changed, mask, z=z))
    assert torch.equal(trace_log_prob(model, x, z, mask), trace_log_prob(model, changed, z, mask))
    # and without the mask the change matters
    assert not torch.allclose(model.log_joint(x, z=z), model.log_joint(changed, z=z))
    # the gradient wrt z ignores the hidden pixels too
    zz = z.clone().requires_grad_(True)
    g1 = torch.autograd.grad(model.log_joint(x, mask, z=zz).sum(), zz)[0]
    g2 = torch.autograd.grad(model.log_joint(changed, mask, z=zz).sum(), zz)[0]
    assert torch.equal(g1, g2)


def test_bad_inputs_raise_one_line_errors():
    model = make_model("gaussian")
    with pytest.raises(ValueError, match="mask shape .* does not broadcast"):
        model(torch.rand(2, 1, 28, 28), torch.ones(2, 1, 27, 27))
    with pytest.raises(ValueError, match="sigma"):
        LatentModel(GaussianPrior(2), MNISTGenerator(2), sigma=0.0)
    with pytest.raises(TypeError, match="LatentPrior"):
        LatentModel(torch.nn.Linear(2, 2), MNISTGenerator(2))


def test_image_and_mask_validation_names_the_expected_shape():
    model = make_model("gaussian")
    z = torch.randn(2, 6)
    for call in (lambda x, m=None: model(x, m), lambda x, m=None: model.log_joint(x, m, z=z),
                 lambda x, m=None: model.log_joint_terms(x, z, m)):
        with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\).*add the channel dimension"):
            call(torch.rand(2, 28, 28))  # no channel dim: used to broadcast silently
        with pytest.raises(ValueError, match=r"generator makes 1 channel\(s\), x has 3"):
            call(torch.rand(2, 3, 28, 28))
        with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\).*got \(2, 1, 32, 32\)"):
            call(torch.rand(2, 1, 32, 32))
        with pytest.raises(ValueError, match="only 0 and 1"):
            call(torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28))  # used to be cast to bool silently
        with pytest.raises(ValueError, match="does not broadcast"):
            call(torch.rand(2, 1, 28, 28), torch.ones(3, 1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    # accepted: bool masks, 0/1 float masks, one mask broadcast over the batch
    half = torch.zeros(1, 28, 28, dtype=torch.bool)
    half[:, :14] = True
    a = model.log_joint(x, half, z=z)
    b = model.log_joint(x, half.float().expand(2, 1, 28, 28), z=z)
    assert torch.allclose(a, b)


def test_sample_shapes_and_range():
    model = make_model("flow")
    x = model.sample(7)
    assert x.shape == (7, 1, 28, 28) and x.abs().max() <= 1.0


def test_log_joint_with_extra_batch_dimensions():
    """A vectorised particle dimension in front of the batch keeps per-example shapes."""
    model = make_model("flow")
    x, z = torch.rand(5, 1, 28, 28), torch.randn(3, 5, 6)
    out = model.log_joint(x, z=z)
    assert out.shape == (3, 5)
    assert torch.allclose(out[1], model.log_joint(x, z=z[1]), atol=1e-4)
