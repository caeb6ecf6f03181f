"""What every experiment script shares: common options, argument checks made before any work,
one-line errors, and result folders that are written whole or not at all, with the command that
made them.

How a script uses it (every script in ``experiments/`` does this)::

    from pyro_lfbm.harness import cli

    def build_parser():
        parser = cli.ArgumentParser(description=__doc__)          # parse errors: one line, exit 2
        parser.add_argument("--steps", type=cli.positive_int, default=20)
        cli.add_common_arguments(parser, default_out="runs/mine")
        return parser

    def main(args):
        device = cli.check_common_arguments(args)                 # --device, --data-root, --out, ...
        ...                                                       # every other check, then the work

    if __name__ == "__main__":
        cli.run_cli(main, build_parser().parse_args())

:func:`run_cli` is the one error wrapper (its API is stable: ``run_cli(main, args)``). It sets the
torch thread count from ``args.threads`` and glibc's ``malloc`` thresholds
(:func:`pyro_lfbm.harness.allocator.retain_freed_memory`; ``PYRO_LFBM_SYSTEM_MALLOC=1`` keeps the
defaults), runs ``main(args)``, and turns known failures into one
line on stderr and an exit code: 2 for usage, data and checkpoint errors, 3 when training or
inference became non-finite (NaN/inf), 130 after Ctrl-C, 143 after SIGTERM (both stop training at
the next batch with its checkpoint written), 1 for a failing file system (disk full, permissions).
When the run fails, the folders it created (:func:`make_dirs`, :func:`writable_dir`,
:func:`staged_output`) are removed again if they are empty.

A run claims what it writes: :func:`refuse_finished_run` claims the result folder and
:func:`check_checkpoint_choice` the checkpoint (:func:`claim`, a ``flock`` from
:mod:`pyro_lfbm.harness.locking` held until :func:`run_cli` returns), so a second run started on
the same ones while the first is alive is refused in one line; a run that died (even by ``kill -9``)
holds nothing.

Defaults that matter on a shared machine: ``--threads`` is 1 (see :data:`DEFAULT_THREADS`), and
new runs go under ``runs/`` (ignored by git), so a user's run never rewrites the reference
results committed under ``results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import fields
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch

from pyro_lfbm.harness import allocator, locking
from pyro_lfbm.train import distributed
from pyro_lfbm.train.checkpoint import CheckpointError, os_error_in
from pyro_lfbm.train.loop import Terminated
from pyro_lfbm.data import DataError

#: Torch CPU threads unless ``--threads`` says otherwise. The models here are small (a cpu-preset
#: update is a few hundred small matrix products), and OpenMP threads wait for each other when a core
#: is taken: on a 2-core AMD EPYC already shared with other jobs, one cpu-preset update (batch 100)
#: took 0.29-0.42 s on one thread against 0.51-2.5 s on two, and with one more busy process 0.76-1.1 s
#: against 5.3-12 s (two interleaved repeats). ``--threads 0`` gives torch's default (one per core)
#: for a machine of your own.
DEFAULT_THREADS = 1

THREADS_HELP = (f"torch CPU threads (default {DEFAULT_THREADS}: these models are small, and when another process "
                "keeps a core busy, extra threads make every update up to 10x slower; 0 = torch's default, one "
                "per core, for a machine of your own)")


class UsageError(ValueError):
    """A bad command-line value; reported in one line with exit code 2."""


class ResultFileError(UsageError):
    """An earlier result file that cannot be read; reported in one line (naming the file) with exit code 2."""


# --------------------------------------------------------------------------- parsing


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr (``error: ...``), exit code 2.

    Sub-parsers made with ``add_subparsers`` are of this class too.
    """

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(lowest: int) -> Callable[[str], int]:
    """argparse ``type``: an integer >= ``lowest``."""

    def parse(text: str) -> int:
        value = _number(text, int, f"a whole number >= {lowest}")
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{lowest}"
    return parse


