"""Data-space energy networks f(x) for images (CoopFlow's EBM).

Every network maps images (..., C, H, W) in [-1, 1] to a scalar score f(x) of shape (...), the
*negative* energy: p(x) ∝ exp(f(x)), higher = more likely (the sign of the CoopFlow code).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvEnergy", "ResEnergy32", "make_energy"]


class _ImageScore(nn.Module):
    """Base class: subclasses set ``self.net`` mapping (N, C, H, W) to (N, ...) summed to (N,)."""

    image_shape: tuple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: images (..., C, H, W). :returns: f(x), shape (...)."""
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.image_shape:
            raise ValueError(f"expected images of shape (..., {self.image_shape}), got {tuple(x.shape)}")
        batch = x.shape[:-3]
        out = self.net(x.reshape(-1, *self.image_shape))
        return out.flatten(1).sum(1).reshape(batch)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}"


class ConvEnergy(_ImageScore):
    """A small CPU-sized score network for 28×28 or 32×32 images.

    ``Conv4×4 s2(C→w)`` → SiLU → ``Conv4×4 s2(w→2w)`` → SiLU → ``Conv3×3(2w→4w)`` → SiLU →
    ``Conv(4w→1, kernel H/4)`` (a linear read-out of the H/4 × W/4 map) → f(x).
    SiLU is the "swish" of the CoopFlow EBM.

    :param tuple image_shape: (C, H, W) with H, W divisible by 4.
    :param int width: w.
    """

    def __init__(self, image_shape=(1, 28, 28), width: int = 32):
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        if h % 4 or w % 4 or width < 1:
            raise ValueError(f"need H, W divisible by 4 and width >= 1; got {h}x{w}, width={width}")
        self.image_shape, self.width = (c, h, w), width
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(4 * width, 1, (h // 4, w // 4)),
        )


class _ResDown(nn.Module):
    """Two Conv3×3 with SiLU plus a Conv3×3 skip, then 2× average pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.skip = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.act, self.pool = nn.SiLU(), nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.skip(x)))


class ResEnergy32(_ImageScore):
    """The CoopFlow ``EBM_res`` layout for 32×32 images (the official code, ``github.com/AlvinZhuyx/CoopFlow``,
    ``models/ebm/ebm.py``):

    ``Conv3×3(C→nf)`` + SiLU, three residual down-blocks nf→2nf→4nf→8nf (32→16→8→4),
    ``Conv4×4(8nf→100)``, output summed. ``nf=128`` is the paper's width (26.4 M parameters here; the paper reports 17.1 M, so its blocks differ in detail).

    :param int channels: C.
    :param int nf: base width.
    """

    def __init__(self, channels: int = 3, nf: int = 128):
        super().__init__()
        self.image_shape, self.nf = (int(channels), 32, 32), nf
        self.net = nn.Sequential(
            nn.Conv2d(channels, nf, 3, 1, 1), nn.SiLU(),
            _ResDown(nf, 2 * nf), _ResDown(2 * nf, 4 * nf), _ResDown(4 * nf, 8 * nf),
            nn.Conv2d(8 * nf, 100, 4, 1, 0),
        )


def make_energy(kind: str, image_shape, width: int) -> nn.Module:
    """``kind="conv"`` → :class:`ConvEnergy`; ``"res32"`` → :class:`ResEnergy32` (32×32 only)."""
    if kind == "conv":
        return ConvEnergy(image_shape, width)
    if kind == "res32":
        if tuple(image_shape[1:]) != (32, 32):
            raise ValueError(f"res32 energy needs 32x32 images, got {tuple(image_shape)}")
        return ResEnergy32(image_shape[0], width)
    raise ValueError(f"unknown energy network {kind!r}; choose 'conv' or 'res32'")
