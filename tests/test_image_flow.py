"""Tests of the image-flow transforms (Squeeze2d, ActNorm2d, InvertibleConv1x1, AffineCoupling2d,
BoundedLogit) and of :class:`pyro_lfbm.models.image_flow.ImageFlow`."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_lfbm.models.image_flow import ImageFlow, dequantize
from pyro_lfbm.transforms import (
    ActNorm2d,
    AffineCoupling2d,
    BoundedLogit,
    InvertibleConv1x1,
    Squeeze2d,
    actnorm2d,
    affine_coupling2d,
    bounded_logit,
    invertible_conv1x1,
    squeeze2d,
)

SHAPE = (4, 4, 4)  # (C, H, W): 64 dimensions, small enough for a full Jacobian


def make(kind, seed=0, noise=0.3):
    """A float64 transform with parameters moved away from their (near-identity) initialisation."""
    torch.manual_seed(seed)
    t = {  # built by the lowercase factories, as a user would (Pyro's convention)
        "squeeze": lambda: squeeze2d(),
        "actnorm2d": lambda: actnorm2d(SHAPE[0]),
        "conv1x1": lambda: invertible_conv1x1(SHAPE[0]),
        "coupling_channel": lambda: affine_coupling2d(SHAPE[0], 8, "channel", parity=0),
        "coupling_channel_odd": lambda: affine_coupling2d(SHAPE[0], 8, "channel", parity=1),
        "coupling_checkerboard": lambda: affine_coupling2d(SHAPE[0], 8, "checkerboard", parity=0),
        "coupling_checkerboard_odd": lambda: affine_coupling2d(SHAPE[0], 8, "checkerboard", parity=1),
        "logit": lambda: bounded_logit(0.05),
    }[kind]().double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(noise * torch.randn_like(p))
    return t


def test_factories_build_their_classes():
    assert isinstance(squeeze2d(), Squeeze2d) and squeeze2d(3).factor == 3
    assert isinstance(actnorm2d(4), ActNorm2d) and actnorm2d(4).channels == 4
    assert isinstance(invertible_conv1x1(4), InvertibleConv1x1)
    assert isinstance(affine_coupling2d(4, 8, "checkerboard", 1), AffineCoupling2d)
    assert isinstance(bounded_logit(0.1), BoundedLogit) and bounded_logit(0.1).alpha == 0.1


KINDS = ["squeeze", "actnorm2d", "conv1x1", "coupling_channel", "coupling_channel_odd", "coupling_checkerboard",
         "coupling_checkerboard_odd", "logit"]


def inputs(kind, batch_shape=(3,)):
    x = torch.randn(batch_shape + SHAPE, dtype=torch.float64)
    return torch.tanh(x) * 0.99 if kind == "logit" else x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_shape", [(3,), (2, 2)])
def test_inverse(kind, batch_shape):
    t = make(kind)
    x = inputs(kind, batch_shape)
    y = t(x)
    assert t._cache_size == 0 and t.bijective
    if kind != "squeeze":
        assert y.shape == x.shape and not torch.allclose(y, x)
    torch.testing.assert_close(t.inv(y), x, atol=1e-9, rtol=1e-9)
    assert t.log_abs_det_jacobian(x, y).shape == batch_shape


@pytest.mark.parametrize("kind", KINDS)
def test_log_abs_det_jacobian_matches_autograd(kind):
    t = make(kind)
    x = inputs(kind, (3,))
    ladj = t.log_abs_det_jacobian(x, t(x))
    d = math.prod(SHAPE)
    expected = torch.stack([torch.linalg.slogdet(jacobian(lambda v: t(v.reshape(SHAPE)).reshape(d), xi.reshape(d),
                                                     vectorize=True))[1] for xi in x])
    torch.testing.assert_close(ladj, expected, atol=1e-9, rtol=1e-9)


def test_checkerboard_coupling_keeps_its_conditioning_pixels():
    t = make("coupling_checkerboard")
    x = inputs("coupling_checkerboard")
    y = t(x)
    grid = torch.arange(4)[:, None] + torch.arange(4)[None, :]
    keep = (grid % 2 == 0).expand_as(x)
    assert torch.equal(y[keep], x[keep]) and not torch.allclose(y[~keep], x[~keep])


def test_squeeze_shapes_and_pixel_layout():
    t = Squeeze2d()
    x = torch.arange(2 * 1 * 4 * 4.0).reshape(2, 1, 4, 4)
    y = t(x)
    assert y.shape == (2, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]
    assert t.forward_shape((5, 1, 4, 4)) == (5, 4, 2, 2) and t.inverse_shape((4, 2, 2)) == (1, 4, 4)
    with pytest.raises(ValueError, match="divisible"):
        t(torch.zeros(1, 1, 3, 4))


def test_invertible_conv_has_no_stale_cache():
    t = make("conv1x1")
    x = inputs("conv1x1")
    y1 = t(x)
    with torch.no_grad():
        t.LU.add_(0.1)
    assert not torch.allclose(t(x), y1)  # Pyro's cache_size=1 would return y1 again


def test_actnorm2d_data_init_standardises():
    t = ActNorm2d(3)
    x = 2.0 + 5.0 * torch.randn(64, 3, 5, 5)
    t.initialize(x)
    y = t(x).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(y.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(1), torch.ones(3), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- ImageFlow


@pytest.fixture
def flow():
    torch.manual_seed(0)
    f = ImageFlow((1, 8, 8), num_levels=2, steps_per_level=2, hidden_channels=8, checkerboard_steps=2).double()
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return f


def test_image_flow_log_prob_is_a_normalised_change_of_variables(flow):
    x = torch.tanh(torch.randn(3, 1, 8, 8, dtype=torch.float64))
    lp = flow.log_prob(x)
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, flow.dist().log_prob(x))  # Pyro's TransformedDistribution agrees
    assert flow.latent_shape == (16, 2, 2) and flow.dist().event_shape == (1, 8, 8)
    # change of variables against the full autograd Jacobian of x -> eps
    for xi, li in zip(x[:1], lp[:1]):
        jac = jacobian(lambda v: flow.forward_with_log_det(v.reshape(1, 8, 8))[0].reshape(64), xi.reshape(64),
                       vectorize=True)
        eps = flow.forward_with_log_det(xi)[0]
        expected = dist.Normal(0.0, 1.0).log_prob(eps).sum() + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(li, expected, atol=1e-8, rtol=1e-8)


def test_image_flow_samples_invert_and_stay_in_range(flow):
    eps = torch.randn(4, *flow.latent_shape, dtype=torch.float64)
    x = flow.flow.inv(eps)
    torch.testing.assert_close(flow.forward_with_log_det(x)[0], eps, atol=1e-8, rtol=1e-8)
    s = flow.sample(6)
    assert s.shape == (6, 1, 8, 8) and s.min() >= -1 and s.max() <= 1


def test_dequantize_and_bits_per_dim():
    x = torch.tensor([-1.0, 1.0]).reshape(1, 1, 1, 2).expand(500, 1, 1, 2)
    d = dequantize(x)
    assert d.min() >= -1 and d.max() < 1 and d[:, 0, 0, 0].max() < -1 + 1 / 128 and d[:, 0, 0, 1].min() >= 1 - 2 / 128
    torch.manual_seed(0)
    f = ImageFlow((1, 28, 28), num_levels=1, steps_per_level=1, hidden_channels=4, checkerboard_steps=0)
    u = torch.rand(8, 1, 28, 28) * 2 - 1
    # uniform on [-1, 1]^D is 8 bits/dim; the untrained flow must be worse or equal up to noise
    assert (f.bits_per_dim(u) > 7.5).all()


def test_image_flow_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        ImageFlow((1, 28, 28), num_levels=3)
    f = ImageFlow((1, 8, 8), 1, 1, 4, 0)
    with pytest.raises(ValueError, match="expected images"):
        f.log_prob(torch.zeros(2, 1, 4, 4))
