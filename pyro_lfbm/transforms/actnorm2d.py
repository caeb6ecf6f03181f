"""Per-channel activation normalisation for images (Glow's ActNorm on (C, H, W) events)."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn


class ActNorm2d(TransformModule):
    r"""
    :math:`y_{c,h,w} = x_{c,h,w} \exp(s_c) + b_c` with learnable ``log_scale`` :math:`s` and
    ``loc`` :math:`b`, each of shape ``(channels,)`` and zero at construction (the identity);
    :math:`\log|\det J| = H W \sum_c s_c`.

    :meth:`initialize` sets them from a batch so that the outputs have zero mean and unit
    variance per channel (Glow's data-dependent initialisation); it is called explicitly, never
    implicitly inside a forward pass.

    Shapes: ``x``, ``y`` (..., C, H, W); ``log_abs_det_jacobian`` (...).

    :param int channels: C.
    """

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True

    def __init__(self, channels: int):
        super().__init__(cache_size=0)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp()[:, None, None] + self.loc[:, None, None]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.loc[:, None, None]) * torch.exp(-self.log_scale)[:, None, None]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return (h * w * self.log_scale.sum()).expand(x.shape[:-3])

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``loc``/``log_scale`` so that ``self(x)`` has per-channel mean 0 and std 1.

        :param x: a batch (B, C, H, W) of inputs to this transform.
        """
        flat = x.transpose(0, 1).reshape(self.channels, -1)
        std = flat.std(dim=1).clamp_min(1e-3)
        self.log_scale.copy_(-std.log())
        self.loc.copy_(-flat.mean(dim=1) / std)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def actnorm2d(channels: int) -> ActNorm2d:
    """
    Build an :class:`ActNorm2d` transform (identity until its data-dependent initialisation).

    :param int channels: number of image channels C of events (C, H, W).
    """
    return ActNorm2d(channels)
