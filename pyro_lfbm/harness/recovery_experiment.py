"""One recovery run as a record, and the report over all records (used by experiments/recovery*.py)."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from pyro_lfbm.harness.cli import UsageError, command_line, make_dirs, positive_float, positive_int, resolve_device, run_record, staged_output
from pyro_lfbm.harness.locking import locked, run_claim
from pyro_lfbm.harness.task_cli import check_task_arguments, checkpoint_dir, load_split, task_preset

from pyro_lfbm.data.masks import MaskSetting
from pyro_lfbm.train.presets import Preset, prior_names
from pyro_lfbm.tasks.recovery import run_recovery
from pyro_lfbm.harness.recovery_report import (
    encode_images,
    load_runs,
    long_table,
    rank_counts,
    run_key,
    save_run,
    setting_figure,
    summary_table,
    target_check,
)

__all__ = ["add_recovery_arguments", "recovery_record", "run_recovery_grid", "write_recovery_report"]

PREVIEW = 10


def recovery_record(
    preset: Preset,
    x: torch.Tensor,
    setting: MaskSetting,
    *,
    dataset: str,
    preset_name: str,
    seed: int,
    command: str,
    device="cpu",
    checkpoint_dir=None,
    progress: bool = True,
    **eval_kwargs,
) -> Dict:
    """Run :func:`~pyro_lfbm.tasks.recovery.run_recovery` on training images x (N, C, H, W) and return its record."""
    result = run_recovery(preset, x, setting, seed=seed, data={"dataset": dataset, "split": "train"}, device=device,
                          checkpoint_dir=checkpoint_dir, progress=progress, **eval_kwargs)
    return {
        "dataset": dataset,
        "setting": setting.name,
        "mask": setting.describe(tuple(x.shape[1:])),
        "prior": preset.model.prior,
        "seed": seed,
        "preset": preset_name,
        "n_train": int(x.shape[0]),
        **result.metrics,
        "history": result.history,
        "command": command,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preview": encode_images(result.recovered[:PREVIEW]),
    }


def _md(df) -> str:
    return df.to_markdown() if not df.empty else "(no runs)"


def _per_dataset(table) -> List[str]:
    """One markdown table per data set (the top level of ``table``'s columns), each under a bold title."""
    if table.empty:
        return ["(no runs)", ""]
    lines: List[str] = []
    for dataset in dict.fromkeys(table.columns.get_level_values(0)):
        lines += [f"**{dataset}**", "", table[dataset].to_markdown(), ""]
    return lines


def write_recovery_report(out: Path, records: List[Dict], originals: Callable[[str], torch.Tensor],
                          record: Dict, notes: str = "") -> List[str]:
    """Write table.csv (rows: priors; columns: data set x mask setting; hole MSE mean ± std over seeds),
    table_all_pixels.csv, runs.csv (one row per run), targets.csv, one figure per (dataset, setting) and
    README.md (ending with ``notes``, markdown) into ``out``.

    :param originals: ``dataset -> the first training images (PREVIEW, C, H, W)`` for the figures.
    :param record: :func:`pyro_lfbm.harness.cli.run_record` of the invocation that writes the report.
    :returns: the figure file names.
    """
    out = Path(out)
    long = long_table(records)
    long.to_csv(out / "runs.csv", index=False)
    summary = summary_table(records, "mse_hole")
    summary.to_csv(out / "table.csv")
    summary_all = summary_table(records, "mse_all")
    summary_all.to_csv(out / "table_all_pixels.csv")
    targets = target_check(records)
    targets.to_csv(out / "targets.csv", index=False)
    figures = []
    (out / "figures").mkdir(exist_ok=True)
    for (dataset, setting), _ in long.groupby(["dataset", "setting"]):
        seeds = sorted({r["seed"] for r in records if r["dataset"] == dataset and r["setting"] == setting})
        seed = seeds[0]
        chosen = [r for r in records if r["dataset"] == dataset and r["setting"] == setting and r["seed"] == seed]
        x = originals(dataset)[:PREVIEW]
        mask = MaskSetting.parse(setting).make(x.shape[0], tuple(x.shape[1:]), seed=seed)
        name = f"figures/{dataset}-{setting}.png"
        setting_figure(chosen, x, mask, out / name, title=f"{dataset}, {setting} ({chosen[0]['mask']}), seed {seed}")
        figures.append(name)
    commands = sorted({r["command"] for r in records})
    met = targets.get("flow_best")
    lines = [
        "# Recovery from occluded training images (LFBM task 1)",
        "",
        "Each training image keeps one fixed mask for the whole run; the model sees only the observed pixels "
        "(masked likelihood in the Langevin inference and in the parameter update). After training, z is inferred "
        "from the masked image alone (paper code's evaluation: fresh z0 ~ N(0, I), the training chain of "
        "20 noisy Langevin steps of 0.1) and x̂ = g(z). MSE in [0, 1] pixel units, pooled over the training images:",
        "`mse_hole` on the occluded pixels (the recovery error), `mse_all` on all pixels.",
        "",
        "Masks (`pyro_lfbm/data/masks.py`): salt-pepper-p = union of random 8x8 holes whose count makes the expected "
        "coverage p % (on 64x64 this is the paper's table 24/48/90; on 28x28 it is 4/9/19 holes); single-s = one "
        "square hole of side s on 64x64, scaled by 28/64 (9/13/18 px on 28x28). The measured coverage of every run is in runs.csv.",
        "",
        "## Mean hole MSE over seeds (rows: priors; columns: mask settings)",
        "",
        *_per_dataset(summary),
        "## Mean all-pixel MSE",
        "",
        *_per_dataset(summary_all),
        "## Target: flow prior lowest hole MSE in every setting (mean over seeds)",
        "",
        _md(targets),
        "",
        f"Settings where the flow prior has the lowest mean hole MSE: {int(met.sum()) if met is not None else 0} of "
        f"{len(targets)}. `gap` = flow − best other prior (negative = flow better).",
        "",
        "How often each prior had the lowest, middle and highest hole MSE on the same images and masks "
        "(each data set x setting x seed is one comparison):",
        "",
        _md(rank_counts(records)),
        "",
        "## What was run",
        "",
        f"{len(records)} runs: " + ", ".join(
            f"{d} {s}: {sorted({r['prior'] for r in records if r['dataset'] == d and r['setting'] == s}, key=prior_names().index)}"
            f" x seeds {sorted({r['seed'] for r in records if r['dataset'] == d and r['setting'] == s})}"
            for d, s in sorted({(r["dataset"], r["setting"]) for r in records})
        ) + ".",
        "Per-run settings (training images, epochs, preset, seconds, coverage) are in runs.csv and runs/*.json.",
        "",
        "Commands that produced the runs:",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Report written by: `{record['command']}` ({record['finished']}, {record['machine']}).",
        "",
        *([notes.rstrip(), ""] if notes else []),
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    return figures


def add_recovery_arguments(parser: argparse.ArgumentParser) -> None:
    """--eval-steps, --eval-step-size, --eval-noise/--no-eval-noise (the recovery inference)."""
    parser.add_argument("--eval-steps", type=positive_int, default=None, help="recovery Langevin steps (default: the training K, 20)")
    parser.add_argument("--eval-step-size", type=positive_float, default=None,
                        help="recovery step size (default: the training s, 0.1)")
    parser.add_argument("--eval-noise", action=argparse.BooleanOptionalAction, default=True,
                        help="Langevin noise in the recovery chain (paper code: yes)")


def run_recovery_grid(args: argparse.Namespace, *, datasets: Sequence[str], settings: Sequence[str],
                      priors: Sequence[str], seeds: Sequence[int], skip_done: bool = False,
                      report_only: bool = False) -> List[Dict]:
    """Run every (dataset, setting, seed, prior) not yet recorded under ``<out>/runs``, then write the report.

    Records are saved one by one (an interrupted grid keeps its finished runs); the report is
    rewritten after each run, one runner at a time. Every run is claimed while it trains
    (:func:`~pyro_lfbm.harness.locking.run_claim` on ``runs/<key>.running``); with ``skip_done``, a
    finished run and a run that another live runner has claimed are skipped, so several grids can
    share the work. ``args`` is not modified. Returns every record under ``<out>/runs``.
    """

    def for_dataset(dataset: str) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(args), "dataset": dataset})

    try:
        parsed = [MaskSetting.parse(s) for s in settings]
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not report_only:
        for dataset in dict.fromkeys(datasets):  # every data set and prior checked before any work
            check_task_arguments(for_dataset(dataset), priors=priors)
    else:
        check_task_arguments(args, checkpoints=False)
    overwrite = getattr(args, "overwrite", True)  # recovery_table has no --overwrite: its --redo means run again
    if not skip_done and not report_only and not overwrite:
        for dataset in datasets:
            for setting in parsed:
                for seed in seeds:
                    for prior in priors:
                        recorded = Path(args.out) / "runs" / f"{run_key(dataset, setting.name, prior, seed)}.json"
                        if recorded.exists():
                            raise UsageError(f"{recorded} already holds this finished run; pass --overwrite to run it again, "
                                             "or choose another --out")
    device = resolve_device(args.device)
    out = Path(args.out)
    runs_dir = out / "runs"
    cache: Dict[str, torch.Tensor] = {}

    def train_images(dataset: str) -> torch.Tensor:
        if dataset not in cache:
            cache[dataset] = load_split(for_dataset(dataset), "train", args.n_train)
        return cache[dataset]

    def report() -> List[Dict]:
        make_dirs(runs_dir)
        with locked(runs_dir / ".report.lock"):  # grids running side by side write the report one at a time
            records = load_runs(runs_dir)
            if records:
                with staged_output(out) as stage:
                    notes = (out / "NOTES.md").read_text() if (out / "NOTES.md").is_file() else ""
                    write_recovery_report(stage, records, lambda d: train_images(d)[:PREVIEW], run_record(), notes)
        return records

    if report_only:
        return report()
    jobs = [(d, s, seed, p) for d in datasets for s in parsed for seed in seeds for p in priors]
    for dataset, setting, seed, prior in tqdm(jobs, desc="recovery runs", disable=args.no_progress or len(jobs) < 2):
        key = run_key(dataset, setting.name, prior, seed)
        if skip_done and (runs_dir / f"{key}.json").exists():
            continue
        make_dirs(runs_dir)
        with run_claim(runs_dir / f"{key}.running") as claimed:
            if skip_done and not claimed:  # another runner is training it
                continue
            x = train_images(dataset)
            preset = task_preset(args, prior, tuple(x.shape[1:]))
            rec = recovery_record(
                preset, x, setting, dataset=dataset, preset_name=args.preset, seed=seed, command=command_line(),
                device=device, checkpoint_dir=checkpoint_dir(args), progress=not args.no_progress,
                eval_steps=args.eval_steps, eval_step_size=args.eval_step_size, eval_noise=args.eval_noise,
                skip_nonfinite=getattr(args, "skip_nonfinite", False),
            )
            save_run(runs_dir, rec)
        shown = {k: rec[k] for k in ("mse_hole", "mse_all", "coverage", "train_seconds")}
        print(f"{key}: " + json.dumps({k: round(v, 5) for k, v in shown.items()}), flush=True)
        report()
    return report()
