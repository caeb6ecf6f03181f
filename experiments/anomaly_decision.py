"""Compare decision functions on finished anomaly runs, from their saved scores (no model is run).

    python experiments/anomaly_decision.py runs/anomaly/heldout3-flow-seed1 runs/anomaly/heldout8-flow-seed1

For each run folder written by ``experiments/anomaly.py`` (its ``scores.pt`` and ``run.json``), the
test images are rebuilt from the run's split and every candidate decision function is scored by
AUPRC, for each BatchNorm mode the run scored:

- ``joint``, ``recon``, ``prior``: −log p(x, z) and its two parts (the paper's and the library's scores);
- ``joint-png``, ``recon-png``: the same minus the image's PNG code length in nats (Serrà et al., ICLR 2020);
- ``z(prior)+z(recon-png)``, ``z(prior)+z(joint)``: scores standardised over the test set (no labels) and
  added, which weighs the prior term (tens of nats) as much as the reconstruction term (hundreds);
- any other score the run saved (``iwae`` and ``rate`` of ``--iwae-particles``, the likelihood ratios
  ``llr1``, ``llr2`` of ``--llr-layers``), alone and as ``z(prior)+z(score)``.

Runs kept without their ``scores.pt`` (``--with-metrics``) add their own ``metrics.csv`` rows only.

Use it on **development digits** (3 and 8) to choose a decision function; it prints a table and writes
``decision.csv`` into ``--out`` (default ``runs/anomaly_decision``), with the command in ``decision.json``
(and ``auprc_epochs.png`` of the recipes scored after several training lengths).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.anomaly_experiment import run_recipe, run_split
from pyro_lfbm.harness.cli import UsageError, run_record, write_json
from pyro_lfbm.harness.plots import plot_auprc_against_epochs
from pyro_lfbm.metrics.anomaly import anomaly_metrics, png_code_length


def standardised(score: torch.Tensor) -> torch.Tensor:
    score = score.double()
    return (score - score.mean()) / score.std()


def candidates(scores: dict, code_length: torch.Tensor) -> dict:
    """Every candidate decision function of one BatchNorm mode's ``{"joint", "recon", "prior"}`` scores (N,),
    and of any other score the run saved (``iwae``, ``llr1``, ...): that score itself and ``z(prior)+z(score)``."""
    joint, recon, prior = (scores[k].double() for k in ("joint", "recon", "prior"))
    found = {
        "joint": joint, "recon": recon, "prior": prior,
        "joint-png": joint - code_length, "recon-png": recon - code_length,
        "z(prior)+z(recon-png)": standardised(prior) + standardised(recon - code_length),
        "z(prior)+z(joint)": standardised(prior) + standardised(joint),
    }
    for name in sorted(set(scores) - {"joint", "recon", "prior"}):
        found[name] = scores[name].double()
        found[f"z(prior)+z({name})"] = standardised(prior) + standardised(scores[name].double())
    return found


def run_test_images(run_dir: Path, data_root) -> tuple[dict, torch.Tensor]:
    config = json.loads((run_dir / "run.json").read_text())["config"]
    run = config["run"]
    split = run_split(data_root or run.get("data_root"), run["heldout"], run["seed"], run.get("limit_train"),
                      run.get("limit_test"))
    return config, split.test_x


def run_fields(run_dir: Path, config: dict) -> dict:
    """The columns of every row of one run: its folder, recipe (preset and overrides, :func:`run_recipe`),
    split, training length and test chain."""
    run, learn = config["run"], config["learn"]
    metrics = run_dir / "metrics.csv"  # the epochs actually trained (a scored checkpoint's, not its scoring preset's)
    epochs = int(pd.read_csv(metrics).epochs.iloc[0]) if metrics.is_file() else learn["epochs"]
    return {"run": run_dir.name, "recipe": run_recipe({"preset": "cpu", **run}), "heldout": run["heldout"],
            "seed": run["seed"], "epochs": epochs, "test_steps": learn["test_steps"]}


def main(args: argparse.Namespace) -> pd.DataFrame:
    run_dirs = [Path(d) for d in args.runs]
    for d in run_dirs:
        if not (d / "scores.pt").is_file() or not (d / "run.json").is_file():
            raise UsageError(f"{d} is not a finished anomaly run (no scores.pt / run.json); pass folders written by anomaly.py")
    kept_dirs = [Path(d) for d in args.with_metrics or []]
    for d in kept_dirs:
        if not (d / "metrics.csv").is_file() or not (d / "run.json").is_file():
            raise UsageError(f"{d} has no metrics.csv / run.json; pass folders written by anomaly.py")
    rows = []
    for d in run_dirs:
        config, test_x = run_test_images(d, args.data_root)
        saved = torch.load(d / "scores.pt")
        by_mode = saved.get("batchnorm") or {"eval": {k: saved[k] for k in ("joint", "recon", "prior")}}
        code_length = png_code_length(test_x)
        for mode, scores in by_mode.items():
            for name, score in candidates(scores, code_length).items():
                rows.append({**run_fields(d, config), "batchnorm": mode, "score": name,
                             **anomaly_metrics(saved["is_anomaly"], score)})
    for d in kept_dirs:  # runs kept without their scores: their own metrics rows
        config = json.loads((d / "run.json").read_text())["config"]
        for row in pd.read_csv(d / "metrics.csv").itertuples():
            rows.append({**run_fields(d, config), "batchnorm": row.batchnorm, "score": row.score,
                         "auprc": row.auprc, "ap": row.ap, "auroc": row.auroc})
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "decision.csv", index=False)
    write_json(out / "decision.json", run_record({"runs": [str(d) for d in run_dirs], "with_metrics": args.with_metrics or []}))
    staged = table.groupby("recipe").epochs.transform("nunique") > 1  # recipes scored after several training lengths
    if staged.any():
        shown = table[staged & table.score.isin(args.plot_scores)] if args.plot_scores else table[staged]
        plot_auprc_against_epochs(shown, out / "auprc_epochs.png", "decision functions against training length",
                                  by="recipe")
    columns = ["recipe", "heldout", "seed", "epochs"] if table.recipe.nunique() > 1 else ["heldout", "seed", "epochs"]
    print(table.pivot_table(index=["batchnorm", "score"], columns=columns, values="auprc").round(3).to_string())
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders written by experiments/anomaly.py")
    parser.add_argument("--data-root", default=None, help="data folder (default: the run's, else the usual search)")
    parser.add_argument("--out", default="runs/anomaly_decision", help="folder for decision.csv, decision.json and the plot")
    parser.add_argument("--with-metrics", nargs="+", default=None, metavar="RUN",
                        help="finished runs kept without scores.pt (e.g. the committed reference runs): their own "
                             "metrics.csv rows (joint, recon, prior) join the table and the plot")
    parser.add_argument("--plot-scores", nargs="+", default=None, metavar="SCORE",
                        help="decision functions drawn in auprc_epochs.png (default: all), e.g. joint prior")
    return parser


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
