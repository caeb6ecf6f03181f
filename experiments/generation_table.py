"""Sample quality of every generative model in the library on MNIST and Fashion-MNIST.

Two stages over one folder of runs (``<runs-dir>/<dataset>/<model>/``, each holding
``metrics.json`` and ``samples.pt``):

    # 1. train the latent-variable models (LFBM-MCMC, ABP, LEBM by short-run Langevin; LFBM-VAE by
    #    an amortized encoder), all with the generator and flow of the same preset
    python experiments/generation_table.py train --dataset mnist --models lfbm-mcmc abp lebm lfbm-vae
    # (GLF and CoopFlow runs come from experiments/glf.py and experiments/coopflow.py with
    #  --out <runs-dir>/<dataset>/glf and .../coopflow)
    # 2. score every run with the same sample-quality code and write the table
    python experiments/generation_table.py table --runs-dir runs/generation --out runs/generation

The table has one row per (dataset, model): the classifier-feature Fréchet distance of the samples
(and Inception FID where its weights exist), the test reconstruction MSE per pixel in [-1, 1] units
where the model has an inference path, and the training time. The reference table committed in
results/generation/ was written with ``table --out results/generation``; by default new runs and tables
stay under runs/ (ignored by git). Every option is checked before any data are read; a finished run
folder is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.cli import add_common_arguments
from pyro_lfbm.harness.generation_experiment import DATASETS, LATENT_MODELS, table, train


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    tr = sub.add_parser("train", help="train the latent-variable baselines")
    tr.add_argument("--dataset", default="mnist", choices=DATASETS, help="mnist or fashion-mnist")
    tr.add_argument("--models", nargs="+", default=["lfbm-mcmc", "abp", "lebm"], choices=[*LATENT_MODELS, "lfbm-vae"])
    tr.add_argument("--n-train", type=cli.positive_int, default=5000, help="training images (first N of the train split)")
    tr.add_argument("--n-test", type=cli.positive_int, default=1000, help="test images for the reconstruction MSE")
    tr.add_argument("--num-samples", type=cli.positive_int, default=2000, help="samples kept for the Fréchet distance")
    tr.add_argument("--runs-dir", default="runs/generation")
    add_common_arguments(tr, default_out="runs/generation")
    tb = sub.add_parser("table", help="score every run and write the table")
    tb.add_argument("--runs-dir", default="runs/generation")
    tb.add_argument("--data-root", default=None)
    tb.add_argument("--out", default="runs/generation",
                    help="folder of table.csv (default runs/generation; the reference table is results/generation)")
    tb.add_argument("--n-reference", type=cli.int_at_least(2), default=5000, help="real test images the samples are compared with")
    tb.add_argument("--threads", type=cli.nonnegative_int, default=cli.DEFAULT_THREADS, help=cli.THREADS_HELP)
    return parser


def main(args: argparse.Namespace):
    return train(args) if args.stage == "train" else table(args)


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
