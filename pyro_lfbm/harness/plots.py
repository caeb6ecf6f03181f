"""Figures written by the experiments (matplotlib, torchvision grids)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402
from torchvision.utils import save_image  # noqa: E402


def plot_precision_recall(is_anomaly, scores: Dict[str, torch.Tensor], path: Path, title: str = "") -> None:
    """One precision-recall curve per decision function."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    y = np.asarray(is_anomaly)
    for name, score in scores.items():
        precision, recall, _ = precision_recall_curve(y, np.asarray(score))
        ax.plot(recall, precision, label=name)
    ax.axhline(y.mean(), color="gray", lw=0.8, ls="--", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_score_histograms(is_anomaly, scores: Dict[str, torch.Tensor], path: Path, title: str = "") -> None:
    """Histograms of normal against anomalous scores, one panel per decision function."""
    y = np.asarray(is_anomaly).astype(bool)
    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3.2), squeeze=False)
    for ax, (name, score) in zip(axes[0], scores.items()):
        s = np.asarray(score)
        lo, hi = np.percentile(s, [0.5, 99.5])
        bins = np.linspace(lo, hi, 60)
        ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(s[y], bins=bins, alpha=0.6, density=True, label="held-out digit")
        ax.set(title=f"{name} score", xlabel="score (higher = more anomalous)")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_ranked_grid(images: torch.Tensor, score: torch.Tensor, path: Path, count: int = 32) -> None:
    """Top row block: the ``count`` highest-scoring images; bottom block: the ``count`` lowest."""
    order = torch.argsort(torch.as_tensor(score), descending=True)
    picked = torch.cat([images[order[:count]], images[order[-count:]]])
    save_image((picked + 1) / 2, path, nrow=16, padding=1, pad_value=1.0)


def plot_auprc_against_epochs(table, path: Path, title: str = "", by: str = "preset") -> List[str]:
    """AUPRC against training epochs, one panel per held-out digit, one line per (BatchNorm mode, score):
    a colour per score, dashed for running statistics (eval), solid for batch statistics (train). With
    a column ``by`` (e.g. ``preset`` or ``recipe``) naming more than one group, each group's lines get
    their own marker and label.

    :param table: a :class:`pandas.DataFrame` with columns heldout, epochs, batchnorm, score, auprc
        (more than one row per point, e.g. several seeds, is averaged).
    :returns: the lines' labels (of the last panel).
    """
    digits = sorted(table.heldout.unique())
    fig, axes = plt.subplots(1, len(digits), figsize=(4.5 * len(digits), 3.6), squeeze=False, sharey=True)
    colours = {score: plt.cm.tab10(i % 10) for i, score in enumerate(table.score.unique())}
    groups = list(table[by].unique()) if by in table and table[by].nunique() > 1 else [None]
    markers = dict(zip(groups, "os^vDPX*<>"))
    for ax, digit in zip(axes[0], digits):
        rows = table[table.heldout == digit]
        for group in groups:
            part = rows if group is None else rows[rows[by] == group]
            for (mode, score), line in part.groupby(["batchnorm", "score"]):
                mean = line.groupby("epochs").auprc.mean()
                label = f"{score}, BN {mode}" + ("" if group is None else f", {group}")
                ax.plot(mean.index, mean.values, marker=markers.get(group, "o"), color=colours[score],
                        ls="-" if mode == "train" else "--", label=label)
        ax.set(title=f"held-out {digit}", xlabel="epochs", ylabel="AUPRC")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # (the legend outside the last panel included)
    plt.close(fig)
    return [line.get_label() for line in axes[0][-1].get_lines()]
