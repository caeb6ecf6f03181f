"""Bottom-up encoders: images (B, C, H, W) to a diagonal Gaussian q(z|x) or a deterministic code.

Each encoder mirrors the generator of the same image size in :mod:`pyro_lfbm.nets.generators`.
``forward(x)`` returns ``(loc, scale)``, each (B, latent_dim), with
``scale = softplus(raw) + min_scale > 0``; with ``deterministic=True`` it returns a single code
(B, latent_dim) instead (autoencoders, GLF). Any leading batch shape is accepted: x of shape
(..., C, H, W) gives outputs of shape (..., latent_dim).

.. note:: :class:`MNISTEncoder` with ``batch_norm=True`` (its default) ends in a
   ``BatchNorm1d``, which in ``train()`` mode raises ``ValueError`` on a batch of one image;
   use ``eval()`` mode for batch size 1. The DCGAN encoders work with batch size 1 in both modes.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .generators import init_weights_xavier
from .mlp import AffineConditioner

__all__ = [
    "ImageEncoder",
    "LayerConditionalEncoder",
    "MNISTEncoder",
    "DCGANEncoder32",
    "DCGANEncoder64",
    "make_encoder",
]

EncoderOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


class ImageEncoder(nn.Module):
    """Base class: subclasses set ``self.net`` mapping (N, C, H, W) to (N, out_dim), where
    ``out_dim = latent_dim`` if deterministic else ``2 * latent_dim`` (loc then raw scale).

    :param int latent_dim: size of z.
    :param tuple image_shape: (C, H, W) of the input images.
    :param bool deterministic: return a code instead of ``(loc, scale)``.
    :param float min_scale: floor added to ``softplus`` so that ``scale >= min_scale``.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        deterministic: bool = False,
        min_scale: float = 1e-3,
    ):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if min_scale < 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale}")
        self.latent_dim, self.image_shape = latent_dim, tuple(image_shape)
        self.deterministic, self.min_scale = deterministic, min_scale
        self.out_dim = latent_dim if deterministic else 2 * latent_dim

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """:param x: images, shape (..., C, H, W).
        :returns: ``(loc, scale)`` each (..., latent_dim), or the code (..., latent_dim) when
            ``deterministic``.
        """
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.image_shape:
            raise ValueError(f"expected x of shape (..., {self.image_shape}), got {tuple(x.shape)}")
        batch_shape = x.shape[:-3]
        h = self.net(x.reshape(-1, *self.image_shape)).reshape(*batch_shape, self.out_dim)
        if self.deterministic:
            return h
        loc, raw = h.split(self.latent_dim, dim=-1)
        return loc, F.softplus(raw) + self.min_scale

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, image_shape={self.image_shape}, "
            f"deterministic={self.deterministic}"
        )