#: argparse ``type``: an integer >= 1.
positive_int = int_at_least(1)
#: argparse ``type``: an integer >= 0.
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number > 0."""
    value = _number(text, float, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse ``type``: a finite number >= 0."""
    value = _number(text, float, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def digit(text: str) -> int:
    """argparse ``type``: a class label 0..9."""
    value = _number(text, int, "a digit 0-9")
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be a digit 0-9, got {value}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str, presets=("cpu", "paper", "tiny"),
                         resume: bool = True, overwrite: bool = True, skip_nonfinite: bool = True) -> None:
    """--data-root, --seed, --preset, --epochs, --device, --out, --checkpoint-dir, [--resume],
    [--overwrite], [--skip-nonfinite], --threads, --no-progress.

    :param resume: offer ``--resume`` (scripts that always pick up their checkpoints do not).
    :param overwrite: offer ``--overwrite`` (scripts that refuse to replace a finished run).
    :param skip_nonfinite: offer ``--skip-nonfinite`` (scripts that train).
    """
    parser.add_argument("--data-root", default=None,
                        help="data folder in torchvision layout (default: $PYRO_LFBM_DATA, else ./data or ../shared/data, "
                             "whichever has the data)")
    parser.add_argument("--seed", type=nonnegative_int, default=1, help="seed of the data split and of training")
    parser.add_argument("--preset", choices=presets, default=presets[0], help="model and schedule preset")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the preset's number of epochs (>= 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", default=default_out,
                        help=f"folder for results, written whole at the end (default {default_out}; the reference "
                             "results committed under results/ are only written when --out names them)")
    parser.add_argument("--checkpoint-dir", default=None, help="folder for checkpoints (default: <out>/checkpoints)")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue from the checkpoint in --checkpoint-dir (refused when there is none)")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out (refused otherwise)")
    if skip_nonfinite:
        parser.add_argument("--skip-nonfinite", action="store_true",
                            help="drop training updates that leave a NaN/inf (counted in the history's nonfinite_skipped) "
                                 "instead of stopping with exit code 3")
    parser.add_argument("--threads", type=nonnegative_int, default=DEFAULT_THREADS, help=THREADS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_overrides(items, config=None, *, refused: Optional[Dict[str, str]] = None) -> dict:
    """``["latent_dim=16", "batch_norm=false"]`` -> ``{"latent_dim": 16, "batch_norm": False}``.

    :param config: a dataclass instance (e.g. a :class:`~pyro_lfbm.train.presets.ModelConfig`); when given,
        every key must be one of its fields and every value must fit the field's type (``int``,
        ``float``, ``bool``, ``str``), else :class:`UsageError`.
    :param refused: ``{field: what to do instead}`` for fields that ``--set`` may not change, e.g.
        ``{"prior": "use --prior"}``.
    """
    out = {}
    known = {f.name: f for f in fields(config)} if config is not None else None
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
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
        if known is not None:
            if key in (refused or {}):
                raise UsageError(f"--set {key}=...: {key} cannot be set here; {refused[key]}")
            if key not in known:
                raise UsageError(f"--set {key}=...: the model config has no field {key!r}; fields: {', '.join(known)}")
            value = _typed(key, value, type(getattr(config, key)), text)
        out[key] = value
    return out


def _typed(key: str, value, kind: type, text: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"--set {key}={text}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"--set {key}={text}: expected a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"--set {key}={text}: expected a finite number")
        return float(value)
    if kind is str:
        return text
    if kind is tuple:  # whole numbers separated by commas, e.g. layer_dims=20,4,4
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected whole numbers separated by commas, e.g. {key}=20,4,4") from None
    raise UsageError(f"--set {key}=...: {key} cannot be set from the command line")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- folders the run creates

_CREATED: List[Path] = []


def make_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, remembering every folder it creates so that a failed run removes them
    again (when empty)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    _CREATED.extend(reversed(missing))
    return path


def remove_created_dirs() -> None:
    """Remove the folders :func:`make_dirs` created in this run that are still empty (deepest first)."""
    for folder in sorted(set(_CREATED), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass
    _CREATED.clear()


def writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Create ``path`` if needed and prove it writable by writing and removing a test file.

    :param option: the command-line option that named it, for the message (e.g. ``"--out"``).
    :raises UsageError: one line naming the option, the folder and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} exists and is not a folder; pass a folder")
    try:
        make_dirs(path)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{option} {path} is not a writable folder ({err.strerror or err}); choose another folder") from None
    return path


# --------------------------------------------------------------------------- what the run claims

#: The claims of the running command (:func:`claim`): the claimed path -> the open claim; None
#: outside :func:`run_cli`.
_CLAIMS: Optional[Dict[Path, contextlib.ExitStack]] = None


def claim_file(path: str | os.PathLike[str]) -> Path:
    """The lock file of a claim on ``path`` (a folder or a file): ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def claim(path: str | os.PathLike[str], option: str) -> None:
    """Claim ``path`` (a result folder or a checkpoint file) for this command until :func:`run_cli`
    returns; refuse (one :class:`UsageError` line) while another live process holds it.

    The claim is :func:`pyro_lfbm.harness.locking.run_claim` on :func:`claim_file` (a ``flock``, so a
    process that died, even by ``kill -9``, holds nothing, and its lock file is taken over). Claiming
    a path twice in one command is a no-op. Outside :func:`run_cli` (a script's ``main`` called from
    Python) nothing is claimed. Under ``torchrun`` rank 0 claims for all processes.

    :param option: the option that named the path, for the message (e.g. ``"--out"``).
    """
    if _CLAIMS is None:
        return
    path = Path(path)
    key = path.absolute()
    world = distributed.current()
    refusal = None
    if key not in _CLAIMS and (world is None or world.is_main):
        lock = claim_file(path)
        try:
            make_dirs(lock.parent)
            held = contextlib.ExitStack()
            if held.enter_context(locking.run_claim(lock)):
                _CLAIMS[key] = held
            else:
                held.close()
                refusal = (f"{option}: {path} is in use by another run ({locking.claim_holder(lock) or 'another process'}); "
                           f"wait for it to end, or choose another {option}")
        except OSError as err:
            refusal = f"{option} {lock.parent} is not a writable folder ({err.strerror or err}); choose another folder"
    refusal = distributed.broadcast_object(refusal)  # every process refuses alike (rank > 0 silently)
    if refusal is not None:
        raise UsageError(refusal)


def _release_claims() -> None:
    global _CLAIMS
    claims, _CLAIMS = _CLAIMS or {}, None
    for held in claims.values():
        held.close()


def check_common_arguments(args: argparse.Namespace, *, out: bool = True) -> torch.device:
    """The checks of :func:`add_common_arguments`'s options, made before any data is read:
    ``--device`` is usable, ``--data-root`` (when given) is an existing folder, ``--out`` (when
    ``out``) and ``--checkpoint-dir`` (when given) are writable folders.

    :returns: the torch device.
    """
    device = resolve_device(getattr(args, "device", "cpu"))
    check_data_root(getattr(args, "data_root", None))
    if out and getattr(args, "out", None):
        writable_dir(args.out, "--out")
    if getattr(args, "checkpoint_dir", None):
        writable_dir(args.checkpoint_dir, "--checkpoint-dir")
    return device


def check_data_root(data_root: Optional[str]) -> None:
    """``--data-root`` must name an existing folder (nothing is created for a missing one)."""
    if data_root is None or str(data_root) == "":
        return
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data-root {data_root} is not an existing folder; pass the folder that holds the data "
                         "(e.g. MNIST/raw/...), or create it first to let torchvision download into it")


def require_checkpoint(paths, option: str = "--resume") -> None:
    """``--resume`` with nothing to resume is refused: at least one of ``paths`` must exist."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not any(p.is_file() for p in paths):
        shown = paths[0] if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} expected names)"
        raise UsageError(f"{option}: there is no checkpoint to resume at {shown}; run without {option} to train from "
                         "scratch, or pass the --checkpoint-dir of the run to continue")


