"""Tests of pyro_lfbm.nets: generators, encoders and the MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_lfbm.nets import (
    MLP,
    DCGANEncoder32,
    DCGANEncoder64,
    DCGANGenerator32,
    DCGANGenerator64,
    MNISTEncoder,
    MNISTGenerator,
    make_activation,
    make_encoder,
    make_generator,
)

# Small widths keep the CPU tests fast; the architecture (layers, strides, shapes) is unchanged.
SMALL_MNIST = dict(hidden_dim=32, channels=8)

GENERATORS = {
    "mnist": lambda: MNISTGenerator(latent_dim=6, **SMALL_MNIST),
    "mnist_nohidden": lambda: MNISTGenerator(latent_dim=6, hidden_dim=0, channels=8),
    "mnist_nobn": lambda: MNISTGenerator(latent_dim=6, batch_norm=False, **SMALL_MNIST),
    "svhn32": lambda: DCGANGenerator32(latent_dim=6, ngf=4, channels=3, variant="svhn"),
    "cifar32": lambda: DCGANGenerator32(latent_dim=6, ngf=4, channels=3, variant="cifar"),
    "gray32_bn": lambda: DCGANGenerator32(latent_dim=6, ngf=4, channels=1, batch_norm=True),
    "celeba64": lambda: DCGANGenerator64(latent_dim=6, ngf=4, channels=3),
}
GEN_SHAPES = {
    "mnist": (1, 28, 28),
    "mnist_nohidden": (1, 28, 28),
    "mnist_nobn": (1, 28, 28),
    "svhn32": (3, 32, 32),
    "cifar32": (3, 32, 32),
    "gray32_bn": (1, 32, 32),
    "celeba64": (3, 64, 64),
}
ENCODERS = {
    "mnist": lambda det: MNISTEncoder(latent_dim=6, deterministic=det, **SMALL_MNIST),
    "mnist_nohidden": lambda det: MNISTEncoder(latent_dim=6, hidden_dim=0, channels=8, deterministic=det),
    "mnist_nobn": lambda det: MNISTEncoder(latent_dim=6, batch_norm=False, deterministic=det, **SMALL_MNIST),
    "svhn32": lambda det: DCGANEncoder32(latent_dim=6, ndf=4, deterministic=det),
    "cifar32": lambda det: DCGANEncoder32(latent_dim=6, ndf=4, variant="cifar", deterministic=det),
    "gray32_bn": lambda det: DCGANEncoder32(latent_dim=6, ndf=4, channels=1, batch_norm=True, deterministic=det),
    "celeba64": lambda det: DCGANEncoder64(latent_dim=6, ndf=4, deterministic=det),
}


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _has_bn(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


# ------------------------------------------------------------------ generators


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize("batch", [1, 5])
def test_generator_shape_and_range(name, batch):
    torch.manual_seed(0)
    g = GENERATORS[name]()
    # Batch size 1 only works in eval mode when the net has BatchNorm (see module docstring).
    if batch == 1:
        g.eval()
    x = g(3.0 * torch.randn(batch, 6))
    assert x.shape == (batch, *GEN_SHAPES[name])
    assert g.image_shape == GEN_SHAPES[name]
    assert torch.isfinite(x).all()
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.std() > 0  # not a constant map


def test_batchnorm_mnist_generator_batch_one_needs_eval():
    # BatchNorm1d in train mode cannot normalise a single sample: documented limitation.
    g = GENERATORS["mnist"]().train()
    with pytest.raises(ValueError, match="more than 1 value"):
        g(torch.randn(1, 6))
    assert g.eval()(torch.randn(1, 6)).shape == (1, 1, 28, 28)


@pytest.mark.parametrize("name", ["mnist_nobn", "svhn32", "celeba64", "gray32_bn"])
def test_other_generators_take_batch_one_in_train_mode(name):
    # No BatchNorm1d here (BatchNorm2d on >= 4x4 maps has enough values per channel).
    g = GENERATORS[name]().train()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in g.modules())
    assert g(torch.randn(1, 6)).shape == (1, *GEN_SHAPES[name])


def test_generator_extra_batch_dims_and_bad_latent_dim():
    g = GENERATORS["svhn32"]()
    assert g(torch.randn(2, 3, 6)).shape == (2, 3, 3, 32, 32)
    with pytest.raises(ValueError, match="latent_dim|shape"):
        g(torch.randn(4, 7))


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_gradient_reaches_z(name):
    torch.manual_seed(0)
    g = GENERATORS[name]()
    z = torch.randn(4, 6, requires_grad=True)
    g(z).square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in g.parameters())


def test_default_mnist_generator_has_paper_layer_sizes():
    g = MNISTGenerator()
    assert g.latent_dim == 20
    lin = lambda i, o: i * o + o  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    convt = lambda i, o, k: i * o * k * k + o  # noqa: E731
    expected = (
        lin(20, 1024) + bn(1024)
        + lin(1024, 128 * 7 * 7) + bn(128 * 7 * 7)
        + convt(128, 64, 2) + bn(64)
        + convt(64, 1, 2)
    )
    assert expected == 6_498_113
    assert _n_params(g) == expected
    shapes = [tuple(m.weight.shape) for m in g.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
    assert shapes == [(1024, 20), (6272, 1024), (128, 64, 2, 2), (64, 1, 2, 2)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in g.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 1
    assert isinstance(list(g.modules())[-1], nn.Tanh)


def test_mnist_generator_options_change_sizes():
    lin = lambda i, o: i * o + o  # noqa: E731
    convt = lambda i, o, k: i * o * k * k + o  # noqa: E731
    no_hidden_no_bn = MNISTGenerator(latent_dim=20, hidden_dim=0, channels=32, batch_norm=False)
    assert _n_params(no_hidden_no_bn) == lin(20, 32 * 49) + convt(32, 16, 2) + convt(16, 1, 2)
    assert not _has_bn(no_hidden_no_bn)
    with pytest.raises(ValueError):
        MNISTGenerator(channels=7)


def test_init_follows_lfbm():
    torch.manual_seed(0)
    g = MNISTGenerator(hidden_dim=64, channels=64)
    bn_w = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)])
    bn_b = torch.cat([m.bias.detach() for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)])
    assert (bn_b == 0).all()
    assert abs(bn_w.mean().item() - 1.0) < 0.01 and 0.01 < bn_w.std().item() < 0.03
    convt = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)][0]
    # xavier-normal std for ConvT(64→32, k2): fan_in = 32·4, fan_out = 64·4 (torch's convention)
    expected_std = (2.0 / (32 * 4 + 64 * 4)) ** 0.5
    assert abs(convt.weight.std().item() - expected_std) / expected_std < 0.1


# ------------------------------------------------------------------ encoders


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("batch", [1, 5])
def test_encoder_gaussian_output(name, batch):
    torch.manual_seed(0)
    enc = ENCODERS[name](False)
    if batch == 1:
        enc.eval()
    x = torch.rand(batch, *GEN_SHAPES[name]) * 2 - 1
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (batch, 6)
    assert torch.isfinite(loc).all() and (scale > 0).all()
    assert (scale >= enc.min_scale).all()


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("batch", [1, 5])
def test_encoder_deterministic_code(name, batch):
    enc = ENCODERS[name](True)
    if batch == 1:
        enc.eval()
    code = enc(torch.rand(batch, *GEN_SHAPES[name]) * 2 - 1)
    assert isinstance(code, torch.Tensor) and code.shape == (batch, 6)


def test_encoder_scale_floor_for_very_negative_inputs():
    enc = MNISTEncoder(latent_dim=3, hidden_dim=0, channels=4, batch_norm=False, min_scale=1e-3)
    with torch.no_grad():
        last = enc.net[-1]
        last.weight.zero_()
        last.bias.fill_(-1e4)  # softplus(-1e4) underflows to 0 → the floor must hold
    _, scale = enc(torch.zeros(2, 1, 28, 28))
    assert torch.allclose(scale, torch.full_like(scale, 1e-3))


def test_encoder_batchnorm_batch_one_needs_eval():
    enc = ENCODERS["mnist"](False).train()
    with pytest.raises(ValueError, match="more than 1 value"):
        enc(torch.zeros(1, 1, 28, 28))


def test_encoder_extra_batch_dims_and_bad_shape():
    enc = ENCODERS["svhn32"](False)
    loc, scale = enc(torch.zeros(2, 3, 3, 32, 32))
    assert loc.shape == scale.shape == (2, 3, 6)
    with pytest.raises(ValueError):
        enc(torch.zeros(2, 3, 28, 28))


@pytest.mark.parametrize("name", ["mnist", "svhn32", "celeba64"])
def test_encoder_decoder_round_trip_gradients(name):
    g = GENERATORS[name]()
    enc = ENCODERS[name](False)
    x = torch.rand(3, *GEN_SHAPES[name]) * 2 - 1
    loc, scale = enc(x)
    z = loc + scale * torch.randn_like(scale)
    (g(z) - x).square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


# ------------------------------------------------------------------ factories


@pytest.mark.parametrize(
    "shape, kwargs, cls",
    [
        ((1, 28, 28), SMALL_MNIST, MNISTGenerator),
        ((3, 32, 32), dict(ngf=4), DCGANGenerator32),
        ((3, 32, 32), dict(ngf=4, variant="cifar"), DCGANGenerator32),
        ((1, 32, 32), dict(ngf=4), DCGANGenerator32),
        ((3, 64, 64), dict(ngf=4), DCGANGenerator64),
    ],
)
def test_make_generator_dispatch(shape, kwargs, cls):
    g = make_generator(shape, 6, **kwargs)
    assert type(g) is cls and g.latent_dim == 6 and g.image_shape == shape
    assert g(torch.randn(2, 6)).shape == (2, *shape)


@pytest.mark.parametrize(
    "shape, kwargs, cls",
    [
        ((1, 28, 28), SMALL_MNIST, MNISTEncoder),
        ((3, 32, 32), dict(ndf=4), DCGANEncoder32),
        ((1, 32, 32), dict(ndf=4, variant="cifar"), DCGANEncoder32),
        ((3, 64, 64), dict(ndf=4), DCGANEncoder64),
    ],
)
@pytest.mark.parametrize("det", [False, True])
def test_make_encoder_dispatch(shape, kwargs, cls, det):
    enc = make_encoder(shape, 6, deterministic=det, **kwargs)
    assert type(enc) is cls and enc.latent_dim == 6 and enc.deterministic is det
    out = enc(torch.zeros(2, *shape))
    assert (out.shape if det else out[0].shape) == (2, 6)


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 16, 16), (3, 48, 48), (3, 32, 64), (28, 28)])
def test_factories_reject_unsupported_shapes(shape):
    with pytest.raises(ValueError, match="image shape"):
        make_generator(shape, 8)
    with pytest.raises(ValueError, match="image shape"):
        make_encoder(shape, 8)


def test_bad_variant_rejected():
    with pytest.raises(ValueError, match="variant"):
        DCGANGenerator32(variant="mnist")
    with pytest.raises(ValueError, match="variant"):
        DCGANEncoder32(variant="mnist")


# ------------------------------------------------------------------ MLP


@pytest.mark.parametrize("activation", ["gelu", "relu", "leaky_relu", "silu"])
def test_mlp_shape(activation):
    f = MLP(20, [200, 200], 1, activation=activation)
    assert f(torch.randn(7, 20)).shape == (7, 1)
    assert f(torch.randn(3, 7, 20)).shape == (3, 7, 1)
    linears = [m for m in f.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 200), (200, 200), (200, 1)]
    # LEBM energy: 20·200+200 + 200·200+200 + 200+1
    assert _n_params(f) == 4200 + 40200 + 201
    assert not isinstance(list(f.net)[-1], (nn.GELU, nn.ReLU, nn.LeakyReLU, nn.SiLU))


def test_mlp_without_hidden_layers_and_bad_activation():
    f = MLP(4, [], 2)
    assert len(f.net) == 1 and f(torch.randn(5, 4)).shape == (5, 2)
    with pytest.raises(ValueError, match="activation"):
        MLP(4, [8], 2, activation="tanhh")
    assert isinstance(make_activation("leaky_relu"), nn.LeakyReLU)
    assert make_activation("leaky_relu").negative_slope == 0.2


# ------------------------------------------------------------------ faster layer formulations


def _reference_mnist_generator(latent_dim, hidden_dim, channels):
    """The MNIST generator as LFBM writes it, with torch's own ConvTranspose2d layers (the layout
    of every checkpoint written before the faster layer existed)."""
    return nn.ModuleDict({
        "fc": nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                            nn.Linear(hidden_dim, channels * 49), nn.BatchNorm1d(channels * 49), nn.ReLU()),
        "deconv": nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), nn.BatchNorm2d(channels // 2),
                                nn.ReLU(), nn.ConvTranspose2d(channels // 2, 1, 2, stride=2), nn.Tanh()),
    })


@pytest.mark.parametrize("c_in,c_out,kernel,bias", [(8, 16, 2, True), (16, 1, 2, True), (6, 3, (2, 3), False), (4, 2, 2, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pixel_shuffle_conv_transpose_matches_the_reference_layer(c_in, c_out, kernel, bias, channels_last):
    from pyro_lfbm.nets.layers import PixelShuffleConvTranspose2d

    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(c_in, c_out, kernel, stride=kernel, bias=bias)
    fast = PixelShuffleConvTranspose2d(c_in, c_out, kernel, bias=bias)
    fast.load_state_dict(ref.state_dict())  # same keys and shapes, both ways
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, c_in, 7, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    assert y_fast.shape == y_ref.shape
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    # gradients to the input and to every parameter agree (training uses both)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_fast * w).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-4, rtol=1e-5, msg=name)
    # one image without a batch dimension
    torch.testing.assert_close(fast(x[0]), ref(x[0]), atol=1e-5, rtol=1e-5)


def test_pixel_shuffle_conv_transpose_rejects_overlapping_patches():
    from pyro_lfbm.nets.layers import PixelShuffleConvTranspose2d

    for kwargs in (dict(stride=1), dict(padding=1), dict(groups=2), dict(dilation=2)):
        with pytest.raises(ValueError, match="use torch.nn.ConvTranspose2d"):
            PixelShuffleConvTranspose2d(4, 4, 2, **kwargs)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\)"):
        PixelShuffleConvTranspose2d(4, 2, 2)(torch.zeros(2, 3, 5, 5))


@pytest.mark.parametrize("train", [False, True])
def test_mnist_generator_equals_the_reference_layers_and_loads_their_state_dict(train):
    torch.manual_seed(0)
    ref = _reference_mnist_generator(6, 32, 8)
    g = MNISTGenerator(latent_dim=6, hidden_dim=32, channels=8)
    g.load_state_dict(ref.state_dict())  # a checkpoint of the reference layout loads as is
    assert set(g.state_dict()) == set(ref.state_dict())
    ref.train(train), g.train(train)
    z = torch.randn(10, 6)
    expected = ref["deconv"](ref["fc"](z).view(-1, 8, 7, 7))
    torch.testing.assert_close(g(z), expected, atol=1e-5, rtol=1e-5)
    if train:  # the BatchNorm running statistics moved the same way
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(g.state_dict()[key], value, atol=1e-6, rtol=1e-5, msg=key)


# --- native pixel order (the generator's own order, used by the fused Langevin chain) ------------


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("hidden_dim", [0, 24])
def test_mnist_native_order_is_the_reordered_image_with_the_same_gradients_and_statistics(batch_norm, train, hidden_dim):
    import copy

    torch.manual_seed(0)
    gen = MNISTGenerator(5, hidden_dim=hidden_dim, channels=6, batch_norm=batch_norm).train(train)
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from their initial values
        for m in gen.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.bias.normal_()
    twin = copy.deepcopy(gen)
    z = torch.randn(2, 3, 5)  # any batch shape
    target = torch.rand(2, 3, 1, 28, 28)
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    images = gen(za)
    native = twin(zb, native_order=True)
    assert native.shape == (2, 3, 16, 49) and twin.native_shape == (16, 49)
    torch.testing.assert_close(native, gen.to_native_order(images), atol=1e-6, rtol=1e-5)
    ((images - target) ** 2).sum().backward()
    ((native - twin.to_native_order(target)) ** 2).sum().backward()
    torch.testing.assert_close(zb.grad, za.grad, atol=1e-5, rtol=1e-5)
    for (name, a), b in zip(gen.named_buffers(), twin.buffers()):  # train mode moved them alike
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6, msg=name)
    largest = max(p.grad.abs().max() for p in gen.parameters())
    for (name, a), b in zip(gen.named_parameters(), twin.parameters()):
        if train and batch_norm and name in ("fc.0.bias", "fc.3.bias", "deconv.0.bias"):
            # a bias right before a train-mode BatchNorm: its exact gradient is zero (float noise only)
            assert a.grad.abs().max() < 1e-5 * largest and b.grad.abs().max() < 1e-5 * largest, name
            continue
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_mnist_native_order_puts_each_pixel_in_its_cell_patch():
    gen = MNISTGenerator(3, hidden_dim=0, channels=2)
    image = torch.arange(28 * 28.0).view(1, 28, 28)
    native = gen.to_native_order(image)
    assert native.shape == (16, 49)
    assert torch.equal(native.flatten().sort().values, image.flatten())  # a permutation
    for i, j, a1, b1, a2, b2 in [(0, 0, 0, 0, 0, 0), (3, 5, 1, 0, 1, 1), (6, 6, 1, 1, 1, 1), (2, 4, 0, 1, 1, 0)]:
        assert native[8 * a1 + 4 * b1 + 2 * a2 + b2, 7 * i + j] == image[0, 4 * i + 2 * a1 + a2, 4 * j + 2 * b1 + b2]
    with pytest.raises(ValueError, match=r"\(\.\.\., 1, 28, 28\)"):
        gen.to_native_order(torch.zeros(2, 28, 28))


def test_other_generators_native_order_is_the_image_order():
    gen = DCGANGenerator32(4, ngf=2, channels=3)
    z = torch.randn(2, 4)
    x = torch.rand(2, 3, 32, 32)
    assert gen.to_native_order(x) is x and gen.native_shape == (3, 32, 32)
    torch.testing.assert_close(gen(z, native_order=True), gen(z))
