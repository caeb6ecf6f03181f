"""Tests of the flow building blocks in :mod:`pyro_lfbm.transforms`."""

import copy
import math

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_lfbm.transforms import (
    ActNorm,
    BoundedAffineCoupling,
    LULinear,
    actnorm,
    bounded_affine_coupling,
    lu_linear,
)

KINDS = ["actnorm", "lu_linear", "coupling"]
DIMS = [2, 3, 5, 6]
BATCH_SHAPES = [(), (7,), (3, 4)]


def make(kind, dim, seed=0, noise=0.3):
    """A float64 transform whose parameters are all moved away from their (near-identity) init."""
    torch.manual_seed(seed)
    t = {"actnorm": actnorm, "lu_linear": lu_linear, "coupling": bounded_affine_coupling}[kind](dim).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(noise * torch.randn_like(p))
    return t


@pytest.mark.parametrize("kind", KINDS)
def test_factory_types_and_flags(kind):
    t = make(kind, 4)
    assert isinstance(t, {"actnorm": ActNorm, "lu_linear": LULinear, "coupling": BoundedAffineCoupling}[kind])
    assert t.bijective and t._cache_size == 0
    assert t.domain.event_dim == 1 and t.codomain.event_dim == 1


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_inverse(kind, dim, batch_shape):
    t = make(kind, dim)
    x = torch.randn(batch_shape + (dim,), dtype=torch.float64)
    y = t(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)  # a non-trivial map
    torch.testing.assert_close(t.inv(y), x, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(t(t.inv(x)), x, atol=1e-9, rtol=1e-9)
    assert t.log_abs_det_jacobian(x, y).shape == batch_shape


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", KINDS)
def test_log_abs_det_jacobian_matches_autograd(kind, dim):
    t = make(kind, dim)
    x = torch.randn(7, dim, dtype=torch.float64)
    ladj = t.log_abs_det_jacobian(x, t(x))
    expected = torch.stack([torch.linalg.slogdet(jacobian(t, xi))[1] for xi in x])
    torch.testing.assert_close(ladj, expected, atol=1e-10, rtol=1e-10)
    # Also through Pyro: the density of y = t(x), x ~ N(0, I), against the change of variables.
    base = dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)
    y = t(x)
    lp = dist.TransformedDistribution(base, [t]).log_prob(y)
    torch.testing.assert_close(lp, base.log_prob(x) - expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    t = make(kind, 5)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = t(x)
    loss = (y**2).sum() + t.log_abs_det_jacobian(x, y).sum() + t.inv(x).pow(2).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- ActNorm


def test_actnorm_is_identity_at_init_and_affine():
    t = ActNorm(3)
    x = torch.randn(4, 3)
    torch.testing.assert_close(t(x), x)
    with torch.no_grad():
        t.loc.copy_(torch.tensor([1.0, 2.0, 3.0]))
        t.log_scale.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    expected = x * torch.tensor([1.0, 2.0, math.exp(-1.0)]) + torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(t(x), expected)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.full((4,), math.log(2.0) - 1.0))


# ---------------------------------------------------------------- LULinear


@pytest.mark.parametrize("dim", DIMS)
def test_lu_linear_log_det_equals_slogdet_of_weight(dim):
    t = make("lu_linear", dim)
    x = torch.randn(2, dim, dtype=torch.float64)
    w = t.weight
    torch.testing.assert_close(t(x), x @ w.T)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.linalg.slogdet(w)[1].expand(2))
    # The documented factorisation W = P L U.
    lower, upper = t._factors()
    assert torch.equal(lower.triu(), torch.eye(dim, dtype=torch.float64))
    assert torch.equal(upper.tril(-1), torch.zeros(dim, dim, dtype=torch.float64))
    torch.testing.assert_close(upper.diagonal().abs().log(), t.log_abs_diag)
    assert torch.equal(torch.sort(t.perm).values, torch.arange(dim))


def test_lu_linear_starts_orthogonal():
    torch.manual_seed(1)
    t = LULinear(6)
    w = t.weight
    torch.testing.assert_close(w @ w.T, torch.eye(6), atol=1e-5, rtol=0)
    assert t.log_abs_det_jacobian(torch.zeros(6), torch.zeros(6)).abs() < 1e-5


