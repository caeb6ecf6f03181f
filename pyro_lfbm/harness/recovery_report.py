"""Records, tables and figures of the recovery experiment (one JSON per run, aggregated with pandas).

A run record is a dict: ``dataset, setting, prior, seed`` + the metrics of
:func:`pyro_lfbm.tasks.recovery.run_recovery` + ``command`` + ``preview`` (the first recovered images,
uint8, zlib + base64, so that figures can be drawn from records alone).
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pandas as pd
import torch

from pyro_lfbm.data.masks import MASK_SETTINGS, MaskSetting
from pyro_lfbm.harness.cli import read_result_file
from pyro_lfbm.harness.formatting import mean_std, other_priors, prior_label
from pyro_lfbm.train.presets import prior_names
from pyro_lfbm.harness.panels import save_panel

__all__ = ["decode_images", "encode_images", "load_runs", "rank_counts", "run_key", "save_run", "setting_figure",
           "summary_table", "target_check"]

SETTING_ORDER = tuple(MaskSetting(*s).name for s in MASK_SETTINGS)


def run_key(dataset: str, setting: str, prior: str, seed: int) -> str:
    return f"{dataset}-{setting}-{prior}-s{seed}"


def encode_images(images: torch.Tensor) -> Dict:
    """Images (N, C, H, W) in [-1, 1] -> {"shape", "data"} (uint8, zlib, base64)."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous()
    return {"shape": list(u8.shape), "data": base64.b64encode(zlib.compress(u8.numpy().tobytes(), 9)).decode()}


def decode_images(blob: Dict) -> torch.Tensor:
    """Inverse of :func:`encode_images`: (N, C, H, W) in [-1, 1]."""
    raw = zlib.decompress(base64.b64decode(blob["data"]))
    u8 = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(*blob["shape"])
    return u8.float() / 127.5 - 1


def save_run(runs_dir: Path, record: Dict) -> Path:
    """Write ``<runs_dir>/<run_key>.json`` atomically."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{run_key(record['dataset'], record['setting'], record['prior'], record['seed'])}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_runs(runs_dir: Path) -> List[Dict]:
    """Every run record under ``runs_dir`` (sorted by file name).

    :raises ResultFileError: a record that is not readable JSON (one line naming the file).
    """
    return [read_result_file(p, lambda path: json.loads(path.read_text()), "run record") for p in sorted(Path(runs_dir).glob("*.json"))]


def _frame(records: Iterable[Dict]) -> pd.DataFrame:
    rows = [{k: v for k, v in r.items() if k not in ("preview", "history")} for r in records]
    return pd.DataFrame(rows)


def long_table(records: Iterable[Dict]) -> pd.DataFrame:
    """One row per run: dataset, setting, prior, seed, the MSEs, coverage, times, epochs, n_train, command."""
    df = _frame(records)
    if df.empty:
        return df
    cols = ["dataset", "setting", "prior", "seed", "mse_hole", "mse_all", "mse_observed", "coverage", "coverage_std",
            "n_train", "epochs", "preset", "train_seconds", "eval_seconds", "eval_steps", "eval_noise", "command"]
    df = df[[c for c in cols if c in df.columns]]
    return df.sort_values(["dataset", "setting", "prior", "seed"]).reset_index(drop=True)


def summary_table(records: Iterable[Dict], metric: str = "mse_hole") -> pd.DataFrame:
    """Rows: priors; columns: (dataset, setting); cells "mean ± std (n seeds)" of ``metric``."""
    df = _frame(records)
    if df.empty:
        return df
    g = df.groupby(["prior", "dataset", "setting"])[metric].agg(lambda v: mean_std(v, ".4f")).reset_index(name="cell")
    table = g.pivot(index="prior", columns=["dataset", "setting"], values="cell")
    order = [(d, s) for d in sorted(df["dataset"].unique()) for s in SETTING_ORDER if (d, s) in table.columns]
    order += [c for c in table.columns if c not in order]
    table = table[order].reindex([p for p in prior_names() if p in table.index])
    table.index = [prior_label(p) for p in table.index]
    return table


def rank_counts(records: Iterable[Dict], metric: str = "mse_hole") -> pd.DataFrame:
    """How often each prior ranks 1st, 2nd, ... (lowest ``metric`` first) among the priors run on the
    same images and masks, i.e. within each (dataset, setting, seed) that every prior has.

    :returns: rows priors, columns ``rank 1`` ... ``rank k``, plus ``pairs`` (the comparisons counted).
    """
    df = _frame(records)
    if df.empty:
        return df
    wide = df.pivot_table(index=["dataset", "setting", "seed"], columns="prior", values=metric).dropna()
    ranks = wide.rank(axis=1, method="min").astype(int)
    table = pd.DataFrame({f"rank {k}": (ranks == k).sum() for k in range(1, wide.shape[1] + 1)})
    table["pairs"] = len(wide)
    order = prior_names()
    table = table.reindex([p for p in order if p in table.index] + [p for p in table.index if p not in order])
    table.index = [prior_label(p) for p in table.index]
    return table


def target_check(records: Iterable[Dict], metric: str = "mse_hole") -> pd.DataFrame:
    """Per (dataset, setting): mean ``metric`` of each prior over seeds and whether flow is lowest.

    ``gap`` = flow − best other prior (negative = flow better); ``seeds`` = seeds that every prior has.
    """
    df = _frame(records)
    rows = []
    for (dataset, setting), part in df.groupby(["dataset", "setting"]):
        means = part.groupby("prior")[metric].mean()
        seeds = set.intersection(*(set(s["seed"]) for _, s in part.groupby("prior")))
        row = {"dataset": dataset, "setting": setting, **{p: means.get(p) for p in prior_names()}, "seeds": len(seeds)}
        others = [means[p] for p in other_priors() if p in means]
        if "flow" in means and len(others) == len(other_priors()):
            row["gap"] = float(means["flow"] - min(others))
            row["flow_best"] = bool(row["gap"] < 0)
            row["flow_best_every_seed"] = all(
                part[(part.prior == "flow") & (part.seed == s)][metric].iloc[0]
                < part[(part.prior != "flow") & (part.seed == s)][metric].min()
                for s in seeds
            ) if seeds else None
        rows.append(row)
    return pd.DataFrame(rows)


def setting_figure(records: Iterable[Dict], originals: torch.Tensor, mask: torch.Tensor, path: Path,
                   title: Optional[str] = None) -> None:
    """Rows: originals, occluded (holes grey), recovered x̂ = g(z) by each prior (records of one setting and seed)."""
    by_prior = {r["prior"]: r for r in records}
    n = originals.shape[0]
    rows = {"original": originals, "occluded": originals * mask}
    for prior in prior_names():
        if prior in by_prior and by_prior[prior].get("preview"):
            rows[prior_label(prior)] = decode_images(by_prior[prior]["preview"])[:n]
    save_panel(rows, path, title=title)
