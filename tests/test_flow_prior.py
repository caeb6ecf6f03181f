"""Tests of the latent priors :class:`FlowPrior` and :class:`GaussianPrior`."""

import copy
import math

import pytest
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.distributions.transforms import Permute
from torch.autograd.functional import jacobian

import pyro_lfbm.priors as priors
from pyro_lfbm.priors import FlowPrior, GaussianPrior, LatentPrior
from pyro_lfbm.transforms import ActNorm, BoundedAffineCoupling, LULinear

PERMUTATIONS = ["lu", "permute"]
#: every kind of flow prior: the two mixers onto N(0, I), and a learned Gaussian-mixture base
FLOWS = [dict(permutation="lu"), dict(permutation="permute"), dict(permutation="lu", num_components=3)]
FLOW_IDS = ["lu", "permute", "mixture-base"]


def make_prior(latent_dim=4, seed=0, noise=0.1, **kwargs):
    """A float64 FlowPrior whose parameters are all moved away from their init."""
    torch.manual_seed(seed)
    prior = FlowPrior(latent_dim, num_steps=3, hidden_dim=16, **kwargs).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(noise * torch.randn_like(p))
    return prior


def base_log_prob(prior, eps):
    """log N(eps; 0, I), or the mixture base's density from torch.distributions' own MixtureSameFamily."""
    if not prior.num_components:
        return -0.5 * eps.pow(2).sum() - 0.5 * len(eps) * math.log(2 * math.pi)
    components = torch.distributions.Independent(
        torch.distributions.Normal(prior.mixture_locs, prior.mixture_log_scales.exp()), 1)
    mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=prior.mixture_logits), components)
    return mixture.log_prob(eps)


def change_of_variables(prior, z):
    """log p_base(f(z)) + log|det J_f(z)| with J_f from autograd, for z of shape (B, D)."""
    f = prior.flow
    out = []
    for zi in z:
        log_det = torch.linalg.slogdet(jacobian(f, zi))[1]
        out.append(base_log_prob(prior, f(zi)) + log_det)
    return torch.stack(out)


def test_exports():
    assert {"LatentPrior", "GaussianPrior", "FlowPrior"} <= set(priors.__all__)
    assert issubclass(FlowPrior, LatentPrior) and issubclass(GaussianPrior, LatentPrior)


