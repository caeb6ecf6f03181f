"""Synthesis and reconstruction (LFBM task 4), and the sample Fréchet distance of each prior.

    python experiments/synthesis.py --dataset mnist                       # flow prior
    python experiments/synthesis.py --dataset mnist --priors flow gaussian ebm --seeds 1 2

trains (or loads from the checkpoint cache) one model per prior on the first --n-train complete
training images, saves a grid of samples x = g(z), z ~ p_α(z), reports the test reconstruction MSE
after noise-free Langevin (per pixel, in [-1, 1] units as the paper), and the Fréchet distance of
--num-samples samples to the training images in the feature space of a small classifier trained
once on the data set and cached (NOT the Inception FID; the Inception FID is computed too when
pytorch-fid and its weights are on the machine). Writes table.csv, README.md and samples-<prior>.png
to <out>/<dataset>/ (default runs/synthesis, ignored by git; a finished one is replaced only with --overwrite).
"""

from __future__ import annotations

import argparse

from pyro_lfbm.harness import cli
from pyro_lfbm.train.presets import prior_names
from pyro_lfbm.harness.synthesis_experiment import run_synthesis
from pyro_lfbm.harness.task_cli import add_task_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--priors", nargs="+", choices=prior_names(), default=["flow"], help="flow = LFBM, gaussian = ABP, ebm = LEBM")
    parser.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=None,
                        help="several training seeds, one table with mean ± std (default: --seed)")
    parser.add_argument("--num-samples", type=cli.int_at_least(2), default=2000, help="samples for the Fréchet distance")
    parser.add_argument("--test-steps", type=cli.positive_int, default=None, help="reconstruction Langevin steps (default: the preset's)")
    add_task_arguments(parser, default_out="runs/synthesis")
    return parser


def main(args: argparse.Namespace):
    return run_synthesis(args)


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args(), data_parallel=True)
