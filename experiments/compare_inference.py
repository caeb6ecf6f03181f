"""Langevin against SVI guides on one Pyro model: inference table, training variants, figures.

For each data set (MNIST, then Fashion-MNIST; class 7 is held out of training, as in the
anomaly protocol) this trains (or, with ``--resume``, loads) four models on the same images:

- ``LFBM-MCMC``: flow prior, learned by short-run Langevin (LFBM's Algorithm 1);
- ``LFBM-VAE``: flow prior and an encoder guide, learned jointly by SVI/Trace_ELBO;
- ``LFBM-hybrid``: flow prior, learned from Langevin chains started at an encoder's mean;
- ``VAE``: Gaussian prior and an encoder guide (the baseline).

LFBM-MCMC gets a post-hoc encoder (fitted by SVI to the frozen model). Then on test images of
the normal classes it compares Langevin from N(0, I) (K steps of gradient ascent), the encoder
guide, hybrid inference, AutoNormal and a long MALA run (on a handful of images) on
reconstruction MSE, log p(x, z), an IWAE estimate of log p(x), wall time and gradient
evaluations; and it compares the training variants on test MSE and anomaly AUPRC (via
:mod:`pyro_lfbm.metrics.anomaly`). Outputs: ``table.csv``, ``training.csv``, ``curves.csv``, figures and
``README.md`` in ``--out``.

Default: ``python experiments/compare_inference.py`` (``cpu`` preset, 6,000 training images; measured
about 18 min per data set on a 2-core CPU under heavy load; ``--datasets mnist --append`` runs one data set
and adds its rows to ``--out``). GPU: ``python experiments/compare_inference.py --preset paper --train-size 0``.
Checkpoints go to ``--checkpoint-dir`` (default ``runs/compare_inference``); ``--resume`` reloads them.
Results go to ``--out`` (default ``runs/inference``, ignored by git; the reference results committed in
``results/inference/`` were made with ``--out results/inference``); a finished one is replaced only
with ``--overwrite`` (or added to with ``--append``). Every option is checked before the data are read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pyro_lfbm.harness import cli  # noqa: E402
from pyro_lfbm.harness.cli import add_common_arguments  # noqa: E402
from pyro_lfbm.harness.inference_experiment import VARIANTS, run_comparison  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, default_out="runs/inference")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"], choices=["mnist", "fashion-mnist"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--heldout", type=cli.digit, default=7, help="class left out of training (anomalies)")
    parser.add_argument("--train-size", type=cli.nonnegative_int, default=6000,
                        help="training images (0 = all of the split; else at least one batch)")
    parser.add_argument("--test-size", type=cli.positive_int, default=1000, help="normal test images for the inference table")
    parser.add_argument("--anomaly-test-size", type=cli.nonnegative_int, default=1000,
                        help="test images (normal + anomalous) for AUPRC (0 = all, else at least 2)")
    parser.add_argument("--anomaly-steps", type=cli.positive_int, default=None,
                        help="Langevin steps of the anomaly score (default: the preset's test_steps)")
    parser.add_argument("--langevin-steps", type=cli.positive_int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--hybrid-steps", type=cli.positive_int, nargs="+", default=[5, 20])
    parser.add_argument("--hybrid-train-steps", type=cli.positive_int, default=5, help="Langevin steps per batch when training LFBM-hybrid")
    parser.add_argument("--step-size", type=cli.positive_float, default=0.1, help="test-time Langevin step size")
    parser.add_argument("--encoder-epochs", type=cli.positive_int, default=None,
                        help="epochs of the post-hoc encoder of LFBM-MCMC (default: as training)")
    parser.add_argument("--iwae-particles", type=cli.positive_int, default=50)
    parser.add_argument("--reference-images", type=cli.int_at_least(2), default=16, help="images for AutoNormal and MALA")
    parser.add_argument("--autonormal-steps", type=cli.positive_int, default=500)
    parser.add_argument("--autonormal-lr", type=cli.positive_float, default=0.05)
    parser.add_argument("--mala-samples", type=cli.positive_int, default=500)
    parser.add_argument("--mala-warmup", type=cli.nonnegative_int, default=200)
    parser.add_argument("--figure-images", type=cli.positive_int, default=8)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of other data sets already in --out (run data sets one at a time)")
    return parser


def main(args: argparse.Namespace) -> None:
    run_comparison(args)


if __name__ == "__main__":
    cli.run_cli(main, parse_args())