def refuse_checkpoint_overwrite(path: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
    """Refuse to start training from scratch over the checkpoint of an earlier run at ``path``
    unless ``--resume`` (continue it) or ``--overwrite`` (start over) says what to do with it."""
    if Path(path).is_file() and not resume and not overwrite:
        raise UsageError(f"{path} holds the checkpoint of an earlier run; pass --resume to continue it, or --overwrite "
                         "to train from scratch")


def check_checkpoint_choice(path: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
    """Claim the checkpoint at ``path`` for this run (:func:`claim`); then ``--resume`` needs it, and
    an existing one needs ``--resume`` (continue it) or ``--overwrite`` (start over)."""
    claim(path, "--checkpoint-dir")
    if resume:
        require_checkpoint(path)
    refuse_checkpoint_overwrite(path, resume, overwrite)


def training_run_checkpoint(out: str | os.PathLike[str], checkpoint_dir, name: str, resume: bool, overwrite: bool) -> Path:
    """The checkpoint path ``<checkpoint_dir>/<out's name>-<name>.pt`` of a training script whose
    finished runs hold ``metrics.json``, after every check of :func:`refuse_finished_run`,
    :func:`writable_dir` (default folder: ``<out>/../checkpoints``) and :func:`check_checkpoint_choice`."""
    out = Path(out)
    refuse_finished_run(out, "metrics.json", overwrite)
    folder = writable_dir(checkpoint_dir or out.parent / "checkpoints", "--checkpoint-dir")
    path = folder / f"{out.name}-{name}.pt"
    check_checkpoint_choice(path, resume, overwrite)
    return path


def refuse_finished_run(folder: str | os.PathLike[str], marker: str, overwrite: bool) -> None:
    """Claim the result folder for this run (:func:`claim`), then refuse to replace a finished run
    (``folder/marker`` exists) unless ``--overwrite``."""
    claim(folder, "--out")
    path = Path(folder) / marker
    if path.exists() and not overwrite:
        raise UsageError(f"{folder} already holds a finished run ({marker}); pass --overwrite to replace it, "
                         "or choose another --out")


# --------------------------------------------------------------------------- running


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def run_cli(main: Callable[[argparse.Namespace], object], args: argparse.Namespace, *, data_parallel: bool = False) -> None:
    """Run ``main(args)``, the one error wrapper of every script (API stable).

    - threads: ``torch.set_num_threads(args.threads)`` when ``args.threads`` is a positive number
      (``0`` or a missing attribute leave torch's default);
    - memory: :func:`~pyro_lfbm.harness.allocator.retain_freed_memory` (glibc keeps freed tensor
      memory in the process instead of unmapping it, which saves hundreds of page faults per
      Langevin step), unless ``PYRO_LFBM_SYSTEM_MALLOC`` is set (to anything but ``0``); whether it
      was applied is ``run_record()["malloc_retained"]``;
    - :class:`UsageError`, :class:`~pyro_lfbm.data.DataError`, :class:`~pyro_lfbm.train.checkpoint.CheckpointError`:
      ``error: <message>`` on stderr, exit code 2;
    - :class:`FloatingPointError` (the training loop's non-finite guard, a Langevin divergence) and
      the "found invalid values" ``ValueError`` of Pyro's / torch's validation: one line, exit code 3;
    - :class:`OSError` (disk full, permissions): one line, exit code 1; a full disk or quota (also
      behind a ``RuntimeError``, as ``torch.save`` reports it) names the file or folder being
      written and what to do;
    - :class:`KeyboardInterrupt`: one line saying how to continue, exit code 130;
    - SIGTERM (what Slurm and Kubernetes send before killing a job): stops like Ctrl-C (training
      finishes its update and writes the checkpoint, see :func:`pyro_lfbm.train.loop.fit_steps`;
      elsewhere the run stops at once), one line saying how to continue, exit code 143. A SIGTERM
      set to be ignored stays ignored;
    - claims (:func:`claim`): released when ``main`` returns or fails;
    - started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment): with ``data_parallel`` the
      script runs inside :func:`pyro_lfbm.train.distributed.process_group` (training and scoring
      data-parallel; the script lets rank 0 alone write and print results), without it the script
      refuses (one line, exit code 2). A process group that cannot be joined, or that fails because
      another process died or hung (:class:`~pyro_lfbm.train.distributed.DistributedError`): one
      line, exit code 4. Processes of rank > 0 stay silent on the errors every process meets alike
      (usage, data, checkpoint, Ctrl-C); their other errors start with ``error: process <r> of <n>``.

    On any failure the empty folders this run created are removed again. Other exceptions (bugs)
    keep their traceback.
    """
    global _CLAIMS
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    # torch.compile imports cpp_extension, which warns "No CUDA runtime is found" wherever an nvcc is on the
    # PATH of a machine without a GPU: noise for a CPU run, and a second line on every one-line error.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if not allocator.system_malloc_requested():
        allocator.retain_freed_memory()
    _CREATED.clear()
    _CLAIMS = {}
    code, message, world = 0, None, None
    how = ("re-run the same command with --resume to continue exactly where it stopped" if hasattr(args, "resume")
           else "re-run the same command to continue (trained and half-trained models are picked up from their checkpoints)")
    previous_sigterm = None
    try:
        previous_sigterm = _stop_on_sigterm()
        world = distributed.launch_environment()
        if world is not None and world.size > 1 and not data_parallel:
            raise UsageError(f"{Path(sys.argv[0]).name} runs in one process only, but was started as process {world.rank} "
                             f"of {world.size}; start it with python, not torchrun (data-parallel: anomaly.py, inpainting.py, synthesis.py)")
        with distributed.process_group(_group_device(args)):
            main(args)
    except distributed.DistributedError as err:
        code, message = 4, f"error: {_first_line(err)}"
    except (UsageError, DataError, CheckpointError) as err:
        code, message = 2, f"error: {_first_line(err)}"
    except FloatingPointError as err:
        code, message = 3, f"error: {_first_line(err)}"
    except ValueError as err:
        if "found invalid values" not in str(err):
            _CREATED.clear()
            raise
        code, message = 3, ("error: NaN or infinity reached Pyro's argument validation "
                            f"({_first_line(err)[:160]}); lower the learning rate or the Langevin step size")
    except OSError as err:
        code, message = 1, _os_error_line(err, how)
    except RuntimeError as err:
        cause = os_error_in(err)  # torch.save: "RuntimeError: [enforce fail at inline_container.cc]" after the OSError
        if cause is None or cause.errno not in _DISK_FULL:
            _CREATED.clear()
            raise
        code, message = 1, _os_error_line(cause, how)
    except Terminated:
        code, message = 143, f"terminated (SIGTERM): training in progress wrote its checkpoint at the last finished update; {how}"
    except KeyboardInterrupt:
        code, message = 130, f"\ninterrupted: training in progress wrote its checkpoint at the last finished update; {how}"
    except BaseException:
        _CREATED.clear()
        raise
    else:
        _CREATED.clear()
        return
    finally:
        _release_claims()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    remove_created_dirs()
    if world is not None and world.size > 1 and world.rank > 0:
        if code in (2, 130, 143):  # every process meets these alike: rank 0 says it once
            raise SystemExit(code)
        if message.startswith("error: ") and not message.startswith("error: process "):
            message = f"error: process {world.rank} of {world.size}: {message[len('error: '):]}"
    print(message, file=sys.stderr)
    raise SystemExit(code)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _os_error_line(err: OSError, how: str) -> str:
    """The one line of a failing file system; a full disk or quota names what was being written and what to do."""
    if err.errno in _DISK_FULL:
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        where = f" while writing {err.filename}" if err.filename else ""
        return (f"error: {what}{where}; nothing half-written was kept: free space there or point --out / "
                f"--checkpoint-dir at another disk, then {how}")
    return f"error: {err}"


def _raise_terminated(signum, frame):
    raise Terminated()


def _stop_on_sigterm():
    """Make SIGTERM raise :class:`~pyro_lfbm.train.loop.Terminated` (a ``KeyboardInterrupt``) instead
    of killing the process; the handler it replaced, or None when it left SIGTERM alone (ignored,
    set by the caller, or not the main thread)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _group_device(args: argparse.Namespace) -> torch.device:
    """The device whose backend the process group uses (gloo for CPU, nccl for CUDA)."""
    name = getattr(args, "device", "cpu") or "cpu"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def cpu_model() -> str:
    """The processor's name as ``lscpu`` shows it, with its family and model numbers (Linux), e.g.
    ``"Intel(R) Xeon(R) Processor (family 6, model 167)"``; elsewhere :func:`platform.processor`."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def code_version() -> Optional[str]:
    """The git commit of the ``pyro_lfbm`` source that runs (``"<sha>-dirty"`` when tracked files differ from
    it), or None outside a git checkout (an installed wheel) or without git."""
    source = Path(__file__).resolve().parents[2]
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=True).stdout
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != source:  # the package inside another repository
            return None
        commit = git("rev-parse", "HEAD").strip()
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(extra: dict | None = None) -> dict:
    """The command, time, machine and versions, for writing beside results."""
    import pyro

    return {
        "command": command_line(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "cpu": cpu_model(),
        "processes": (distributed.current().size if distributed.current() is not None else 1),  # > 1 under torchrun
        "malloc_retained": allocator.freed_memory_retained(),  # glibc keeps freed memory (run_cli; see allocator)
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "code": code_version(),
        **(extra or {}),
    }


@contextlib.contextmanager
def staged_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files are moved into ``out_dir``.

    If the block raises, nothing is written to ``out_dir`` (no partial results), and folders
    created for it are removed again when the run fails. A full disk while writing into the
    staging folder is one :class:`OSError` naming ``out_dir`` (or the file in it), also when the
    writer reported it as a ``RuntimeError`` (``torch.save``).
    """
    out_dir = Path(out_dir)
    make_dirs(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        make_dirs(out_dir)
        for item in staging.iterdir():
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    except (OSError, RuntimeError) as err:
        cause = os_error_in(err)
        if cause is None or cause.errno not in _DISK_FULL:
            raise
        where = out_dir
        if cause.filename and Path(cause.filename).parent == staging:
            where = out_dir / Path(cause.filename).name
        elif cause.filename:
            where = cause.filename
        raise OSError(cause.errno, cause.strerror or str(cause), str(where)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_tensors(obj, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a Python file, so that a full disk is one :class:`OSError`
    naming ``path`` (torch's own file writer reports it as a ``RuntimeError`` without the cause)."""
    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as err:
        cause = os_error_in(err)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def read_result_file(path: str | os.PathLike[str], reader: Callable[[Path], object], what: str = "result file"):
    """``reader(path)``, with any failure to read or parse it as one :class:`ResultFileError` line
    naming the file and what to do."""
    path = Path(path)
    try:
        return reader(path)
    except Exception as err:  # pandas, json and torch raise many kinds for a damaged file
        raise ResultFileError(
            f"cannot read the earlier {what} {path} ({type(err).__name__}: {_first_line(err)[:120]}); "
            "move it aside or delete it (it is rebuilt from the runs), or choose another --out"
        ) from None
