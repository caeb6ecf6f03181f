"""The anomaly table: its rows on disk (appended under a lock by side-by-side runners) and its README,
measured mean ± std over seeds beside the paper's AUPRC rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pandas as pd

from pyro_lfbm.harness.anomaly_experiment import AnomalyRunConfig, run_folder_name, run_variant
from pyro_lfbm.harness.cli import read_result_file
from pyro_lfbm.harness.formatting import mean_std, other_priors
from pyro_lfbm.harness.locking import locked
from pyro_lfbm.train.presets import PRESETS

__all__ = ["HIERARCHICAL_AUPRC", "PAPER_AUPRC", "append_rows", "has_run", "hierarchical_target_table", "paired_differences",
           "read_table", "run_table", "summary_table", "target_table", "write_report"]

# "A Tale of Two Latent Flows", MNIST held-out-digit AUPRC (digits 1, 4, 5, 7, 9).
PAPER_AUPRC: Dict[str, Dict[int, float]] = {
    "LFBM": {1: 0.349, 4: 0.812, 5: 0.823, 7: 0.682, 9: 0.514},
    "LEBM": {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413},
    "ABP": {1: 0.095, 4: 0.138, 5: 0.147, 7: 0.138, 9: 0.102},
}

# Hierarchical latent models on the same digits, as Cui, Wu & Han ("Learning Hierarchical Features with Joint Latent
# Space Energy-Based Prior", ICCV 2023, Table 3) report them: a hierarchical VAE (Havtorn et al., ICML 2021) and their
# joint EBM prior with an inference network (their ± is over the last 10 epochs of one run).
HIERARCHICAL_AUPRC: Dict[str, Dict[int, float]] = {
    "HVAE": {1: 0.494, 4: 0.920, 5: 0.913, 7: 0.680, 9: 0.791},
    "joint EBM prior": {1: 0.722, 4: 0.949, 5: 0.980, 7: 0.941, 9: 0.935},
}

#: The hierarchical model's decision function and BatchNorm mode: those of the ``cpu-hierarchical`` preset, chosen on
#: development digits 0, 2, 3, 6 and 8 (``results/anomaly/hierarchical_dev_digits/``), on running statistics.
HIERARCHICAL_SCORE = (PRESETS["cpu-hierarchical"]().score, "eval")


def read_table(table_path: Path) -> pd.DataFrame:
    """The runs recorded so far (empty when there is no table yet).

    :raises ResultFileError: the file exists but is not a table of runs (one line naming it).
    """
    if not Path(table_path).exists():
        return pd.DataFrame()

    def read(path):
        table = pd.read_csv(path)
        missing = {"heldout", "prior", "seed", "preset"} - set(table.columns)
        if missing:
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        return table

    return read_result_file(table_path, read, "anomaly table")


def has_run(table: pd.DataFrame, heldout: int, prior: str, seed: int, preset: str) -> bool:
    return not table.empty and bool(((table.heldout == heldout) & (table.prior == prior) & (table.seed == seed)
                                     & (table.preset == preset)).any())


def append_rows(table_path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Add one run's rows to the table on disk (re-read under a lock, written atomically); returns the new table."""
    table_path = Path(table_path)
    with locked(table_path.with_name(table_path.name + ".lock")):
        table = pd.concat([read_table(table_path), rows], ignore_index=True)
        tmp = table_path.with_suffix(".csv.tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(table_path)  # never half-written
    return table


def summary_table(table: pd.DataFrame, metric: str = "auprc") -> pd.DataFrame:
    """Rows (prior, BatchNorm mode, score), columns held-out digits, cells "mean ± std (n)" over seeds."""
    keys = ["prior", "batchnorm", "score"] if "batchnorm" in table else ["prior", "score"]
    grouped = table.groupby(keys + ["heldout"])[metric].agg(mean_std).reset_index(name="cell")
    return grouped.pivot(index=keys, columns="heldout", values="cell").fillna("–").reset_index()


def scored_rows(table: pd.DataFrame, score: str, batchnorm: str) -> pd.DataFrame:
    """The rows of one decision function scored in one BatchNorm mode (tables from before the
    ``batchnorm`` column have one mode only)."""
    return table[(table.score == score) & (table.batchnorm == batchnorm)] if "batchnorm" in table else table[table.score == score]


def target_table(table: pd.DataFrame, batchnorm: str = "train") -> pd.DataFrame:
    """The issue's targets per held-out digit, from the joint score with ``batchnorm`` scoring.

    Columns: heldout, seeds (flow runs), flow (mean AUPRC), paper (the paper's LFBM row), gap
    (flow − paper), met (at least the paper's row over at least 3 seeds), one column per other prior
    (:func:`other_priors`: ebm, gaussian; their means where run) and ahead (flow above every other prior that was run; NaN when none was).
    """
    rows = scored_rows(table, "joint", batchnorm)
    means = rows.groupby(["heldout", "prior"]).auprc.mean().unstack("prior")
    seeds = rows[rows.prior == "flow"].groupby("heldout").seed.nunique()
    out = []
    for digit in sorted(rows.heldout.unique()):
        flow = means.loc[digit].get("flow", float("nan"))
        paper = PAPER_AUPRC["LFBM"].get(int(digit), float("nan"))
        others = {p: means.loc[digit].get(p, float("nan")) for p in other_priors()}
        measured = [v for v in others.values() if pd.notna(v)]
        n = int(seeds.get(digit, 0))
        out.append({
            "heldout": int(digit), "seeds": n, "flow": flow, "paper": paper, "gap": flow - paper,
            "met": bool(n >= 3 and flow >= paper), **others,
            "ahead": (bool(all(flow > v for v in measured)) if measured else float("nan")),
        })
    return pd.DataFrame(out)


def hierarchical_target_table(table: pd.DataFrame, score: str = HIERARCHICAL_SCORE[0],
                              batchnorm: str = HIERARCHICAL_SCORE[1]) -> pd.DataFrame:
    """The hierarchical runs' targets per held-out digit and prior: mean AUPRC of ``score`` scored with
    ``batchnorm`` over seeds, beside each :data:`HIERARCHICAL_AUPRC` row and the gap to it; ``met``: at
    least the HVAE row over at least 3 seeds. Empty without hierarchical runs."""
    if "model" not in table:
        return pd.DataFrame()
    rows = scored_rows(table[table.model == "hierarchical"], score, batchnorm)
    out = []
    for (digit, prior), runs in rows.groupby(["heldout", "prior"]):
        mean = runs.auprc.mean()
        row = {"heldout": int(digit), "prior": prior, "seeds": runs.seed.nunique(), "mean": mean}
        for name, published in HIERARCHICAL_AUPRC.items():
            row[name] = published.get(int(digit), float("nan"))
            row[f"gap to {name}"] = mean - row[name]
        row["met"] = "yes" if row["seeds"] >= 3 and mean >= row["HVAE"] else "no"
        out.append(row)
    return pd.DataFrame(out)


def paired_differences(table: pd.DataFrame, batchnorm: str = "train", score: str = "joint") -> pd.DataFrame:
    """Flow minus each other prior, seed by seed (a seed fixes the split, so both priors saw the same
    images), which the means of ``target_table`` hide when the priors were run at different seeds.

    One row per (heldout, other prior) with both run at some seed: seeds (how many shared), mean and
    min / max of the per-seed AUPRC difference flow − other, and wins (seeds where the flow was higher).
    """
    rows = scored_rows(table, score, batchnorm)
    by_seed = rows.pivot_table(index=["heldout", "seed"], columns="prior", values="auprc")
    out = []
    for other in other_priors():
        if "flow" not in by_seed or other not in by_seed:
            continue
        diff = (by_seed["flow"] - by_seed[other]).dropna()
        for digit, per_seed in diff.groupby(level="heldout"):
            out.append({"heldout": int(digit), "other": other, "seeds": len(per_seed), "mean": per_seed.mean(),
                        "min": per_seed.min(), "max": per_seed.max(), "wins": int((per_seed > 0).sum())})
    columns = ["heldout", "other", "seeds", "mean", "min", "max", "wins"]
    return pd.DataFrame(out, columns=columns).sort_values(["heldout", "other"], ignore_index=True)


def paired_markdown(paired: pd.DataFrame) -> str:
    """``paired_differences`` as a markdown table, or one sentence saying why there is none yet."""
    if paired.empty:
        return "No seed has the flow and another prior both run yet."
    return paired.to_markdown(index=False, floatfmt="+.3f")


def readable_targets(targets: pd.DataFrame) -> pd.DataFrame:
    """``target_table`` for reading: AUPRCs to 3 decimals, ``met`` and ``ahead`` as yes / no, and
    "not run" where a prior was not run."""
    if targets.empty:
        return targets
    out = targets.copy()
    for column in ("flow", "paper", "gap", *other_priors()):
        out[column] = ["not run" if pd.isna(v) else f"{v:.3f}" for v in targets[column]]
    out["met"] = ["yes" if met else "no" for met in targets.met]
    out["ahead"] = ["not run" if pd.isna(a) else ("yes" if a else "no") for a in targets.ahead]
    return out


def run_table(table: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """One row per run (held-out digit, prior, seed) with its settings, time and, where its
    ``runs_dir/heldout<d>-<prior>[-<variant>]-seed<s>/run.json`` exists, the machine and command."""
    table = table.assign(**{column: table[column].fillna(default) if column in table else default
                            for column, default in (("model", "latent"), ("guide", "langevin"), ("encoder", "mean-field"))})
    per_mode = table.groupby(["heldout", "prior", "seed", "batchnorm"]).agg(
        preset=("preset", "first"), epochs=("epochs", "first"), test_steps=("test_steps", "first"),
        n_train=("n_train", "first"), n_test=("n_test", "first"), train_seconds=("train_seconds", "first"),
        test_seconds=("test_seconds", "first"), model=("model", "first"), guide=("guide", "first"),
        encoder=("encoder", "first")).reset_index()
    runs = per_mode.groupby(["heldout", "prior", "seed"]).agg(
        preset=("preset", "first"), model=("model", "first"), guide=("guide", "first"), encoder=("encoder", "first"),
        epochs=("epochs", "first"),
        test_steps=("test_steps", "first"),
        n_train=("n_train", "first"), n_test=("n_test", "first"), train_seconds=("train_seconds", "first"),
        test_seconds=("test_seconds", "sum")).reset_index()
    runs["minutes"] = ((runs.train_seconds + runs.test_seconds) / 60).round(1)
    machines, commands = [], []
    for row in runs.itertuples():
        variant = run_variant(AnomalyRunConfig(model=row.model, guide=row.guide, encoder=row.encoder))
        record_path = runs_dir / run_folder_name(row.heldout, row.prior, row.seed, variant) / "run.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        machines.append("; ".join(part for part in (record.get("machine"), record.get("cpu")) if part))
        commands.append(f"`{record['command']}`" if "command" in record else "")
    runs["machine"], runs["command"] = machines, commands
    return runs.drop(columns=["model", "guide", "encoder"])


def hierarchical_section(table: pd.DataFrame, score: str = HIERARCHICAL_SCORE[0]) -> list:
    """The report's lines on the hierarchical runs' targets by ``score`` on running statistics (none without such runs)."""
    batchnorm = HIERARCHICAL_SCORE[1]
    targets = hierarchical_target_table(table, score, batchnorm)
    if targets.empty:
        return []
    return [f"## Targets of the hierarchical model ({score} term, BatchNorm {batchnorm}: the decision function chosen on "
            "development digits 3 and 8)", "",
            "`met`: mean over at least 3 seeds at least the HVAE row. Both rows as Cui, Wu & Han (ICCV 2023, Table 3) "
            "report them.", "", targets.to_markdown(index=False, floatfmt=".3f"), ""]


def write_report(table: pd.DataFrame, path: Path, record: dict, hierarchical_score: str = HIERARCHICAL_SCORE[0]) -> None:
    """Write the report of ``table`` to ``path``; ``hierarchical_score``: the decision function of the hierarchical
    runs' targets (default: the ``cpu-hierarchical`` preset's)."""
    digits = sorted(table.heldout.unique())
    lines = [
        "# MNIST held-out-digit anomaly detection",
        "",
        f"This page was last written by `{record['command']}`  ",
        f"on {record['finished']}, {record['machine']} (torch {record['torch']}, pyro {record['pyro']}).",
        "Each run's own command, machine and time are in the last table.",
        "",
        "AUPRC = trapezoidal area under `sklearn.metrics.precision_recall_curve` with the held-out digit as the",
        "positive class. Cells are mean ± standard deviation **over training seeds** (the count in brackets);",
        "the seed also fixes the data split. Decision functions: `joint` = −log p(x, z) (the paper's),",
        "`recon` = −log p(x | z), `prior` = −log p(z), all at the test-time z: `test_steps` noise-free Langevin",
        "steps from z₀ ~ N(0, I), or from the encoder's z for encoder and hybrid runs (0 steps: the encoder's z).",
        "",
        *(["See `NOTES.md` for what decides the score.", ""] if (path.parent / "NOTES.md").exists() else []),
        *[f"Another table, run differently: `{other.relative_to(path.parent)}`." for other in sorted(path.parent.glob("*/README.md"))],
        "",
        "## Measured AUPRC",
        "",
        summary_table(table).to_markdown(index=False),
        "",
        "## The paper's AUPRC",
        "",
        "| model | " + " | ".join(str(d) for d in digits) + " |",
        "|---|" + "---|" * len(digits),
    ]
    for model, row in PAPER_AUPRC.items():
        lines.append(f"| {model} | " + " | ".join(f"{row.get(d, float('nan')):.3f}" for d in digits) + " |")
    lines += [
        "",
        "## Targets (joint score, BatchNorm in training mode as the official code scores)",
        "",
        "`met`: mean over at least 3 seeds at least the paper's LFBM row; `ahead`: the flow prior's mean",
        "above the Gaussian (ABP) and energy (LEBM) priors' where those were run.",
        "",
        readable_targets(target_table(table)).to_markdown(index=False),
        "",
        *hierarchical_section(table, hierarchical_score),
        "## Flow minus the other priors, seed by seed (joint score, BatchNorm in training mode)",
        "",
        "Each seed fixes the split, so a difference compares two priors on the same images. `mean`, `min`,",
        "`max`: AUPRC of the flow minus the other prior over the `seeds` both were run at; `wins`: seeds where",
        "the flow scored higher.",
        "",
        paired_markdown(paired_differences(table)),
        "",
        "The same for the prior term alone (−log p(z)) with BatchNorm in evaluation mode, where the priors",
        "differ most:",
        "",
        paired_markdown(paired_differences(table, batchnorm="eval", score="prior")),
        "",
        "## Runs: settings, time and the command of each",
        "",
        "`minutes` = training plus scoring in every BatchNorm mode, on the machine and torch threads of `run.json`.",
        "",
        run_table(table, path.parent / "runs").to_markdown(index=False),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
