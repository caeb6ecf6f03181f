"""The Bernoulli model's candidates against the Gaussian preset on the development pairs (README beside).

Reads each finished run's saved scores (running BatchNorm statistics, at the encoder's mean) and prints CSV
dataset,heldout,seed,score,auprc for the Gaussian preset's prior term (the reference) and the Bernoulli model's prior
term, joint score and joint score minus the PNG code length L(x) in nats. Pairs whose Bernoulli run has not finished
are left out.

    python bernoulli_scores.py GAUSSIAN_MNIST GAUSSIAN_FASHION BERNOULLI > bernoulli.csv

GAUSSIAN_MNIST / GAUSSIAN_FASHION: the output folders of ../hierarchical_ema/'s and ../fashion_dev/'s commands;
BERNOULLI: that of this folder's command.
"""
import sys
from pathlib import Path

import torch

from pyro_lfbm.data.root import resolve_data_root
from pyro_lfbm.harness.anomaly_experiment import run_split
from pyro_lfbm.metrics.anomaly import anomaly_metrics, png_code_length


def main(gaussian_mnist, gaussian_fashion, bernoulli):
    print("dataset,heldout,seed,score,auprc")
    for dataset, task, classes, gaussian in (("mnist", "", (0, 8), gaussian_mnist),
                                             ("fashion-mnist", "fashion-mnist-", (6, 2), gaussian_fashion)):
        for heldout in classes:
            for seed in (1, 2):
                folder = f"heldout{heldout}-flow-hierarchical-encoder-{task}seed{seed}/scores.pt"
                if not (Path(bernoulli) / folder).exists():
                    continue
                reference = torch.load(Path(gaussian) / folder, weights_only=False)
                saved = torch.load(Path(bernoulli) / folder, weights_only=False)
                y = saved["is_anomaly"]
                if not torch.equal(y, reference["is_anomaly"]):
                    raise SystemExit(f"{folder}: the two runs' test sets differ")
                length = png_code_length(run_split(resolve_data_root(), heldout, seed, dataset=dataset).test_x)
                scores = saved["batchnorm"]["eval"]
                candidates = {"Gaussian prior (the preset)": reference["batchnorm"]["eval"]["prior"],
                              "Bernoulli prior": scores["prior"], "Bernoulli joint": scores["joint"],
                              "Bernoulli joint - L": scores["joint"].double() - length}
                for name, score in candidates.items():
                    print(f"{dataset},{heldout},{seed},{name},{anomaly_metrics(y, score)['auprc']:.4f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
