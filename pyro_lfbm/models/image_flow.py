"""A small multi-scale Glow on images built from Pyro transforms (CoopFlow's normalizing flow)."""

from __future__ import annotations

import math
from typing import List, Tuple

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from torch import nn

from pyro_lfbm.transforms.actnorm2d import ActNorm2d
from pyro_lfbm.transforms.affine_coupling2d import AffineCoupling2d
from pyro_lfbm.transforms.invertible_conv import InvertibleConv1x1
from pyro_lfbm.transforms.logit import BoundedLogit
from pyro_lfbm.transforms.squeeze import Squeeze2d


def dequantize(x: torch.Tensor) -> torch.Tensor:
    r"""Uniform dequantization of images in [-1, 1] on the 256-level grid: with
    :math:`u = 127.5(x + 1) \in [0, 255]`, returns :math:`(u + U(0, 1)) / 128 - 1 \in [-1, 1)`,
    same shape as ``x``. Continuous inputs (e.g. Langevin-revised images) are treated alike."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5 + torch.rand_like(x)) / 128.0 - 1.0


class ImageFlow(nn.Module):
    r"""
    A normalizing flow density over images :math:`x \in [-1, 1]^{C \times H \times W}`:
    a bijection :math:`f: x \mapsto \epsilon` onto a standard normal, so that

        :math:`\log p(x) = \log\mathcal{N}(f(x); 0, I) + \log|\det \partial f / \partial x|`.

    :math:`f` (``self.flow``, a ``ComposeTransformModule``, direction data -> noise) is
    :class:`~pyro_lfbm.transforms.BoundedLogit` (RealNVP's logit preprocessing), then
    ``checkerboard_steps`` full-resolution steps [:class:`~pyro_lfbm.transforms.ActNorm2d`,
    checkerboard :class:`~pyro_lfbm.transforms.AffineCoupling2d`] with alternating parity, then
    ``num_levels`` levels of [:class:`~pyro_lfbm.transforms.Squeeze2d`, ``steps_per_level`` Glow
    steps (ActNorm2d -> :class:`~pyro_lfbm.transforms.InvertibleConv1x1` (Pyro's
    ``GeneralizedChannelPermute``) -> channel :class:`AffineCoupling2d`)]. There is no
    factoring-out between levels, so the noise has shape :attr:`latent_shape` =
    ``(C·4^L, H/2^L, W/2^L)``.

    Samples: :math:`x = f^{-1}(\epsilon)` lie in :math:`(-1, 1)`.

    Example::

        >>> flow = ImageFlow((1, 28, 28), num_levels=2, steps_per_level=2, hidden_channels=16)
        >>> x = flow.sample(5)                    # (5, 1, 28, 28)
        >>> flow.log_prob(x).shape                # torch.Size([5])

    :param tuple image_shape: (C, H, W); H and W divisible by ``2 ** num_levels``.
    :param int num_levels: number of squeeze levels L >= 1.
    :param int steps_per_level: Glow steps per level.
    :param int hidden_channels: width of the coupling networks.
    :param int checkerboard_steps: full-resolution checkerboard couplings before the first squeeze.
    :param float alpha: margin of the logit preprocessing.
    """

    def __init__(
        self,
        image_shape: Tuple[int, int, int] = (1, 28, 28),
        num_levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        checkerboard_steps: int = 2,
        alpha: float = 0.05,
    ):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if num_levels < 1 or steps_per_level < 1 or checkerboard_steps < 0:
            raise ValueError(
                f"need num_levels >= 1, steps_per_level >= 1 and checkerboard_steps >= 0; got {num_levels}, "
                f"{steps_per_level}, {checkerboard_steps}"
            )
        if h % 2**num_levels or w % 2**num_levels:
            raise ValueError(f"image size {h}x{w} is not divisible by 2**num_levels = {2 ** num_levels}")
        self.image_shape = (c, h, w)
        self.num_levels, self.steps_per_level = num_levels, steps_per_level
        self.hidden_channels, self.checkerboard_steps, self.alpha = hidden_channels, checkerboard_steps, alpha
        parts: List[TransformModule] = [BoundedLogit(alpha)]
        for k in range(checkerboard_steps):
            parts += [ActNorm2d(c), AffineCoupling2d(c, hidden_channels, mask="checkerboard", parity=k % 2)]
        for _ in range(num_levels):
            parts.append(Squeeze2d())
            c, h, w = 4 * c, h // 2, w // 2
            for k in range(steps_per_level):
                parts += [ActNorm2d(c), InvertibleConv1x1(c), AffineCoupling2d(c, hidden_channels, "channel", parity=k % 2)]
        self.flow = ComposeTransformModule(parts)
        self.latent_shape = (c, h, w)
        self.register_buffer("base_loc", torch.zeros(self.latent_shape))
        self.register_buffer("base_scale", torch.ones(self.latent_shape))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def num_pixels(self) -> int:
        return math.prod(self.image_shape)

    def base_dist(self) -> dist.Distribution:
        """N(0, I) over :attr:`latent_shape` (event dims 3)."""
        return dist.Normal(self.base_loc, self.base_scale).to_event(3)

    def dist(self) -> dist.Distribution:
        """``TransformedDistribution(N(0, I), [flow.inv])`` with event shape ``image_shape``."""
        return dist.TransformedDistribution(self.base_dist(), [self.flow.inv])

    def forward_with_log_det(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:param x: images (..., C, H, W) in [-1, 1]. :returns: ``(eps (..., *latent_shape), log|det| (...))``."""
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.image_shape:
            raise ValueError(f"expected images of shape (..., {self.image_shape}), got {tuple(x.shape)}")
        log_det = x.new_zeros(x.shape[:-3])
        for part in self.flow:
            y = part(x)
            log_det = log_det + part.log_abs_det_jacobian(x, y)
            x = y
        return x, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: images (..., C, H, W) in [-1, 1]. :returns: log-density in [-1, 1] units, shape (...)."""
        eps, log_det = self.forward_with_log_det(x)
        return self.base_dist().log_prob(eps) + log_det

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in bits per pixel on the [0, 256) scale, shape (...), for
        dequantized images ``x`` in [-1, 1) (see :func:`dequantize`; x = u / 128 - 1)."""
        log_p_256 = self.log_prob(x) - self.num_pixels * math.log(128.0)
        return -log_p_256 / (self.num_pixels * math.log(2.0))

    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """:returns: ``num_samples`` images (N, C, H, W), clamped to [-1, 1] (no gradient).

        The logit margin lets :math:`f^{-1}` reach slightly beyond [-1, 1]; those pixel values
        are clamped to the image range."""
        with torch.no_grad():
            return self.rsample(num_samples, temperature).clamp(-1.0, 1.0)

    def rsample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        r""":math:`f^{-1}(T\epsilon)`, (N, C, H, W), differentiable in the parameters, not clamped."""
        eps = temperature * torch.randn((num_samples, *self.latent_shape), device=self.base_loc.device,
                                       dtype=self.base_loc.dtype)
        return self.flow.inv(eps)

    @torch.no_grad()
    def data_init(self, x: torch.Tensor) -> None:
        """Glow's data-dependent initialisation: each :class:`ActNorm2d` standardises its input on
        the batch ``x`` (B, C, H, W). Marks the flow initialised (:attr:`initialized`)."""
        for part in self.flow:
            if isinstance(part, ActNorm2d):
                part.initialize(x)
            x = part(x)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, num_levels={self.num_levels}, steps_per_level={self.steps_per_level}, "
                f"hidden_channels={self.hidden_channels}, checkerboard_steps={self.checkerboard_steps}")
