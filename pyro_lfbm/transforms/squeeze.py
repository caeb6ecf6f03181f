"""Space-to-depth reshaping (the "squeeze" of RealNVP / Glow) as a volume-preserving bijection."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule


class Squeeze2d(TransformModule):
    r"""
    Trade space for channels: every 2×2 block of pixels becomes 4 channels,

        ``x`` (..., C, H, W)  ->  ``y`` (..., 4C, H/2, W/2),

    with ``y[..., c*4 + 2*i + j, h, w] = x[..., c, 2h + i, 2w + j]``. It only moves numbers, so
    :math:`\log|\det J| = 0`. H and W must be even. The event shape changes, so the transform
    implements ``forward_shape`` / ``inverse_shape`` (used by ``TransformedDistribution``).

    :param int factor: block size (default 2).
    """

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True

    def __init__(self, factor: int = 2):
        super().__init__(cache_size=0)
        if factor < 2:
            raise ValueError(f"factor must be >= 2, got {factor}")
        self.factor = factor

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        *batch, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"Squeeze2d needs H and W divisible by {f}, got {h}x{w}")
        y = x.reshape(*batch, c, h // f, f, w // f, f)
        n = len(batch)
        y = y.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (..., c, f, f, h/f, w/f)
        return y.reshape(*batch, c * f * f, h // f, w // f)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        *batch, c, h, w = y.shape
        f = self.factor
        x = y.reshape(*batch, c // (f * f), f, f, h, w)
        n = len(batch)
        x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (..., c, h, f, w, f)
        return x.reshape(*batch, c // (f * f), h * f, w * f)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:returns: zeros of the batch shape ``x.shape[:-3]``."""
        return x.new_zeros(x.shape[:-3])

    def forward_shape(self, shape):
        *batch, c, h, w = shape
        f = self.factor
        return (*batch, c * f * f, h // f, w // f)

    def inverse_shape(self, shape):
        *batch, c, h, w = shape
        f = self.factor
        return (*batch, c // (f * f), h * f, w * f)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def squeeze2d(factor: int = 2) -> Squeeze2d:
    """
    Build a :class:`Squeeze2d` transform, (C, H, W) -> (C·f², H/f, W/f).

    :param int factor: the spatial factor f (at least 2).
    """
    return Squeeze2d(factor)
