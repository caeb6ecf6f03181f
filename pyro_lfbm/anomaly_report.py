"""The anomaly table's README: measured mean ± std over seeds beside the paper's AUPRC rows."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pandas as pd

# "A Tale of Two Latent Flows", MNIST held-out-digit AUPRC (digits 1, 4, 5, 7, 9).
PAPER_AUPRC: Dict[str, Dict[int, float]] = {
    "LFBM": {1: 0.349, 4: 0.812, 5: 0.823, 7: 0.682, 9: 0.514},
    "LEBM": {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413},
    "ABP": {1: 0.095, 4: 0.138, 5: 0.147, 7: 0.138, 9: 0.102},
}
PRIOR_TO_ROW = {"flow": "LFBM", "ebm": "LEBM", "gaussian": "ABP"}


def summary_table(table: pd.DataFrame, metric: str = "auprc") -> pd.DataFrame:
    """Rows (prior, BatchNorm mode, score), columns held-out digits, cells "mean ± std (n)" over seeds."""
    keys = ["prior", "batchnorm", "score"] if "batchnorm" in table else ["prior", "score"]
    grouped = table.groupby(keys + ["heldout"])[metric].agg(["mean", "std", "count"]).reset_index()
    grouped["cell"] = [
        f"{m:.3f} ({n})" if n < 2 else f"{m:.3f} ± {s:.3f} ({n})"
        for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])
    ]
    return grouped.pivot(index=keys, columns="heldout", values="cell").fillna("–").reset_index()


def write_report(table: pd.DataFrame, path: Path, record: dict) -> None:
    digits = sorted(table.heldout.unique())
    lines = [
        "# MNIST held-out-digit anomaly detection",
        "",
        f"Produced by: `{record['command']}`  ",
        f"Finished {record['finished']} on {record['machine']} (torch {record['torch']}, pyro {record['pyro']}).",
        "",
        "AUPRC = trapezoidal area under `sklearn.metrics.precision_recall_curve` with the held-out digit as the",
        "positive class. Cells are mean ± standard deviation **over training seeds** (the count in brackets);",
        "the seed also fixes the data split. Decision functions: `joint` = −log p(x, z) (the paper's),",
        "`recon` = −log p(x | z), `prior` = −log p(z), all at z inferred by test-time Langevin.",
        "",
        *([f"See `NOTES.md` for what decides the score, and for the runs at the protocol's full size.", ""]
          if (path.parent / "NOTES.md").exists() else []),
        "## Measured AUPRC",
        "",
        summary_table(table).to_markdown(index=False),
        "",
        "## The paper's AUPRC",
        "",
        "| model | " + " | ".join(str(d) for d in digits) + " |",
        "|---|" + "---|" * len(digits),
    ]
    for model, row in PAPER_AUPRC.items():
        lines.append(f"| {model} | " + " | ".join(f"{row.get(d, float('nan')):.3f}" for d in digits) + " |")
    lines += [
        "",
        "## Settings and time",
        "",
        table.groupby(["prior", "preset", "epochs", "test_steps", "batchnorm", "n_train", "n_test"])[["train_seconds", "test_seconds"]]
        .mean().round(1).reset_index().to_markdown(index=False),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
