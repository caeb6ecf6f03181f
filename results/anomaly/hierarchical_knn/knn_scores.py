"""Nearest-neighbour scores of the `cpu-hierarchical` preset against every training code, alone and beside the
prior term, on its development checkpoints (README beside).

For each development pair (MNIST digits 0 and 8, Fashion-MNIST classes 6 and 2; seeds 1 and 2) the finished
checkpoint is loaded (weight average, running BatchNorm statistics); every normal training image and every test image
is encoded at the encoder's mean z, with u = f(z) its image in the flow's base space. Prints CSV:
dataset,heldout,seed,score,auprc.

    python knn_scores.py MNIST_CKPT MNIST_SCORES FASHION_CKPT FASHION_SCORES > knn.csv

MNIST_CKPT / MNIST_SCORES: the checkpoint and output folders of ../hierarchical_ema/'s commands; FASHION_*: those of
../fashion_dev/'s.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from pyro_lfbm.metrics.anomaly import anomaly_metrics
from pyro_lfbm.priors.flow import flow_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results/anomaly/development_runs.py
from development_runs import development_runs, load_development_run  # noqa: E402

NEIGHBOURS, STANDARDISE_IMAGES, BATCH = 10, 5000, 1000


@torch.no_grad()
def codes(recipe, x):
    """The encoder's mean z (N, D), its base-space image u (N, D) and the prior term (N,), as float64 arrays."""
    z = torch.cat([recipe.encoder_guide.mean(batch) for batch in x.split(BATCH)])
    u = flow_forward(list(recipe.model.prior.flow.parts), z)[0]
    return z.double().numpy(), u.double().numpy(), (-recipe.model.prior.log_prob(z)).double().numpy()


def kth_distance(reference, queries, leave_self_out=False):
    """The distance from each query to its NEIGHBOURS-th nearest reference row (the query itself left out when it is
    one of the references)."""
    k = NEIGHBOURS + int(leave_self_out)
    return NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(queries)[0][:, -1]


def main(*folders):
    print("dataset,heldout,seed,score,auprc")
    for dataset, heldout, seed, checkpoint, saved_path in development_runs(*folders):
        split, saved, recipe = load_development_run(dataset, heldout, seed, checkpoint, saved_path)
        train_z, train_u, train_prior = codes(recipe, split.train_x)
        test_z, test_u, test_prior = codes(recipe, split.test_x)
        if not np.allclose(test_prior, saved["batchnorm"]["eval"]["prior"].double().numpy(), atol=1e-3):
            raise SystemExit(f"{saved_path}: the recomputed prior term differs from the run's saved one")
        knn_u = kth_distance(train_u, test_u)
        z_scale = train_z.std(0)
        knn_z = kth_distance(train_z / z_scale, test_z / z_scale)
        first = slice(0, STANDARDISE_IMAGES)
        fit_knn_u = kth_distance(train_u, train_u[first], leave_self_out=True)
        fit_prior = train_prior[first]
        combined = ((test_prior - fit_prior.mean()) / fit_prior.std()
                    + (knn_u - fit_knn_u.mean()) / fit_knn_u.std())
        scores = {"prior (the preset's)": test_prior, "kNN(u), all": knn_u, "kNN(z), all": knn_z,
                  "prior + kNN(u)": combined}
        y = saved["is_anomaly"]
        for name, score in scores.items():
            print(f"{dataset},{heldout},{seed},\"{name}\",{anomaly_metrics(y, torch.as_tensor(score))['auprc']:.4f}",
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
