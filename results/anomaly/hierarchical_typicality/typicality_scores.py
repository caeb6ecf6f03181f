"""Two-sided typicality (density of states) and nearest-neighbour scores of the `cpu-hierarchical` preset on its
development checkpoints (README beside).

For each development pair (MNIST digits 0 and 8, Fashion-MNIST classes 6 and 2; seeds 1 and 2) the finished
checkpoint is loaded (weight average, running BatchNorm statistics) and the run's first 5,000 normal training images
and all its test images are described at the encoder's mean by the prior term, its base-space quadratic and volume
parts, the reconstruction term, the encoder's entropy and the flow's base-space image u. The candidates are fitted on
the training images only. Prints CSV: dataset,heldout,seed,score,auprc.

    python typicality_scores.py MNIST_CKPT MNIST_SCORES FASHION_CKPT FASHION_SCORES > typicality.csv

MNIST_CKPT / MNIST_SCORES: the checkpoint and output folders of ../hierarchical_ema/'s commands; FASHION_*: those of
../fashion_dev/'s.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import gaussian_kde
from sklearn.neighbors import NearestNeighbors

from pyro_lfbm.metrics.anomaly import anomaly_metrics
from pyro_lfbm.priors.flow import flow_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results/anomaly/development_runs.py
from development_runs import development_runs, load_development_run  # noqa: E402

FIT_IMAGES, NEIGHBOURS, BATCH = 5000, 10, 1000


@torch.no_grad()
def statistics(recipe, x):
    """Per-image statistics at the encoder's mean, each a float64 array (N,), and u (N, D)."""
    parts = {name: [] for name in ("prior", "quadratic", "volume", "recon", "entropy", "u")}
    for batch in x.split(BATCH):
        z = recipe.encoder_guide.mean(batch)
        u, log_det = flow_forward(list(recipe.model.prior.flow.parts), z)
        terms = recipe.model.log_joint_terms(batch, z)
        scale = recipe.encoder_guide.distribution(batch).base_dist.scale
        for name, value in (("prior", -terms["prior"]), ("quadratic", 0.5 * (u ** 2).sum(-1)), ("volume", -log_det),
                            ("recon", -terms["likelihood"]), ("entropy", scale.log().sum(-1)), ("u", u)):
            parts[name].append(value.double())
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def dose(fit, test, names):
    """-sum over the statistics of log KDE_s(t_s): low density in any statistic, high or low, is anomalous."""
    return -sum(gaussian_kde(fit[name]).logpdf(test[name]) for name in names)


def main(*folders):
    print("dataset,heldout,seed,score,auprc")
    for dataset, heldout, seed, checkpoint, saved_path in development_runs(*folders):
        split, saved, recipe = load_development_run(dataset, heldout, seed, checkpoint, saved_path)
        fit, test = statistics(recipe, split.train_x[:FIT_IMAGES]), statistics(recipe, split.test_x)
        for name in ("prior", "recon"):
            if not np.allclose(test[name], saved["batchnorm"]["eval"][name].double().numpy(), atol=1e-2):
                raise SystemExit(f"{saved_path}: the recomputed {name} term differs from the run's saved one")
        neighbours = NearestNeighbors(n_neighbors=NEIGHBOURS).fit(fit["u"])
        scores = {"prior (the preset's)": test["prior"],
                  "DoSE(prior, recon)": dose(fit, test, ("prior", "recon")),
                  "DoSE(quadratic, volume, recon, entropy)": dose(fit, test, ("quadratic", "volume", "recon", "entropy")),
                  "DoSE(prior)": dose(fit, test, ("prior",)),
                  f"kNN(u), k = {NEIGHBOURS}": neighbours.kneighbors(test["u"])[0][:, -1]}
        y = saved["is_anomaly"]
        for name, score in scores.items():
            print(f"{dataset},{heldout},{seed},\"{name}\",{anomaly_metrics(y, torch.as_tensor(score))['auprc']:.4f}",
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
