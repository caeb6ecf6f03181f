"""What every experiment script shares: common options, device choice, one-line errors, and
result folders that are written whole or not at all, with the command that made them."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from pyro_lfbm.checkpoint import CheckpointError
from pyro_lfbm.data import DataError


class UsageError(ValueError):
    """A bad command-line value; reported in one line with exit code 2."""


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str, presets=("cpu", "paper", "tiny")) -> None:
    """--data-root, --seed, --preset, --epochs, --device, --out, --checkpoint-dir, --resume, --no-progress."""
    parser.add_argument("--data-root", default=None, help="data folder in torchvision layout (default: $PYRO_LFBM_DATA, else ./data or ../shared/data, whichever has the data)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the data split and of training")
    parser.add_argument("--preset", choices=presets, default=presets[0], help="model and schedule preset")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", default=default_out, help="folder for results (written whole at the end)")
    parser.add_argument("--checkpoint-dir", default=None, help="folder for checkpoints (default: <out>/checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_overrides(items) -> dict:
    """``["latent_dim=16", "batch_norm=false"]`` → ``{"latent_dim": 16, "batch_norm": False}``."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        out[key.strip().replace("-", "_")] = value
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def run_cli(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Run ``main(args)``; known user errors become one line on stderr and exit code 2."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        main(args)
    except (UsageError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    except FloatingPointError as err:  # a NaN/inf guard fired during training
        print(f"error: {err} (the last epoch's checkpoint is kept; --resume continues from it)", file=sys.stderr)
        raise SystemExit(3)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; re-run with --resume to continue", file=sys.stderr)
        raise SystemExit(130)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def run_record(extra: dict | None = None) -> dict:
    """The command, time, machine and versions, for writing beside results."""
    import pyro

    return {
        "command": command_line(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        **(extra or {}),
    }


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files are moved into ``out_dir``.

    If the block raises, nothing is written to ``out_dir`` (no partial results).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
