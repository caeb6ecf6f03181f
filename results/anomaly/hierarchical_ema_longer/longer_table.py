"""The development rule's table for ../hierarchical_ema_longer/ (README beside): the preset's prior term (running
statistics) at 40 epochs (the committed runs of ../hierarchical_ema/ and ../fashion_dev/) and after 60 and 80 (runs/),
for each pair, with the rule's three numbers per length. Writes table.csv and auprc_epochs.png beside this file.

    python longer_table.py
"""
from pathlib import Path

import pandas as pd

from pyro_lfbm.harness.plots import plot_auprc_against_epochs

HERE = Path(__file__).resolve().parent
REFERENCE = {"MNIST": HERE.parent / "hierarchical_ema/runs/averaged", "Fashion-MNIST": HERE.parent / "fashion_dev/runs"}


def prior_term(metrics_csv, task):
    row = pd.read_csv(metrics_csv).query("score == 'prior' and batchnorm == 'eval'").iloc[0]
    return {"task": task, "heldout": int(row.heldout), "seed": int(row.seed), "epochs": int(row.epochs),
            "auprc": row.auprc, "train_seconds": row.train_seconds}


rows = [prior_term(path, task) for task, folder in REFERENCE.items() for path in sorted(folder.glob("heldout*/metrics.csv"))]
rows += [prior_term(path, "Fashion-MNIST" if "fashion" in path.parent.name else "MNIST")
         for path in sorted(HERE.glob("runs/e*/*/metrics.csv"))]
table = pd.DataFrame(rows).sort_values(["task", "heldout", "seed", "epochs"], ascending=[False, True, True, True])
table["gain"] = table.auprc - table.groupby(["task", "heldout", "seed"]).auprc.transform("first")  # sorted: 40 epochs first
table.to_csv(HERE / "table.csv", index=False, float_format="%.4f")
print(table.to_string(index=False, float_format="%.3f"))

longer = table[table.epochs > 40]
for epochs, part in longer.groupby("epochs"):
    by_task = part.groupby("task").gain.mean()
    print(f"\n{epochs} epochs, {len(part)} pairs: mean gain {part.gain.mean():+.4f}, ahead on {(part.gain > 0).sum()} "
          f"of {len(part)}; " + ", ".join(f"{task} {gain:+.4f}" for task, gain in by_task.items()))

shown = table.assign(heldout=table.task + " " + table.heldout.astype(str), batchnorm="eval", score="prior")
plot_auprc_against_epochs(shown, HERE / "auprc_epochs.png",
                          "the preset's prior term against training length (mean of the seeds run)")
