import pytest
import torch
from pyro import poutine

from pyro_lfbm import EnergyPrior, FlowPrior, GaussianPrior, LatentModel
from pyro_lfbm.nets import MNISTGenerator

PRIORS = {
    "gaussian": lambda d: GaussianPrior(d),
    "flow": lambda d: FlowPrior(d, num_steps=2, hidden_dim=16),
    "energy": lambda d: EnergyPrior(d, hidden_dims=(16,), num_prior_steps=3),
}


def make_model(prior="flow", latent_dim=6, sigma=0.3):
    model = LatentModel(PRIORS[prior](latent_dim), MNISTGenerator(latent_dim, hidden_dim=32, channels=8), sigma=sigma)
    return model.eval()  # BatchNorm on running statistics: the comparison is exact


def trace_log_prob(model, x, z, mask=None):
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x, mask)
    trace.compute_log_prob()
    return trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]


@pytest.mark.parametrize("prior", sorted(PRIORS))
@pytest.mark.parametrize("masked", [False, True])
def test_log_joint_equals_pyro_trace(prior, masked):
    model = make_model(prior)
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
