"""The synthesis experiment: per prior, train or load, sample, Fréchet distance, test reconstruction (experiments/synthesis.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyro_lfbm.harness.cli import UsageError, refuse_finished_run, run_record, staged_output, write_json
from pyro_lfbm.harness.formatting import mean_std, prior_label
from pyro_lfbm.data import dataset_info
from pyro_lfbm.metrics.fid import ClassifierFeatures
from pyro_lfbm.harness.panels import save_grid
from pyro_lfbm.tasks.synthesis import synthesis_metrics
from pyro_lfbm.harness.task_cli import check_task_arguments, load_split, task_preset, trained_model
from pyro_lfbm.train import distributed

__all__ = ["flow_below_gaussian", "run_synthesis", "seed_summary"]

def run_synthesis(args: argparse.Namespace) -> pd.DataFrame:
    """Write ``<out>/<dataset>/``: table.csv, README.md, samples-<prior>.png; returns the table."""
    if args.num_samples < 2:
        raise UsageError(f"--num-samples must be at least 2, got {args.num_samples}")
    if args.test_steps is not None and args.test_steps < 1:
        raise UsageError(f"--test-steps must be at least 1, got {args.test_steps}")
    check_task_arguments(args, priors=args.priors)
    info = dataset_info(args.dataset)
    refuse_finished_run(Path(args.out) / info.name, "table.csv", args.overwrite)
    x_train = load_split(args, "train", args.n_train)
    x_test = load_split(args, "test", args.n_test)
    classifier = None
    main = distributed.is_main()  # under torchrun: training is data-parallel, rank 0 alone prints and writes
    if info.num_classes >= 2:  # (each process gets the same classifier; its cache file is replaced atomically)
        classifier = ClassifierFeatures.load_or_train(info.name, args.data_root, args.cache_dir,
                                                      progress=not args.no_progress and main,
                                                      fake_shape=tuple(x_train.shape[1:]))
    seeds = list(getattr(args, "seeds", None) or [args.seed])
    rows, grids = [], {}
    for seed in seeds:
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        for prior in args.priors:
            model, history = trained_model(seed_args, prior, x_train)
            learn = task_preset(seed_args, prior, tuple(x_train.shape[1:])).learn
            steps = args.test_steps if args.test_steps is not None else learn.test_steps
            with distributed.local_batchnorm():  # each process measures the whole model, as one process does
                m = synthesis_metrics(model, x_train, x_test, classifier=classifier, num_samples=args.num_samples,
                                      num_steps=steps, step_size=learn.test_step_size, seed=seed,
                                      batch_size=learn.test_batch_size, progress=not args.no_progress and main)
            grids.setdefault(prior, m["samples"][:100])  # the first seed's samples are shown
            rows.append({"dataset": info.name, "prior": prior, "classifier_fd": m["classifier_fd"],
                         "inception_fid": m["inception_fid"], "recon_mse_pm1": m["recon_mse"], "test_steps": steps,
                         "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]), "num_samples": args.num_samples,
                         "epochs": len(history.epochs), "train_seconds": round(history.train_seconds, 1), "seed": seed,
                         "preset": args.preset})
            fd = "n/a" if m["classifier_fd"] is None else f"{m['classifier_fd']:.2f}"
            if main:
                print(f"{info.name} {prior} seed {seed}: classifier FD {fd}, test recon MSE {m['recon_mse']:.4f}", flush=True)
    table = pd.DataFrame(rows)
    if not main:
        return table
    record = run_record({"classifier": classifier.info if classifier else None, "inception": rows and m["inception_note"]})
    out = Path(args.out) / info.name
    with staged_output(out) as stage:
        table.to_csv(stage / "table.csv", index=False)
        for prior, grid in grids.items():
            save_grid(grid, stage / f"samples-{prior}.png", nrow=10)
        write_json(stage / "run.json", record)
        _write_readme(stage / "README.md", table, record, list(grids))
    return table


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per prior: classifier FD and test reconstruction MSE as "mean ± std (n seeds)"."""
    def cell(values: pd.Series) -> str:
        return mean_std(values, ".4g", ".2g")

    grouped = table.groupby("prior", sort=False)
    return pd.DataFrame({"prior": [prior_label(p) for p in grouped.groups],
                         "classifier_fd": list(grouped.classifier_fd.apply(cell)),
                         "recon_mse_pm1": list(grouped.recon_mse_pm1.apply(cell))})


def flow_below_gaussian(table: pd.DataFrame) -> str:
    """"met"/"not met" with both means and the seed counts, or why it cannot be judged."""
    means = table.groupby("prior").classifier_fd.agg(["mean", "count"])
    if not {"flow", "gaussian"} <= set(means.index) or means["mean"].isna().any():
        return "not judged (needs both priors and a classifier)"
    flow, gauss = means.loc["flow"], means.loc["gaussian"]
    verdict = "met" if flow["mean"] < gauss["mean"] else "not met"
    return (f"{verdict} (flow {flow['mean']:.4g} over {int(flow['count'])} seed(s), "
            f"Gaussian {gauss['mean']:.4g} over {int(gauss['count'])})")


def _write_readme(path: Path, table: pd.DataFrame, record: dict, priors) -> None:
    clf = record.get("classifier") or {}
    inception = record.get("inception") or "computed (pytorch-fid)"
    shown = table[["prior", "seed", "classifier_fd", "inception_fid", "recon_mse_pm1", "test_steps", "n_train", "epochs", "train_seconds"]]
    lines = [
        f"# Synthesis and reconstruction: {table['dataset'].iloc[0]}",
        "",
        "* `classifier_fd`: Fréchet distance between samples x = g(z), z ~ p_α(z), and the training images in the "
        "128-d feature space of a small CNN classifier trained once on this data set and cached outside the repository "
        f"(test accuracy {clf.get('test_accuracy', 'n/a')}, {clf.get('train_images', '?')} training images, "
        f"{clf.get('epochs', '?')} epochs). **This is not the Inception FID**; its values are comparable only with this "
        "classifier (`pyro_lfbm.metrics.fid`, CLASSIFIER_VERSION 1). Lower is better.",
        f"* `inception_fid`: the standard FID (pytorch-fid); here: {inception}.",
        "* `recon_mse_pm1`: test reconstruction error, per pixel in [-1, 1] units (the paper's), of g(z) after "
        "`test_steps` noise-free Langevin steps of 0.1 from z0 ~ N(0, I).",
        "",
        "## Mean ± std over seeds",
        "",
        seed_summary(table).to_markdown(index=False),
        "",
        f"Target, sample Fréchet distance of the flow prior below the Gaussian prior's: {flow_below_gaussian(table)}.",
        "",
        "## Every run",
        "",
        shown.to_markdown(index=False),
        "",
        f"Command: `{record['command']}` ({record['finished']}, {record['machine']}).",
        "",
        *[f"![{prior_label(p)} samples](samples-{p}.png)  {prior_label(p)}" for p in priors],
        "",
    ]
    path.write_text("\n".join(lines))
