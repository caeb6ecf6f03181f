"""Labelled image panels: rows of images with a caption per row (recovery, inpainting, synthesis figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

__all__ = ["save_grid", "save_panel"]


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10) -> None:
    """Images (N, C, H, W) in [-1, 1] as one PNG grid of ``nrow`` columns."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(((images + 1) / 2).clamp(0, 1), str(path), nrow=nrow, padding=1, pad_value=1.0)


def save_panel(rows: Dict[str, torch.Tensor], path: Path, title: Optional[str] = None, scale: float = 0.6) -> None:
    """One row per entry of ``rows`` (label -> images (N, C, H, W) in [-1, 1]), the label at the left.

    Rows may have different N; images must share (C, H, W).
    """
    if not rows:
        raise ValueError("no rows to draw")
    ncols = max(r.shape[0] for r in rows.values())
    height, width = next(iter(rows.values())).shape[-2:]
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(4.0, ncols * scale * width / 28 + 1.6),
                                                     len(rows) * scale * height / 28 + (0.4 if title else 0.1)),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        grid = make_grid(((images.detach().cpu() + 1) / 2).clamp(0, 1), nrow=ncols, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
