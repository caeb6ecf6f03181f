"""The anomaly-detection table: held-out digits × priors × seeds, beside the paper's AUPRC rows.

    python experiments/anomaly_table.py                       # digits 1 4 5 7 9, 3 priors, seeds 1 2 3
    python experiments/anomaly_table.py --digits 7 --priors flow --seeds 1 2 3

Each run is one `experiments/anomaly.py`-style run (same library code, same files under
<out>/runs/heldout<d>-<prior>-seed<s>/); finished runs are kept in table.csv and skipped when the
command is run again, so an interrupted table resumes. Two runners may share one --out (e.g. one per
core): each adds its rows to table.csv under a file lock and claims a run's checkpoint while it trains
it, so the other runner skips that run rather than training it a second time.

The default --out is runs/anomaly_table/ (ignored by git). The reference table committed in
results/anomaly/ was made with --out results/anomaly; pass that to add runs to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.anomaly_experiment import (
    BATCHNORM_CHOICES,
    AnomalyRunConfig,
    anomaly_preset,
    checkpoint_name,
    run_anomaly,
    run_folder_name,
    run_variant,
    save_anomaly_run,
)
from pyro_lfbm.harness.anomaly_report import HIERARCHICAL_SCORE, PAPER_AUPRC, append_rows, has_run, read_table, write_report
from pyro_lfbm.harness.locking import run_claim
from pyro_lfbm.harness.cli import UsageError, run_record
from pyro_lfbm.train.presets import ANOMALY_PRESETS, DECISION_FUNCTIONS, PRIORS, prior_names


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=cli.digit, nargs="+", default=sorted(PAPER_AUPRC["LFBM"]))
    parser.add_argument("--priors", nargs="+", choices=prior_names(), default=list(PRIORS))
    parser.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--test-steps", type=cli.nonnegative_int, default=None,
                        help="test-time Langevin steps (default: the preset's; 0 scores at the encoder's z)")
    parser.add_argument("--batchnorm", choices=tuple(BATCHNORM_CHOICES), default="both")
    parser.add_argument("--sigma", type=cli.positive_float, default=None)
    parser.add_argument("--limit-train", type=cli.positive_int, default=None, help="training images per run (at least one batch)")
    parser.add_argument("--limit-test", type=cli.int_at_least(2), default=None, help="test images per run (at least 2)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite README.md from table.csv")
    parser.add_argument("--hierarchical-score", choices=DECISION_FUNCTIONS, default=HIERARCHICAL_SCORE[0],
                        help="the decision function of the report's hierarchical targets (default: the cpu-hierarchical "
                             "preset's, %(default)s; BatchNorm on running statistics)")
    # no --resume: finished runs are skipped and unfinished ones continue from their checkpoints anyway;
    # no --overwrite: runs are added to the table, never replaced
    cli.add_common_arguments(parser, default_out="runs/anomaly_table", resume=False, overwrite=False,
                             presets=ANOMALY_PRESETS)
    return parser


def run_configs(args: argparse.Namespace, device) -> list:
    """The configuration of every run of the grid, each checked (before any data are read)."""
    checkpoint_dir = args.checkpoint_dir or str(Path(args.out) / "checkpoints")
    cfgs = []
    for seed in args.seeds:  # seeds outermost: an interrupted table still covers every digit and prior
        for digit in dict.fromkeys(args.digits):
            for prior in dict.fromkeys(args.priors):
                cfg = AnomalyRunConfig(
                    heldout=digit, prior=prior, preset=args.preset, seed=seed, epochs=args.epochs,
                    test_steps=args.test_steps, batchnorm=args.batchnorm, limit_train=args.limit_train,
                    limit_test=args.limit_test, data_root=args.data_root, device=str(device),
                    checkpoint_dir=checkpoint_dir, resume=True, progress=not args.no_progress, sigma=args.sigma,
                    skip_nonfinite=args.skip_nonfinite,
                )
                anomaly_preset(cfg)
                cfgs.append(cfg)
    cli.writable_dir(checkpoint_dir, "--checkpoint-dir")
    return cfgs


def main(args: argparse.Namespace) -> pd.DataFrame:
    device = cli.check_common_arguments(args)
    out = Path(args.out)
    table_path = out / "table.csv"
    table = read_table(table_path)
    if args.report_only:
        if table.empty:
            raise UsageError(f"--report-only: no runs in {table_path}; run the table first")
        write_report(table, out / "README.md", run_record(), args.hierarchical_score)
        print(f"wrote {out / 'README.md'}")
        return table
    for cfg in run_configs(args, device):
        run_id = (cfg.heldout, cfg.prior, cfg.seed, cfg.preset)
        # claim the checkpoint, the file two runners would fight over, even with different --out
        with run_claim(Path(cfg.checkpoint_dir) / f"{checkpoint_name(cfg)}.claim") as claimed:
            if not claimed:
                print(f"skip {run_id}: another runner is training it")
                continue
            if has_run(read_table(table_path), *run_id):  # re-read: runners may work side by side
                print(f"skip {run_id}: already in {table_path}")
                continue
            result = run_anomaly(cfg)
            save_anomaly_run(result, cfg, out / "runs" / run_folder_name(cfg.heldout, cfg.prior, cfg.seed, run_variant(cfg)))
            rows = pd.DataFrame(result.rows)
            print(rows[["heldout", "prior", "seed", "score", "auprc", "train_seconds", "test_seconds"]].to_string(index=False))
            table = append_rows(table_path, rows)
            write_report(table, out / "README.md", run_record(), args.hierarchical_score)
    print(f"wrote {table_path} and {out / 'README.md'}")
    return table


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
