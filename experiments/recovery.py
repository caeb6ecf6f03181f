"""Unsupervised recovery: learn from occluded training images, then recover them (LFBM task 1).

    python experiments/recovery.py --dataset mnist --mask salt-pepper --level 50 --prior flow

masks the first --n-train training images (one fixed mask each), trains the model on the observed
pixels only, recovers every training image from its masked version and prints the MSE on the
occluded pixels and on all pixels (in [0, 1] units). The run record goes to <out>/runs/, and the
report over every record there (table.csv, README.md, figures/) is rewritten. The default --out is
runs/recovery (ignored by git); a run already recorded there is only run again with --overwrite.
"""

from __future__ import annotations

import argparse

from pyro_lfbm.harness import cli
from pyro_lfbm.data.masks import MASK_KINDS
from pyro_lfbm.train.presets import prior_names
from pyro_lfbm.harness.recovery_experiment import add_recovery_arguments, run_recovery_grid
from pyro_lfbm.harness.task_cli import add_task_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", choices=prior_names(), default="flow", help="flow = LFBM, gaussian = ABP, ebm = LEBM")
    parser.add_argument("--mask", choices=MASK_KINDS, default="salt-pepper", help="mask kind")
    parser.add_argument("--level", type=cli.positive_int, default=50,
                        help="salt-pepper: percent of pixels hidden (30/50/70); single: hole side on 64x64 (20/30/40)")
    add_recovery_arguments(parser)
    add_task_arguments(parser, default_out="runs/recovery", n_train=2000)
    return parser


def main(args: argparse.Namespace):
    return run_recovery_grid(args, datasets=[args.dataset], settings=[f"{args.mask}-{args.level}"],
                             priors=[args.prior], seeds=[args.seed])


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
