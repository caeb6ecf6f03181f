"""Supervised inpainting: complete test images with a fixed hole, several completions each (the ``incomplete``
test task of the official LFBM code, ``github.com/jianwen-xie/Latent-Space-Normalizing-Flow``, ``train.py`` at commit ``16b1b67``).

A model trained on complete images infers z from the observed pixels of a test image (masked
likelihood + prior), from K different chain starts z₀ ~ p_α(z) (the paper: flow samples, 10 per
image). Each completion keeps the observed pixels and fills the hole with g(z):

.. math:: \\hat x = m \\odot x + (1 - m) \\odot g(z).

The paper's hole on 64×64 CelebA is rows 20:60, columns 12:52 (40×40); :func:`paper_hole` scales
it to other sizes by the same factor (rows 9:27, columns 5:23 on 28×28).
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from pyro_lfbm.tasks.recovery import reconstruct, region_mse

__all__ = ["complete", "hole_mask", "inpaint", "inpainting_errors", "paper_hole"]

#: (top, left, side) of the paper's hole on 64×64 images.
PAPER_HOLE_64 = (20, 12, 40)


def paper_hole(image_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """(top, left, side) of the paper's 40×40 hole at (20, 12) on 64×64, scaled to (C, H, W)."""
    _, h, w = image_shape
    scale = min(h, w) / 64

    def rnd(v: float) -> int:
        return int(math.floor(v * scale + 0.5))

    top, left, side = (rnd(v) for v in PAPER_HOLE_64)
    return min(top, h - side), min(left, w - side), side


def hole_mask(image_shape: Tuple[int, int, int], top: int, left: int, side: int) -> torch.Tensor:
    """A (1, C, H, W) mask, 1 = observed, with one side×side hole whose top-left corner is (top, left)."""
    c, h, w = image_shape
    if side < 1 or top < 0 or left < 0 or top + side > h or left + side > w:
        raise ValueError(f"hole (top={top}, left={left}, side={side}) does not fit in {h}x{w} images")
    mask = torch.ones(1, c, h, w)
    mask[..., top : top + side, left : left + side] = 0
    return mask


def complete(x: torch.Tensor, mask: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """m ⊙ x + (1 − m) ⊙ generated, for x, generated (N, C, H, W) and mask broadcastable to them."""
    mask = mask.bool().expand_as(x)
    return torch.where(mask, x, generated)


def inpaint(
    model,
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_completions: int = 10,
    num_steps: int = 400,
    step_size: float = 0.1,
    noise: bool = False,
    start: str = "prior",
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> torch.Tensor:
    """K completions of each image of x (N, C, H, W) with mask (N or 1, C, H, W); returns (N, K, C, H, W).

    :param start: ``"prior"`` starts each chain from z₀ ~ p_α(z) (the paper), ``"normal"`` from N(0, I).

    Observed pixels of every completion equal those of x exactly.
    """
    if num_completions < 1:
        raise ValueError(f"num_completions must be at least 1, got {num_completions}")
    if start not in ("prior", "normal"):
        raise ValueError(f"start must be 'prior' or 'normal', got {start!r}")
    n, k = x.shape[0], num_completions
    mask = mask.expand_as(x)
    xr = x.repeat_interleave(k, dim=0)  # image i's completions are rows i*k .. i*k+k-1
    mr = mask.repeat_interleave(k, dim=0)

    def init_from_prior(xb, mb=None):
        with torch.no_grad():
            return {"z": model.prior.sample((xb.shape[0],)).detach()}

    generated = reconstruct(model, xr, mr, num_steps=num_steps, step_size=step_size, noise=noise,
                            init=init_from_prior if start == "prior" else None, seed=seed, batch_size=batch_size,
                            progress=progress, desc="inpainting")
    return complete(xr, mr, generated).view(n, k, *x.shape[1:])


def inpainting_errors(completions: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
    """Hole errors in [0, 1] units of completions (N, K, C, H, W) of x (N, C, H, W) with mask (N or 1, C, H, W).

    ``mse_hole``: mean over all completions; ``mse_hole_best``: mean over images of the best of K;
    ``mse_hole_of_mean``: of the average completion.
    """
    n, k = completions.shape[:2]
    hole = (mask == 0).expand_as(x)
    per = torch.stack([((completions[:, j] + 1) / 2 - (x + 1) / 2).clamp(-1, 1).pow(2).mul(hole).flatten(1).sum(1)
                       for j in range(k)], dim=1) / hole.flatten(1).sum(1, keepdim=True).clamp(min=1)  # (N, K)
    return {
        "mse_hole": float(per.mean()),
        "mse_hole_best": float(per.min(1).values.mean()),
        "mse_hole_of_mean": region_mse(completions.mean(1), x, hole),
    }
