"""Occlusion masks for learning from incomplete images (the ``--incomplete_train`` masks of the official
LFBM code, ``github.com/jianwen-xie/Latent-Space-Normalizing-Flow``, ``train.py`` at commit ``16b1b67``).

A mask is a float tensor of shape (N, C, H, W) with 1 = observed and 0 = hole, equal across
channels; :class:`~pyro_lfbm.models.LatentModel` drops the hole pixels from its likelihood when
given ``mask``. Two kinds, as in the LFBM code:

* ``salt-pepper`` at level p: the union of K random 8×8 square holes (overlaps allowed; each
  hole lies inside the image, top-left uniform). On 64×64 images K is the paper's table
  (:data:`PAPER_HOLE_COUNTS_64`: 30 % → 24, 50 % → 48, 70 % → 90). On other sizes K is the
  count whose *expected* coverage under this placement is closest to p % (computed exactly per
  pixel; :func:`salt_pepper_hole_count`). That rule gives 23 / 47 / 87 on 64×64, i.e. it
  reproduces the paper's table to within 1–3 holes, and gives 4 / 9 / 19 on 28×28 and
  6 / 12 / 24 on 32×32. The real coverage of a mask set is reported by :func:`coverage`.
* ``single`` at level s: one square hole, random top-left per image. s is the side on the paper's
  64×64 images (settings 20 / 30 / 40); on H×W images the side is ``round(s · min(H, W) / 64)``,
  i.e. the same share of the image side: 9 / 13 / 18 on 28×28 (≈10 / 22 / 41 % of the pixels).

Masks are fixed per image: :func:`make_masks` draws them once, deterministically from ``seed``,
and :func:`pyro_lfbm.train.svi.fit` keeps mask i with image i across epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

#: The paper code's hole counts for 64×64 images: coverage level (%) -> number of 8×8 holes.
PAPER_HOLE_COUNTS_64: Dict[int, int] = {10: 7, 20: 15, 30: 24, 40: 35, 50: 48, 55: 56, 60: 65, 65: 76, 70: 90,
                                        75: 108, 80: 134, 85: 176, 90: 250}
MASK_KINDS = ("salt-pepper", "single")
#: The paper's six mask settings: (kind, level).
MASK_SETTINGS: Tuple[Tuple[str, int], ...] = (
    ("salt-pepper", 30), ("salt-pepper", 50), ("salt-pepper", 70), ("single", 20), ("single", 30), ("single", 40),
)
HOLE_SIZE = 8


def expected_salt_pepper_coverage(num_holes: int, height: int, width: int, hole: int = HOLE_SIZE) -> float:
    """Expected share of pixels covered by the union of ``num_holes`` uniformly placed hole×hole squares."""
    def cover_1d(size: int) -> torch.Tensor:
        n = size - hole + 1
        i = torch.arange(size)
        return ((torch.clamp(i, max=n - 1) - torch.clamp(i - hole + 1, min=0) + 1) / n).double()

    p = torch.outer(cover_1d(height), cover_1d(width))  # P(one hole covers the pixel)
    return float(1 - ((1 - p) ** num_holes).mean())


def salt_pepper_hole_count(level: float, height: int, width: int, hole: int = HOLE_SIZE) -> int:
    """Number of 8×8 holes for a p % salt-and-pepper mask on H×W images (see the module notes)."""
    if not 0 < level < 100:
        raise ValueError(f"salt-and-pepper level must be a percentage in (0, 100), got {level}")
    if height < hole or width < hole:
        raise ValueError(f"images of {height}x{width} are smaller than the {hole}x{hole} holes")
    if height == width == 64 and int(level) == level and int(level) in PAPER_HOLE_COUNTS_64:
        return PAPER_HOLE_COUNTS_64[int(level)]
    best, best_gap, k = 1, math.inf, 1
    while True:
        gap = abs(expected_salt_pepper_coverage(k, height, width, hole) - level / 100)
        if gap < best_gap:
            best, best_gap = k, gap
        elif gap > best_gap:  # coverage rises monotonically in k: past the optimum
            return best
        k += 1


def single_hole_side(level: int, height: int, width: int) -> int:
    """Side of the single square hole for the paper's setting ``level`` (side on 64×64) on H×W images."""
    if not 0 < level < 64:
        raise ValueError(f"single-hole level is the hole side on 64x64 images, in (0, 64); got {level}")
    return max(1, int(math.floor(level * min(height, width) / 64 + 0.5)))


