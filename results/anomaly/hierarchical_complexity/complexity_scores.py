"""Complexity-corrected prior terms of the `cpu-hierarchical` preset on its development checkpoints (README beside).

For each development pair (MNIST digits 0 and 8, Fashion-MNIST classes 6 and 2; seeds 1 and 2) the finished
checkpoint is loaded (weight average, running BatchNorm statistics) and its test images are scored by the prior term
-log p(z) at the encoder's mean, by that term corrected for the PNG code length L(x) (a least-squares line, or a
standardisation within ten equal-count bins of L, both fitted on the run's first 5,000 normal training images), and
by Serra et al.'s joint - L. Prints CSV: dataset,heldout,seed,score,auprc.

    python complexity_scores.py MNIST_CKPT MNIST_SCORES FASHION_CKPT FASHION_SCORES > complexity.csv

MNIST_CKPT / MNIST_SCORES: the checkpoint and output folders of ../hierarchical_ema/'s commands; FASHION_*: those of
../fashion_dev/'s.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from pyro_lfbm.metrics.anomaly import anomaly_metrics, png_code_length

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results/anomaly/development_runs.py
from development_runs import development_runs, load_development_run  # noqa: E402

FIT_IMAGES, BINS = 5000, 10


def binned_standardiser(fit_length, fit_score):
    """(score - m(L)) / s(L) with m, s the mean and sd of ``fit_score`` in equal-count bins of ``fit_length``."""
    edges = np.quantile(fit_length, np.linspace(0, 1, BINS + 1))[1:-1]
    bins = np.digitize(fit_length, edges)
    mean = np.array([fit_score[bins == b].mean() for b in range(BINS)])
    sd = np.array([fit_score[bins == b].std() for b in range(BINS)])
    return lambda length, score: (score - mean[np.digitize(length, edges)]) / sd[np.digitize(length, edges)]


def main(*folders):
    print("dataset,heldout,seed,score,auprc")
    for dataset, heldout, seed, checkpoint, saved_path in development_runs(*folders):
        split, saved, recipe = load_development_run(dataset, heldout, seed, checkpoint, saved_path)
        with torch.no_grad():
            prior_of = lambda x: (-recipe.model.prior.log_prob(recipe.encoder_guide.mean(x))).double().numpy()
            fit_x = split.train_x[:FIT_IMAGES]
            fit_prior, test_prior = prior_of(fit_x), prior_of(split.test_x)
        saved_prior = saved["batchnorm"]["eval"]["prior"].double().numpy()
        if not np.allclose(test_prior, saved_prior, atol=1e-3):
            raise SystemExit(f"{saved_path}: the recomputed prior term differs from the run's saved one")
        fit_length, test_length = png_code_length(fit_x).numpy(), png_code_length(split.test_x).numpy()
        slope, intercept = np.polyfit(fit_length, fit_prior, 1)
        standardise = binned_standardiser(fit_length, fit_prior)
        joint = saved["batchnorm"]["eval"]["joint"].double().numpy()
        scores = {"prior (the preset's)": test_prior,
                  "prior - linear(L)": test_prior - (slope * test_length + intercept),
                  "prior standardised given L": standardise(test_length, test_prior),
                  "joint - L": joint - test_length}
        y = saved["is_anomaly"]
        for name, score in scores.items():
            print(f"{dataset},{heldout},{seed},{name},{anomaly_metrics(y, torch.as_tensor(score))['auprc']:.4f}",
                  flush=True)
        print(f"# {dataset} {heldout} {seed}: slope {slope:.4f} nats of prior per nat of L, "
              f"r(train) {np.corrcoef(fit_length, fit_prior)[0, 1]:.3f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