def test_lu_linear_buffers_follow_dtype_and_state_dict():
    torch.manual_seed(0)
    t = LULinear(5)
    assert {"perm", "diag_sign", "lower_entries", "upper_entries", "log_abs_diag"} == set(t.state_dict())
    t = t.double()
    assert t.diag_sign.dtype == torch.float64 and t.perm.dtype == torch.long
    torch.manual_seed(123)
    fresh = LULinear(5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert not torch.allclose(fresh(x), t(x))
    fresh.load_state_dict(t.state_dict())
    torch.testing.assert_close(fresh(x), t(x))
    torch.testing.assert_close(fresh.inv(x), t.inv(x))


# ---------------------------------------------------------------- BoundedAffineCoupling


def test_coupling_needs_two_dims():
    with pytest.raises(ValueError, match="input_dim >= 2"):
        BoundedAffineCoupling(1)
    with pytest.raises(ValueError):
        bounded_affine_coupling(4, hidden_dim=0)


@pytest.mark.parametrize("dim", DIMS)
def test_coupling_structure_and_bounded_scale(dim):
    t = make("coupling", dim)  # scales spread over about (0.01, 0.999)
    d = dim // 2
    for x in torch.randn(5, dim, dtype=torch.float64):
        jac = jacobian(t, x)
        torch.testing.assert_close(jac[:d, :d], torch.eye(d, dtype=torch.float64))
        assert torch.equal(jac[:d, d:], torch.zeros(d, dim - d, dtype=torch.float64))
        scale = jac[d:, d:]
        torch.testing.assert_close(scale, torch.diag(scale.diagonal()))  # elementwise in x2
        assert (scale.diagonal() > 0).all() and (scale.diagonal() < 1).all()
    x = torch.randn(100, dim, dtype=torch.float64)
    assert (t.log_abs_det_jacobian(x, t(x)) < 0).all()


def test_coupling_starts_near_identity():
    t = BoundedAffineCoupling(5, hidden_dim=8)
    x = torch.randn(4, 5)
    y = t(x)
    torch.testing.assert_close(y[:, :2], x[:, :2])
    torch.testing.assert_close(y[:, 2:], x[:, 2:] * torch.sigmoid(torch.tensor(2.0)))


def _count_hypernet_calls(t):
    calls = []
    t.hypernet.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_coupling_reuses_last_log_det_only_for_the_same_tensors():
    t = make("coupling", 5)
    calls = _count_hypernet_calls(t)
    x = torch.randn(6, 5, dtype=torch.float64)
    y = t(x)
    reused = t.log_abs_det_jacobian(x, y)
    assert len(calls) == 1  # the forward pass's value was reused
    fresh = t.log_abs_det_jacobian(x.clone(), y)
    assert len(calls) == 2
    torch.testing.assert_close(reused, fresh, atol=0, rtol=0)
    # the same holds after an inverse pass
    x_back = t.inv(y)
    reused_inv = t.log_abs_det_jacobian(x_back, y)
    assert len(calls) == 3
    torch.testing.assert_close(reused_inv, fresh)
    # a different x is never answered from the kept value
    other = torch.randn(6, 5, dtype=torch.float64)
    t(x)
    torch.testing.assert_close(t.log_abs_det_jacobian(other, y), t.log_abs_det_jacobian(other, t(other)))
    t(x)
    t.clear_cache()
    assert t._last is None


def test_coupling_no_stale_value_after_in_place_edit():
    t = make("coupling", 4)
    base = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1)
    d = dist.TransformedDistribution(base, [t.inv])  # density direction: z -> t(z) ~ N(0, I)
    z = torch.randn(8, 4, dtype=torch.float64)
    before = d.log_prob(z)
    with torch.no_grad():
        z.add_(0.7)  # in place: same tensor object, new values
    after = d.log_prob(z)
    expected = d.log_prob(z.clone())
    torch.testing.assert_close(after, expected, atol=0, rtol=0)
    assert not torch.allclose(after, before)
    eps = t(z)
    torch.testing.assert_close(expected, base.log_prob(eps) + t.log_abs_det_jacobian(z.clone(), eps))


def test_coupling_deepcopy_after_use():
    t = make("coupling", 4)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = t(x)  # keeps non-leaf tensors with a graph
    c = copy.deepcopy(t)
    assert c._last is None
    torch.testing.assert_close(c(x), y)