@dataclass(frozen=True)
class MaskSetting:
    """One mask setting, e.g. ``MaskSetting("salt-pepper", 50)``; ``name`` is ``"salt-pepper-50"``."""

    kind: str
    level: int

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {self.kind!r}; choose one of {', '.join(MASK_KINDS)}")
        if self.kind == "salt-pepper":
            salt_pepper_hole_count(self.level, 64, 64)
        else:
            single_hole_side(self.level, 64, 64)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.level}"

    @classmethod
    def parse(cls, text: str) -> "MaskSetting":
        """``"salt-pepper-50"`` or ``"single-30"`` -> MaskSetting."""
        kind, _, level = text.strip().rpartition("-")
        try:
            return cls(kind, int(level))
        except ValueError as err:
            raise ValueError(f"bad mask setting {text!r} ({err}); use e.g. salt-pepper-50 or single-30") from None

    def describe(self, image_shape: Tuple[int, int, int]) -> str:
        """How the setting is realised on images of ``image_shape`` (C, H, W)."""
        _, h, w = image_shape
        if self.kind == "salt-pepper":
            return f"union of {salt_pepper_hole_count(self.level, h, w)} random 8x8 holes (target {self.level}% of {h}x{w})"
        side = single_hole_side(self.level, h, w)
        return f"one {side}x{side} hole ({self.level}x{self.level} on 64x64 scaled to {h}x{w})"

    def make(self, n: int, image_shape: Tuple[int, int, int], seed: int = 0) -> torch.Tensor:
        """Masks (n, C, H, W); see :func:`make_masks`."""
        return make_masks(n, image_shape, self.kind, self.level, seed=seed)


def make_masks(n: int, image_shape: Tuple[int, int, int], kind: str, level: int, seed: int = 0) -> torch.Tensor:
    """One fixed mask per image: float (n, C, H, W), 1 = observed, 0 = hole, equal across channels.

    Deterministic for ``seed`` (a private ``torch.Generator``; the global RNG is untouched), and
    image i's mask does not depend on n (masks are drawn image after image).
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    c, h, w = (int(s) for s in image_shape)
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "salt-pepper":
        side, count = HOLE_SIZE, salt_pepper_hole_count(level, h, w)
    else:
        side, count = single_hole_side(level, h, w), 1
    rows = torch.arange(h).view(1, 1, h, 1)
    cols = torch.arange(w).view(1, 1, 1, w)
    # top-left corners (n, count), drawn image by image so that mask i is independent of n
    corners = torch.stack([torch.stack([torch.randint(0, h - side + 1, (count,), generator=gen),
                                        torch.randint(0, w - side + 1, (count,), generator=gen)]) for _ in range(n)]) \
        if n > 0 else torch.zeros(0, 2, count, dtype=torch.long)
    top = corners[:, 0].view(n, count, 1, 1)
    left = corners[:, 1].view(n, count, 1, 1)
    holes = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).any(dim=1)  # (n, H, W)
    return (~holes).float().unsqueeze(1).expand(n, c, h, w).contiguous()


def coverage(mask: torch.Tensor) -> float:
    """Share of hidden pixels (mask == 0) over all images of ``mask`` (N, C, H, W)."""
    return float((mask == 0).float().mean())


def coverage_stats(mask: torch.Tensor) -> Dict[str, float]:
    """Mean, std, min and max over images of the per-image hidden share, for ``mask`` (N, C, H, W)."""
    per_image = (mask == 0).float().flatten(1).mean(1)
    return {"mean": float(per_image.mean()), "std": float(per_image.std()) if per_image.numel() > 1 else 0.0,
            "min": float(per_image.min()), "max": float(per_image.max())}


def occlude(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x̃ = x ⊙ m + fill ⊙ (1 − m): images (N, C, H, W) with hole pixels set to ``fill`` (paper: 0)."""
    return torch.where(mask.bool(), x, torch.as_tensor(fill, dtype=x.dtype))
