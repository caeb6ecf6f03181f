"""The recovery table: priors x mask settings x data sets x seeds (LFBM task 1).

    python experiments/recovery_table.py                      # everything: 3 x 6 x 2 x 2 = 72 runs
    python experiments/recovery_table.py --datasets mnist --settings salt-pepper-50 --seeds 1 2

Runs are done one after another (priors innermost); each finished run is saved to <out>/runs/ at
once and skipped when the table is run again (--redo to run it anyway), so the grid can be filled
over several invocations. After every run the report is rewritten: table.csv (rows: priors; columns: data set x mask
setting; hole MSE mean ± std over seeds), table_all_pixels.csv, runs.csv (one row per run), targets.csv,
README.md with the commands, and one figure per setting (originals, occluded, recovered by each prior).
The CPU default is small (--preset cpu: 2000 training images, 10 epochs); on a GPU use e.g.
--preset paper --n-train 0 --epochs 50. The default --out is runs/recovery (ignored by git); the
reference table committed in results/recovery/ was made with --out results/recovery.
"""

from __future__ import annotations

import argparse

from pyro_lfbm.harness import cli
from pyro_lfbm.data.masks import MASK_SETTINGS, MaskSetting
from pyro_lfbm.train.presets import prior_names
from pyro_lfbm.harness.recovery_experiment import add_recovery_arguments, run_recovery_grid
from pyro_lfbm.harness.task_cli import add_task_arguments

ALL_SETTINGS = [MaskSetting(*s).name for s in MASK_SETTINGS]


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--settings", nargs="+", default=ALL_SETTINGS, help=f"mask settings (default: {' '.join(ALL_SETTINGS)})")
    parser.add_argument("--priors", nargs="+", choices=prior_names(), default=["flow", "ebm", "gaussian"])
    parser.add_argument("--seeds", nargs="+", type=cli.nonnegative_int, default=[1, 2])
    parser.add_argument("--redo", action="store_true", help="run again the runs that have a record")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from the records")
    add_recovery_arguments(parser)
    add_task_arguments(parser, default_out="runs/recovery", n_train=2000, overwrite=False)  # --redo replaces runs
    return parser


def main(args: argparse.Namespace):
    return run_recovery_grid(args, datasets=args.datasets, settings=args.settings, priors=args.priors,
                             seeds=args.seeds, skip_done=not args.redo, report_only=args.report_only)


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
