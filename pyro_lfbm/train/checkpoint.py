"""Training checkpoints: atomic writes, RNG state, config compatibility.

A checkpoint is one ``torch.save`` file holding a dict with whatever the caller
passes (model/optimizer state dicts, ``pyro.get_param_store().get_state()``,
``pyro.optim`` ``get_state()``, step counters, the config) plus two reserved
entries: ``"format_version"`` and ``"rng_state"`` (torch CPU, CUDA when
available, numpy, python :mod:`random`).

Typical use::

    save_checkpoint(path, model=net.state_dict(), optim=optim.get_state(),
                    param_store=pyro.get_param_store().get_state(), step=step, config=cfg)
    ckpt = load_checkpoint(path)
    check_config_compatible(ckpt["config"], cfg, ["latent_dim", "dataset"])
    restore_rng_state(ckpt)

A save that is killed (``kill -9``, power loss) leaves at most a hidden temporary file beside the
checkpoint (``.<name>.<random>.tmp``); :func:`remove_stale_temporaries` deletes those of dead
writers (a writer holds an ``flock`` on its temporary file while it writes), and the training loop
calls it when it starts. :func:`find_nonfinite` names the first NaN/inf tensor in a state, so that
callers can refuse to save a poisoned model.

Every record of the file (the pickled structure and each tensor's bytes) carries the CRC-32 checksum
of its contents in the zip container ``torch.save`` writes; :func:`load_checkpoint` verifies them all
before unpickling, so damaged tensor data is refused like a truncated file (``torch.load`` itself
does not look at them). A save that fails for lack of disk space (``torch.save`` reports it as a
``RuntimeError`` from its zip writer) is one :class:`OSError` naming the checkpoint
(:func:`os_error_in` finds the cause behind such errors).

Checkpoints are unpickled with ``weights_only=False`` (the Pyro param store
holds constraint objects), so only load files you wrote yourself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import random
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temporaries are then left for the user to delete
    fcntl = None

#: Version of the checkpoint layout; bumped on incompatible changes.
FORMAT_VERSION = 1

_RESERVED = ("format_version", "rng_state")
_MISSING = object()


class CheckpointError(RuntimeError):
    """Missing, corrupt or incompatible checkpoint; the message is one line meant for the user."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- RNG state


