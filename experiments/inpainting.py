"""Supervised inpainting (LFBM task 2): complete test images with a fixed hole, several completions each.

    python experiments/inpainting.py --dataset mnist --priors flow gaussian ebm

uses the models trained on complete images by experiments/synthesis.py (same --preset, --n-train,
--epochs, --seed: they are found in the checkpoint cache; otherwise they are trained now), hides the
paper's hole (40x40 at (20, 12) on 64x64, scaled: 18x18 at (9, 5) on 28x28) in the first --n-test
test images, and completes each from --completions chain starts z0 ~ p_α(z) by noise-free Langevin on
the observed pixels. Writes a panel figure (original, occluded, completions per prior) and the MSE on
the hole in [0, 1] units (mean over completions, best of K, of the mean completion) to
<out>/<dataset>/ (default runs/inpainting, ignored by git; a finished one is replaced only with --overwrite).
"""

from __future__ import annotations

import argparse

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.inpainting_experiment import run_inpainting
from pyro_lfbm.train.presets import prior_names
from pyro_lfbm.harness.task_cli import add_task_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--priors", nargs="+", choices=prior_names(), default=["flow", "ebm", "gaussian"])
    parser.add_argument("--completions", type=cli.positive_int, default=10, help="completions per image (paper: 10)")
    parser.add_argument("--steps", type=cli.positive_int, default=None, help="Langevin steps (default: the preset's test steps)")
    parser.add_argument("--step-size", type=cli.positive_float, default=None, help="Langevin step size (default: the preset's)")
    parser.add_argument("--hole", default=None, help="TOP,LEFT,SIDE of the hole (default: the paper's, scaled)")
    parser.add_argument("--show", type=cli.positive_int, default=4, help="test images shown in the figure")
    add_task_arguments(parser, default_out="runs/inpainting", n_test=200)
    return parser


def main(args: argparse.Namespace):
    return run_inpainting(args)


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args(), data_parallel=True)
