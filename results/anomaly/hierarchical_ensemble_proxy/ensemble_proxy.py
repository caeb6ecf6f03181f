"""Would an ensemble of two hierarchical models help? A zero-cost look on development pairs (README beside).

For MNIST development digits 0 and 8 (seeds 1 and 2), the preset's prior term (running statistics, from the saved
scores of ../hierarchical_ema/'s runs) is added, standardised over the test set, to that of a sibling run on the same
split and test images (the other development rules' runs: ../hierarchical_ema_decay/, ../hierarchical_channels/,
../hierarchical_lr_decay/, ../hierarchical_lr_high/, ../hierarchical_flow_mixture/, and the same runs' last weights).
Prints CSV: heldout,seed,sibling,preset,sibling_auprc,ensemble.

    python ensemble_proxy.py ROOT > ensemble_proxy.csv

ROOT: the folder holding those commands' output folders (ema, ema9997, channels64, lrdecay, lrhigh, mixture10 and
their *_last rescorings).
"""
import sys
from pathlib import Path

import torch

from pyro_lfbm.metrics.anomaly import anomaly_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results/anomaly/development_runs.py
from development_runs import preset_run_paths  # noqa: E402

SIBLINGS = ["ema9997", "channels64", "lrdecay", "lrhigh", "mixture10",
            "ema9997_last", "channels64_last", "lrdecay_last", "lrhigh_last", "mixture10_last"]


def prior_term(folder):
    saved = torch.load(folder / "scores.pt", weights_only=False)
    return saved["batchnorm"]["eval"]["prior"].double(), saved["is_anomaly"]


def standardised(score):
    return (score - score.mean()) / score.std()


root = Path(sys.argv[1])
print("heldout,seed,sibling,preset,sibling_auprc,ensemble")
for digit in (0, 8):
    for seed in (1, 2):
        run = Path(preset_run_paths("mnist", digit, seed, "", "")[1]).name
        preset, labels = prior_term(root / "ema" / run)
        for sibling in SIBLINGS:
            if not (root / sibling / run / "scores.pt").exists():
                continue
            other, other_labels = prior_term(root / sibling / run)
            assert torch.equal(labels, other_labels), "the two runs scored different test images"
            auprc = lambda score: anomaly_metrics(labels, score)["auprc"]
            print(f"{digit},{seed},{sibling},{auprc(preset):.4f},{auprc(other):.4f},"
                  f"{auprc(standardised(preset) + standardised(other)):.4f}")