def get_rng_state() -> dict[str, Any]:
    """Snapshot of every random number generator a training run uses.

    :returns: ``{"torch": ByteTensor, "random": tuple, "numpy": dict, ["cuda": list[ByteTensor]]}``;
        the numpy state is stored as plain tensors/numbers (no numpy arrays).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(ckpt: Mapping[str, Any]) -> None:
    """Set the RNGs back to a saved snapshot.

    :param ckpt: a loaded checkpoint (uses its ``"rng_state"``) or a dict from
        :func:`get_rng_state`. CUDA states are restored only when CUDA is
        available, for as many devices as both sides have.
    """
    state = ckpt["rng_state"] if "rng_state" in ckpt else ckpt
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["random"])
    npst = state["numpy"]
    keys = npst["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, dev_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(dev_state.cpu(), device)


# --------------------------------------------------------------------------- save / load


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_prefix(path: pathlib.Path) -> str:
    return f".{path.name}."


def os_error_in(err: BaseException) -> OSError | None:
    """The :class:`OSError` behind ``err``: ``err`` itself, or the first one in its chain of causes
    (``raise ... from``) and contexts (an exception raised while handling another), e.g. the
    ``No space left on device`` behind ``torch.save``'s ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos``. None when there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def save_checkpoint(path: str | os.PathLike[str], /, **state: Any) -> pathlib.Path:
    """Write ``state`` plus RNG state and format version to ``path``, atomically.

    The dict is written to a temporary file ``.<name>.<random>.tmp`` in the same folder (held
    under an exclusive ``flock`` while it is written), flushed and fsync'ed, then moved over
    ``path`` with :func:`os.replace`; an interrupted save (exception, Ctrl-C) leaves any previous
    file at ``path`` untouched and removes the temporary file. A killed process cannot clean up:
    :func:`remove_stale_temporaries` removes what it left. Parent folders are created. The zip
    records are written with their CRC-32 checksums (:func:`load_checkpoint` verifies them).

    :param path: destination file.
    :param state: anything ``torch.save`` can pickle, e.g. ``model=net.state_dict()``,
        ``optim=pyro_optim.get_state()``, ``step=1200``, ``config=dict(...)``.
    :returns: the path written.
    :raises ValueError: if ``state`` uses a reserved key (``format_version``, ``rng_state``).
    :raises OSError: the file system failed (disk full, quota, permissions; also when ``torch.save``
        reports it as a ``RuntimeError``): one line with the errno, naming ``path``.
    """
    clash = [k for k in _RESERVED if k in state]
    if clash:
        raise ValueError(f"checkpoint keys {clash} are reserved; rename them")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # what killed saves of this file left
    payload = {"format_version": FORMAT_VERSION, "rng_state": get_rng_state(), **state}

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # tells remove_stale_temporaries that a live writer owns it
            with _checksums_on():
                torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        cause = os_error_in(err) if isinstance(err, (OSError, RuntimeError)) else None
        if cause is not None:  # one line naming the checkpoint, not torch's zip-writer traceback
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def _checksums_on() -> Iterator[None]:
    """``torch.save`` computes the records' CRC-32 checksums inside the block, whatever
    ``torch.serialization.set_crc32_options`` says elsewhere."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def _damaged_record(path: pathlib.Path) -> str | None:
    """Why the zip file ``path`` is damaged (a record whose CRC-32 does not match its bytes, or
    an unreadable container), or None when every record checks out or the file is not a zip
    (torch's legacy format, junk: :func:`torch.load` judges those)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        return _one_line(err)
    return None if bad is None else f"checksum mismatch in record {bad}"


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[pathlib.Path]:
    """Delete the temporary files that killed saves of checkpoint ``path`` left beside it.

    Only files named like :func:`save_checkpoint`'s temporaries for this very ``path``
    (``.<name>.*.tmp``) are considered, and only those that no live process holds locked, so a
    save in progress in another process is never disturbed.

    :returns: the files removed.
    """
    path = pathlib.Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f"{glob_escape(_temporary_prefix(path))}*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def glob_escape(text: str) -> str:
    """``text`` with glob metacharacters escaped (for names such as ``run[1].pt``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def find_nonfinite(state: Any, where: str = "") -> str | None:
    """The path of the first floating-point tensor or float in ``state`` holding NaN or infinity.

    :param state: nested dicts / lists / tuples of tensors and numbers (a state dict, a checkpoint).
    :returns: e.g. ``"trainer.model.generator.net.0.weight"``, or ``None`` when everything is finite.
    """
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else (where or "<tensor>")
        return None
    if isinstance(state, float):
        return None if math.isfinite(state) else (where or "<float>")
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = find_nonfinite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    :param path: checkpoint file.
    :param map_location: passed to :func:`torch.load` (RNG states are moved
        back to CPU by :func:`restore_rng_state`).
    :returns: the saved dict, including ``"format_version"`` and ``"rng_state"``.
    :raises CheckpointError: missing, unreadable/truncated, damaged (a record's checksum does not
        match), foreign or too-new file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint file at {path}; check --checkpoint-dir, or start a new run without resuming"
        )

    def unreadable(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is unreadable ({reason}); it may be truncated or corrupt: "
                               f"delete it or use another --checkpoint-dir")

    damage = _damaged_record(path)
    if damage is not None:
        raise unreadable(damage)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise unreadable(_one_line(err)) from err
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not a pyro-lfbm checkpoint (no format_version entry)")
    version = ckpt["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version={version!r} but this pyro-lfbm reads up to "
            f"{FORMAT_VERSION}; upgrade pyro-lfbm or start a new --checkpoint-dir"
        )
    return ckpt


# --------------------------------------------------------------------------- config check


def _normalise(value: Any) -> Any:
    """Make tuples and lists compare equal (configs round-trip through JSON/YAML)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where a training run keeps its checkpoint, and what a checkpoint must agree on to be continued.

    Passed as ``checkpoint=`` to :func:`~pyro_lfbm.train.loop.fit_steps`, :func:`~pyro_lfbm.train.svi.fit`,
    :func:`~pyro_lfbm.train.recipe.train_recipe` and :func:`~pyro_lfbm.tasks.anomaly.run_anomaly`, which
    hand it down as it is.

    :param path: the checkpoint file, written atomically after every epoch and on Ctrl-C or SIGTERM.
    :param bool resume: continue from ``path`` when it exists (from the exact batch where it stopped).
    :param config: saved with the checkpoint; on resume the entries named in ``keys`` must match
        (:func:`check_config_compatible`). None: nothing is checked.
    :param keys: the entries of ``config`` that must match.
    """

    path: pathlib.Path
    resume: bool = False
    config: Any = None
    keys: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "path", pathlib.Path(self.path))
        object.__setattr__(self, "keys", tuple(self.keys))


def check_config_compatible(
    saved_config: Mapping[str, Any], config: Mapping[str, Any], keys: Iterable[str]
) -> None:
    """Refuse to resume when a setting that shapes the model differs.

    :param saved_config: the config stored in the checkpoint.
    :param config: the config of the current run.
    :param keys: names that must agree (e.g. ``["dataset", "latent_dim"]``); a
        key absent from one side counts as a mismatch.
    :raises CheckpointError: naming the first mismatching key, e.g. "checkpoint
        was trained with latent_dim=20 but the current config has latent_dim=16; ..."
    """
    for key in keys:
        old = saved_config.get(key, _MISSING)
        new = config.get(key, _MISSING)
        if old is _MISSING and new is _MISSING:
            continue
        if old is _MISSING or new is _MISSING or _normalise(old) != _normalise(new):
            old_s = "<unset>" if old is _MISSING else repr(old) if isinstance(old, str) else old
            new_s = "<unset>" if new is _MISSING else repr(new) if isinstance(new, str) else new
            raise CheckpointError(
                f"checkpoint was trained with {key}={old_s} but the current config has {key}={new_s}; "
                f"pass the same --preset or start a new --checkpoint-dir"
            )