@pytest.mark.parametrize(
    "kwargs",
    [dict(latent_dim=1), dict(latent_dim=4, num_steps=0), dict(latent_dim=4, hidden_dim=0),
     dict(latent_dim=4, permutation="reverse"), dict(latent_dim=4.0), dict(latent_dim=4, num_components=-1),
     dict(latent_dim=4, num_components=2.0), dict(latent_dim=4, num_components=True)],
)
def test_flow_prior_validates_arguments(kwargs):
    with pytest.raises(ValueError):
        FlowPrior(**kwargs)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_structure(permutation):
    prior = FlowPrior(5, num_steps=2, hidden_dim=8, permutation=permutation)
    assert isinstance(prior.flow, ComposeTransformModule)
    mixer = LULinear if permutation == "lu" else Permute
    kinds = [ActNorm, mixer, BoundedAffineCoupling] * 2
    assert all(isinstance(p, k) for p, k in zip(prior.flow.parts, kinds, strict=True))
    assert all(p._cache_size == 0 for p in prior.flow.parts)
    # every part is a registered module, so parameters and buffers are found
    assert len(list(prior.flow.children())) == 6
    if permutation == "permute":
        perms = [p.permutation for p in prior.flow.parts if isinstance(p, Permute)]
        assert all(not torch.equal(q, torch.arange(5)) for q in perms)
        assert sum(k.endswith("permutation") for k in prior.state_dict()) == 2


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_log_prob_is_change_of_variables(flow):
    prior = make_prior(**flow)
    z = torch.randn(6, 4, dtype=torch.float64)
    expected = change_of_variables(prior, z)
    torch.testing.assert_close(prior.log_prob(z), expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(prior.dist().log_prob(z), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
def test_sample_shape_and_finite_log_prob(flow, sample_shape):
    prior = make_prior(**flow)
    z = prior.sample(sample_shape)
    assert z.shape == sample_shape + (4,) and not z.requires_grad
    lp = prior.log_prob(z)
    assert lp.shape == sample_shape and torch.isfinite(lp).all()
    # sampling is z = f^{-1}(eps)
    torch.manual_seed(7)
    z = prior.sample((5,))
    torch.manual_seed(7)
    eps = prior.base_dist().sample((5,))
    torch.testing.assert_close(prior.flow(z), eps)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_gradients_reach_every_parameter_and_z(flow):
    prior = make_prior(**flow)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    prior.log_prob(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    names = [n for n, _ in prior.named_parameters()]
    assert names  # FlowPrior has parameters
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_log_prob_twice_then_backward_twice(flow):
    prior = make_prior(**flow)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    for log_prob in (prior.log_prob, prior.dist().log_prob):
        first, second = log_prob(z), log_prob(z)
        first.sum().backward()
        second.sum().backward()
        torch.testing.assert_close(first, second)
    # and after a parameter update, scoring the same z again gives a fresh graph and value
    opt = torch.optim.SGD(prior.parameters(), lr=1e-2)
    before = prior.log_prob(z)
    opt.step()
    prior.clear_cache()
    after = prior.log_prob(z)
    after.sum().backward()
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_in_place_edit_of_z_is_seen(flow):
    prior = make_prior(**flow)
    z = torch.randn(8, 4, dtype=torch.float64)
    d = prior.dist()
    before, before_dist = prior.log_prob(z), d.log_prob(z)
    z.add_(0.5)
    torch.testing.assert_close(prior.log_prob(z), prior.log_prob(z.clone()), atol=0, rtol=0)
    torch.testing.assert_close(d.log_prob(z), d.log_prob(z.clone()), atol=0, rtol=0)
    assert not torch.allclose(prior.log_prob(z), before)
    assert not torch.allclose(d.log_prob(z), before_dist)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_state_dict_round_trip(flow):
    prior = make_prior(**flow, seed=0)
    fresh = make_prior(**flow, seed=1)
    z = torch.randn(8, 4, dtype=torch.float64)
    fresh.sample((3,))  # exercise the inverse (and any lazily cached state) before loading
    assert not torch.allclose(fresh.log_prob(z), prior.log_prob(z))
    fresh.load_state_dict(prior.state_dict())
    torch.testing.assert_close(fresh.log_prob(z), prior.log_prob(z), atol=0, rtol=0)
    torch.manual_seed(3)
    a = prior.sample((5,))
    torch.manual_seed(3)
    b = fresh.sample((5,))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_deepcopy_is_independent(flow):
    prior = make_prior(**flow)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    reference = prior.dist().log_prob(z).detach()  # builds flow.inv and keeps graphs around
    clone = copy.deepcopy(prior)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.1)
    torch.testing.assert_close(prior.dist().log_prob(z), reference)
    torch.testing.assert_close(prior.log_prob(z), reference)
    assert not torch.allclose(clone.dist().log_prob(z), reference)


def test_dtype_conversion_moves_buffers():
    prior = FlowPrior(3, num_steps=2, hidden_dim=8).double()
    assert all(b.dtype in (torch.float64, torch.long) for b in prior.buffers())
    z = torch.randn(2, 3, dtype=torch.float64)
    assert prior.log_prob(z).dtype == torch.float64 and prior.sample((2,)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_cuda(flow):
    prior = make_prior(**flow)
    z = torch.randn(8, 4, dtype=torch.float64)
    expected = prior.log_prob(z)
    prior = prior.cuda()
    torch.testing.assert_close(prior.log_prob(z.cuda()).cpu(), expected)
    assert prior.sample((5,)).device.type == "cuda"


@pytest.fixture
def one_thread():
    # Tiny tensors: avoid thread oversubscription on a busy 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_maximum_likelihood_fit(flow, one_thread):
    torch.manual_seed(0)
    loc = torch.tensor([2.0, -1.0])
    scale_tril = torch.tensor([[1.5, 0.0], [1.2, 0.5]])
    train = loc + torch.randn(512, 2) @ scale_tril.T
    test = loc + torch.randn(2000, 2) @ scale_tril.T
    optimum = -(1 + math.log(2 * math.pi)) - scale_tril.diagonal().log().sum().item()  # -entropy
    prior = FlowPrior(2, num_steps=2, hidden_dim=16, **flow)
    optim = torch.optim.Adam(prior.parameters(), lr=3e-2)
    initial = prior.log_prob(train).mean().item()
    for _ in range(200):
        optim.zero_grad()
        (-prior.log_prob(train).mean()).backward()
        optim.step()
    with torch.no_grad():
        final, held_out = prior.log_prob(train).mean().item(), prior.log_prob(test).mean().item()
    assert final > initial + 2.5
    assert final > optimum - 0.15
    assert held_out > optimum - 0.15


@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_density_integrates_to_one(flow):
    """Quadrature of exp(log p) over a fine grid of R² (the mass outside [-12, 12]² is negligible here)."""
    prior = make_prior(latent_dim=2, noise=0.05, **flow)
    grid = torch.linspace(-12, 12, 801, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = prior.log_prob(z).exp().reshape(801, 801)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid).item()
    assert abs(mass - 1) < 1e-3, mass


def test_mixture_base_separates_two_clusters_better(one_thread):
    """On two well separated clusters a small flow onto a learned two-component mixture reaches a higher held-out
    likelihood, and a lower density between the clusters, than the same flow onto N(0, I)."""
    torch.manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])

    def draw(n):
        return centres[torch.randint(0, 2, (n,))] + 0.3 * torch.randn(n, 2)

    train, test = draw(1024), draw(2000)
    fitted = {}
    for components in (0, 2):
        torch.manual_seed(1)
        prior = FlowPrior(2, num_steps=2, hidden_dim=16, num_components=components)
        optim = torch.optim.Adam(prior.parameters(), lr=3e-2)
        for _ in range(300):
            optim.zero_grad()
            (-prior.log_prob(train).mean()).backward()
            optim.step()
        with torch.no_grad():
            fitted[components] = (prior.log_prob(test).mean().item(), prior.log_prob(torch.zeros(1, 2)).item())
    (standard, standard_gap), (mixture, mixture_gap) = fitted[0], fitted[2]
    optimum = -(1 + math.log(2 * math.pi)) - 2 * math.log(0.3) - math.log(2)  # -entropy of the clusters
    assert mixture > optimum - 0.1 and mixture > standard + 0.1, fitted
    assert mixture_gap < standard_gap - 5.0, fitted


# ---------------------------------------------------------------- GaussianPrior


def test_gaussian_prior_closed_form():
    prior = GaussianPrior(5)
    z = torch.randn(3, 4, 5)
    expected = -0.5 * z.pow(2).sum(-1) - 2.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior.log_prob(z), expected)
    assert prior.dist().event_shape == (5,)
    assert prior.sample((6,)).shape == (6, 5)
    assert list(prior.parameters()) == []
