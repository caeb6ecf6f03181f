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


def make_prior(permutation, latent_dim=4, seed=0, noise=0.1, **kwargs):
    """A float64 FlowPrior whose parameters are all moved away from their init."""
    torch.manual_seed(seed)
    prior = FlowPrior(latent_dim, num_steps=3, hidden_dim=16, permutation=permutation, **kwargs).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(noise * torch.randn_like(p))
    return prior


def change_of_variables(prior, z):
    """log N(f(z); 0, I) + log|det J_f(z)| with J_f from autograd, for z of shape (B, D)."""
    f = prior.flow
    out = []
    for zi in z:
        eps = f(zi)
        log_det = torch.linalg.slogdet(jacobian(f, zi))[1]
        out.append(-0.5 * eps.pow(2).sum() - 0.5 * len(zi) * math.log(2 * math.pi) + log_det)
    return torch.stack(out)


def test_exports():
    assert {"LatentPrior", "GaussianPrior", "FlowPrior"} <= set(priors.__all__)
    assert issubclass(FlowPrior, LatentPrior) and issubclass(GaussianPrior, LatentPrior)


@pytest.mark.parametrize(
    "kwargs",
    [dict(latent_dim=1), dict(latent_dim=4, num_steps=0), dict(latent_dim=4, hidden_dim=0),
     dict(latent_dim=4, permutation="reverse"), dict(latent_dim=4.0)],
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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_log_prob_is_change_of_variables(permutation):
    prior = make_prior(permutation)
    z = torch.randn(6, 4, dtype=torch.float64)
    expected = change_of_variables(prior, z)
    torch.testing.assert_close(prior.log_prob(z), expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(prior.dist().log_prob(z), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
def test_sample_shape_and_finite_log_prob(permutation, sample_shape):
    prior = make_prior(permutation)
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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_gradients_reach_every_parameter_and_z(permutation):
    prior = make_prior(permutation)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    prior.log_prob(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    names = [n for n, _ in prior.named_parameters()]
    assert names  # FlowPrior has parameters
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_log_prob_twice_then_backward_twice(permutation):
    prior = make_prior(permutation)
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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_in_place_edit_of_z_is_seen(permutation):
    prior = make_prior(permutation)
    z = torch.randn(8, 4, dtype=torch.float64)
    d = prior.dist()
    before, before_dist = prior.log_prob(z), d.log_prob(z)
    z.add_(0.5)
    torch.testing.assert_close(prior.log_prob(z), prior.log_prob(z.clone()), atol=0, rtol=0)
    torch.testing.assert_close(d.log_prob(z), d.log_prob(z.clone()), atol=0, rtol=0)
    assert not torch.allclose(prior.log_prob(z), before)
    assert not torch.allclose(d.log_prob(z), before_dist)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_state_dict_round_trip(permutation):
    prior = make_prior(permutation, seed=0)
    fresh = make_prior(permutation, seed=1)
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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_deepcopy_is_independent(permutation):
    prior = make_prior(permutation)
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
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_cuda(permutation):
    prior = make_prior(permutation)
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


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_maximum_likelihood_fit(permutation, one_thread):
    torch.manual_seed(0)
    loc = torch.tensor([2.0, -1.0])
    scale_tril = torch.tensor([[1.5, 0.0], [1.2, 0.5]])
    train = loc + torch.randn(512, 2) @ scale_tril.T
    test = loc + torch.randn(2000, 2) @ scale_tril.T
    optimum = -(1 + math.log(2 * math.pi)) - scale_tril.diagonal().log().sum().item()  # -entropy
    prior = FlowPrior(2, num_steps=2, hidden_dim=16, permutation=permutation)
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


# ---------------------------------------------------------------- GaussianPrior


def test_gaussian_prior_closed_form():
    prior = GaussianPrior(5)
    z = torch.randn(3, 4, 5)
    expected = -0.5 * z.pow(2).sum(-1) - 2.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior.log_prob(z), expected)
    assert prior.dist().event_shape == (5,)
    assert prior.sample((6,)).shape == (6, 5)
    assert list(prior.parameters()) == []