class MNISTEncoder(ImageEncoder):
    """Mirror of :class:`~pyro_lfbm.nets.generators.MNISTGenerator`, x (B, 1, 28, 28) → q(z|x).

    ``Conv(1→channels//2, k4, s2, p1)–BN2d–ReLU`` → 14×14, ``Conv(→channels, k4, s2, p1)–BN2d–
    ReLU`` → 7×7, flatten, ``Linear(channels·49→hidden)–BN1d–ReLU``, ``Linear(hidden→out)``
    with out = 2·latent_dim (or latent_dim when deterministic). This is GLF's MNIST encoder.

    :param int latent_dim: size of z.
    :param int hidden_dim: width of the hidden layer; ``0`` drops it.
    :param int channels: feature channels at 7×7 (halved at 14×14); even, ≥ 2.
    :param bool batch_norm: keep the BatchNorm layers.
    :param bool deterministic: see :class:`ImageEncoder`.
    :param float min_scale: see :class:`ImageEncoder`.
    """

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dim: int = 1024,
        channels: int = 128,
        batch_norm: bool = True,
        deterministic: bool = False,
        min_scale: float = 1e-3,
    ):
        super().__init__(latent_dim, (1, 28, 28), deterministic, min_scale)
        if hidden_dim < 0 or channels < 2 or channels % 2:
            raise ValueError(
                f"need hidden_dim >= 0 and an even channels >= 2; got hidden_dim={hidden_dim}, "
                f"channels={channels}"
            )
        self.hidden_dim, self.channels, self.batch_norm = hidden_dim, channels, batch_norm

        def bn(n: int, two_d: bool) -> nn.Module:
            if not batch_norm:
                return nn.Identity()
            return nn.BatchNorm2d(n) if two_d else nn.BatchNorm1d(n)

        layers: list[nn.Module] = [
            nn.Conv2d(1, channels // 2, 4, 2, 1),
            bn(channels // 2, True),
            nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 4, 2, 1),
            bn(channels, True),
            nn.ReLU(),
            nn.Flatten(),
        ]
        d_in = channels * 7 * 7
        if hidden_dim > 0:
            layers += [nn.Linear(d_in, hidden_dim), bn(hidden_dim, False), nn.ReLU()]
            d_in = hidden_dim
        layers.append(nn.Linear(d_in, self.out_dim))
        self.net = nn.Sequential(*layers)
        self.apply(init_weights_xavier)


def _down_block(c_in: int, c_out: int, k: int, s: int, p: int, batch_norm: bool) -> list[nn.Module]:
    """``Conv(c_in→c_out, k, s, p)[–BN2d]–LeakyReLU(0.2)``; the conv has no bias under BN."""
    return [
        nn.Conv2d(c_in, c_out, k, s, p, bias=not batch_norm),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        nn.LeakyReLU(0.2),
    ]


def _head(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    """``Conv(c_in→c_out, k, 1, 0)`` on a k×k map, i.e. a linear layer, then flatten."""
    return [nn.Conv2d(c_in, c_out, k, 1, 0), nn.Flatten()]


class DCGANEncoder32(ImageEncoder):
    """Mirror of :class:`~pyro_lfbm.nets.generators.DCGANGenerator32`, x (B, C, 32, 32) → q(z|x).

    LeakyReLU(0.2), no BatchNorm by default; widths mirror the generator with ``ndf = ngf``.

    - ``variant="svhn"``: Conv(C→2ndf, 4, 2, 1) → 16×16, Conv(→4ndf, 4, 2, 1) → 8×8,
      Conv(→8ndf, 4, 2, 1) → 4×4, head Conv(8ndf→out, 4, 1, 0) → 1×1.
    - ``variant="cifar"``: Conv(C→2ndf, 3, 1, 1) @32, Conv(→4ndf, 4, 2, 1) → 16×16,
      Conv(→8ndf, 4, 2, 1) → 8×8, head Conv(8ndf→out, 8, 1, 0) → 1×1.

    :param int latent_dim: size of z.
    :param int ndf: base number of feature maps.
    :param int channels: image channels C.
    :param str variant: ``"svhn"`` or ``"cifar"``.
    :param bool batch_norm: add BatchNorm2d after each hidden conv but the first.
    :param bool deterministic: see :class:`ImageEncoder`.
    :param float min_scale: see :class:`ImageEncoder`.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        ndf: int = 64,
        channels: int = 3,
        variant: str = "svhn",
        batch_norm: bool = False,
        deterministic: bool = False,
        min_scale: float = 1e-3,
    ):
        super().__init__(latent_dim, (channels, 32, 32), deterministic, min_scale)
        if variant not in ("svhn", "cifar"):
            raise ValueError(f"variant must be 'svhn' or 'cifar', got {variant!r}")
        self.ndf, self.variant = ndf, variant
        first = (4, 2, 1) if variant == "svhn" else (3, 1, 1)
        head_k = 4 if variant == "svhn" else 8
        self.net = nn.Sequential(
            *_down_block(channels, 2 * ndf, *first, batch_norm=False),
            *_down_block(2 * ndf, 4 * ndf, 4, 2, 1, batch_norm),
            *_down_block(4 * ndf, 8 * ndf, 4, 2, 1, batch_norm),
            *_head(8 * ndf, self.out_dim, head_k),
        )
        self.apply(init_weights_xavier)


class DCGANEncoder64(ImageEncoder):
    """Mirror of :class:`~pyro_lfbm.nets.generators.DCGANGenerator64`, x (B, C, 64, 64) → q(z|x).

    Conv(C→ndf, 4, 2, 1) → 32×32, then Conv(·, 4, 2, 1) to 2ndf@16, 4ndf@8, 8ndf@4, head
    Conv(8ndf→out, 4, 1, 0) → 1×1; LeakyReLU(0.2), no BatchNorm by default.

    :param int latent_dim: size of z.
    :param int ndf: base number of feature maps (the generator's default ngf is 128).
    :param int channels: image channels C.
    :param bool batch_norm: add BatchNorm2d after each hidden conv but the first.
    :param bool deterministic: see :class:`ImageEncoder`.
    :param float min_scale: see :class:`ImageEncoder`.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        ndf: int = 128,
        channels: int = 3,
        batch_norm: bool = False,
        deterministic: bool = False,
        min_scale: float = 1e-3,
    ):
        super().__init__(latent_dim, (channels, 64, 64), deterministic, min_scale)
        self.ndf = ndf
        self.net = nn.Sequential(
            *_down_block(channels, ndf, 4, 2, 1, batch_norm=False),
            *_down_block(ndf, 2 * ndf, 4, 2, 1, batch_norm),
            *_down_block(2 * ndf, 4 * ndf, 4, 2, 1, batch_norm),
            *_down_block(4 * ndf, 8 * ndf, 4, 2, 1, batch_norm),
            *_head(8 * ndf, self.out_dim, 4),
        )
        self.apply(init_weights_xavier)


class LayerConditionalEncoder(nn.Module):
    r"""An inference network over the layers of a hierarchical latent model that conditions each layer
    on the layers above it:

    .. math:: q(z_1, \dots, z_L \mid x) = \prod_{l=1}^{L} \mathcal N\big(z_l;\ \mu_l,\ \mathrm{diag}\,\sigma_l^2\big),
              \qquad \mu_l = \mu^0_l(x) + a_l(c(x), z_{<l}), \quad \sigma_l = \sigma^0_l(x)\, e^{b_l(c(x), z_{<l})},

    where ``base`` is a mean-field image encoder giving (μ⁰(x), σ⁰(x)) over all layers, c(x) =
    [μ⁰(x), log σ⁰(x)] (B, 2D) its summary of the image, and (a_l, b_l) an
    :class:`~pyro_lfbm.nets.AffineConditioner` of c(x) and the layers above (l ≥ 2; the top layer is
    the base's). The conditioners start at zero, so the network starts as its mean-field base. This
    is the factorisation of the inference networks of top-down hierarchical VAEs, q(z₁ | x) q(z₂ | z₁, x)
    … (Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016; Vahdat & Kautz, "NVAE",
    NeurIPS 2020), which a mean-field encoder over the layers lacks.

    It has no single ``forward(x)``: :meth:`context` reads the image once, :meth:`layer` gives one
    layer's Gaussian given the layers above, and :meth:`forward` gives every layer's at a given z
    (as :class:`~pyro_lfbm.infer.ConditionalEncoderGuide` and its distribution use them).

    :param torch.nn.Module base: a mean-field encoder x (B, C, H, W) → (loc, scale), each (B, Σ d_l),
        e.g. :class:`MNISTEncoder`.
    :param latent_dims: (d₁, …, d_L), top layer first, at least two layers.
    :param int hidden_dim: width of each conditioner's hidden layer.
    """

    def __init__(self, base: nn.Module, latent_dims: Sequence[int], hidden_dim: int = 256):
        super().__init__()
        dims = tuple(latent_dims)
        if len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"latent_dims must be two or more positive integers (top layer first), got {latent_dims!r}")
        if getattr(base, "deterministic", False) or getattr(base, "latent_dim", sum(dims)) != sum(dims):
            raise ValueError(f"base must be a mean-field encoder returning (loc, scale) of size {sum(dims)} (the layers' "
                             f"total), got {type(base).__name__} with latent_dim={getattr(base, 'latent_dim', None)}")
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {hidden_dim!r}")
        self.base, self.latent_dims, self.latent_dim = base, dims, sum(dims)
        self._starts = tuple(sum(dims[:l]) for l in range(len(dims) + 1))  # layer l is z[..., starts[l]:starts[l + 1]]
        self.image_shape = getattr(base, "image_shape", None)
        self.conditioners = nn.ModuleList(
            AffineConditioner(2 * self.latent_dim + self._starts[l], (hidden_dim,), dims[l]) for l in range(1, len(dims)))

    def context(self, x: torch.Tensor):
        """The base's ``(loc, scale)`` of every layer, each (B, D), for images x (B, C, H, W)."""
        return self.base(x)

    def layer(self, index: int, loc: torch.Tensor, scale: torch.Tensor, upper: torch.Tensor):
        """``(loc, scale)`` of layer ``index`` (0-based; each (..., d_index)) given the image's context
        ``(loc, scale)`` (..., D) and the layers above it, upper (..., Σ_{k<index} d_k)."""
        start, end = self._starts[index], self._starts[index + 1]
        layer_loc, layer_scale = loc[..., start:end], scale[..., start:end]
        if index == 0:
            return layer_loc, layer_scale
        shift, log_scale = self.conditioners[index - 1](torch.cat([loc, scale.log(), upper], dim=-1))
        return layer_loc + shift, layer_scale * log_scale.exp()

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        """``(loc, scale)`` of q(z_l | z_{<l}, x) for every layer at z (B, D), concatenated: each (B, D)."""
        loc, scale = self.context(x)
        return self.params(loc, scale, z)

    def params(self, loc: torch.Tensor, scale: torch.Tensor, z: torch.Tensor):
        """As :meth:`forward`, from the context ``(loc, scale)`` (..., D) instead of the image."""
        pairs = [self.layer(l, loc, scale, z[..., : self._starts[l]]) for l in range(len(self.latent_dims))]
        return torch.cat([p[0] for p in pairs], -1), torch.cat([p[1] for p in pairs], -1)

    def extra_repr(self) -> str:
        return f"latent_dims={self.latent_dims}"


def make_encoder(
    image_shape: tuple[int, int, int],
    latent_dim: int,
    deterministic: bool = False,
    **kwargs,
) -> ImageEncoder:
    """Pick the encoder for an image shape (C, H, W), mirroring :func:`make_generator`.

    ``(1, 28, 28)`` → :class:`MNISTEncoder`; ``(C, 32, 32)`` → :class:`DCGANEncoder32`;
    ``(C, 64, 64)`` → :class:`DCGANEncoder64`. ``kwargs`` go to the constructor (e.g.
    ``hidden_dim``/``channels`` for MNIST, ``ndf``/``variant``/``batch_norm`` for DCGAN).

    :raises ValueError: for any other shape.
    """
    shape = tuple(int(s) for s in image_shape)
    if shape == (1, 28, 28):
        return MNISTEncoder(latent_dim, deterministic=deterministic, **kwargs)
    if len(shape) == 3 and shape[1:] in ((32, 32), (64, 64)):
        if "channels" in kwargs:
            raise ValueError("DCGAN encoders take their image channels from image_shape")
        cls = DCGANEncoder32 if shape[1] == 32 else DCGANEncoder64
        return cls(latent_dim, channels=shape[0], deterministic=deterministic, **kwargs)
    raise ValueError(
        f"no encoder for image shape {shape}; supported: (1, 28, 28), (C, 32, 32), (C, 64, 64)"
    )
