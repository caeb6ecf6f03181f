"""The one epoch loop of the library: minibatches, checkpoints, resume, progress, and its guards.

A *trainer* object (see :class:`StepTrainer`) does one update per batch; :func:`fit_steps` drives
it. SVI learning (:class:`pyro_lfbm.train.svi.SVITrainer`, behind :func:`pyro_lfbm.train.svi.fit`),
GLF and CoopFlow all run through this loop. Every epoch visits the data in an order fixed by
``seed`` and the epoch number and drops the last incomplete batch; an atomic checkpoint is written
after every epoch and on Ctrl-C, and ``resume=True`` continues from the exact batch where it stopped.

What the loop guarantees:

* **No poisoned model is kept or saved.** The trainer's state (and the RNG state) is copied before
  every update; after it, the loss and every parameter and buffer of the trainer's modules are
  checked (one summed reduction per tensor, a few microseconds). A non-finite value, a
  :class:`FloatingPointError` raised by the trainer, or the "found invalid values" ``ValueError``
  of Pyro's / torch's argument validation all count as a *non-finite update*: the copy is put back,
  nothing is written, and a one-line :class:`FloatingPointError` names the epoch and batch. With
  ``skip_nonfinite=True`` the update is dropped instead and training goes on (the count per epoch is
  the history's ``nonfinite_skipped`` column; :data:`MAX_SKIPS_IN_A_ROW` in a row still stop it).
  The state written to a checkpoint is checked once more (:func:`~pyro_lfbm.train.checkpoint.find_nonfinite`).
* **Ctrl-C and SIGTERM resume exactly.** While the loop runs, SIGINT and SIGTERM (what Slurm and
  Kubernetes send before they kill a job) only set a flag: the current update finishes, the
  checkpoint is written at the next batch boundary, then :class:`KeyboardInterrupt` is raised
  (:class:`Terminated`, a subclass, after SIGTERM). A second signal interrupts at once; a half-done
  update is then discarded (the copy taken before it, and its RNG state, are what gets saved).
  Resuming gives bit-identical parameters to an uninterrupted run, and the interrupted epoch's
  history row is the same too.
* **Data-parallel runs** (a process group of several processes, :mod:`pyro_lfbm.train.distributed`):
  the trainer must be data-parallel (:class:`~pyro_lfbm.train.distributed.DataParallelSVI`, which
  :func:`~pyro_lfbm.train.svi.fit` uses there) and gets the whole global batch; every process
  starts from rank 0's state, rank 0 alone writes checkpoints and shows progress, the processes
  agree after every batch on whether to stop (Ctrl-C, which ``torchrun`` passes on as SIGTERM), and a
  non-finite event raised on one process ends the run (it cannot be skipped there alone).
  ``after_step`` and ``after_epoch`` run on every process.
* **Killed saves leave nothing behind.** Temporary files of saves killed with ``kill -9`` are
  removed when the loop starts (:func:`~pyro_lfbm.train.checkpoint.remove_stale_temporaries`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol

import torch
from tqdm.auto import tqdm

from pyro_lfbm.train import distributed
from pyro_lfbm.train.checkpoint import (
    CheckpointError,
    Checkpointing,
    check_config_compatible,
    find_nonfinite,
    get_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)

__all__ = ["History", "MAX_SKIPS_IN_A_ROW", "StepTrainer", "Terminated", "check_training_data", "fit_steps",
           "trainer_state"]

#: With ``skip_nonfinite=True``, this many non-finite updates in a row still stop training.
MAX_SKIPS_IN_A_ROW = 10


@dataclass
class History:
    """Per-epoch records: epoch, the epoch means of the trainer's metrics, seconds, examples per second
    (and ``nonfinite_skipped`` when non-finite updates are skipped)."""

    epochs: List[Dict[str, float]] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(row["seconds"] for row in self.epochs)

    @property
    def nonfinite_skipped(self) -> int:
        """Updates dropped as non-finite over all epochs (0 unless ``skip_nonfinite`` was on)."""
        return int(sum(row.get("nonfinite_skipped", 0) for row in self.epochs))


class StepTrainer(Protocol):
    """What :func:`fit_steps` needs from a trainer.

    - ``step(x) -> dict[str, float]`` (or ``step(x, mask)`` when the loop is given masks): one
      update on a batch ``x`` (B, C, H, W); the dict holds the batch's metrics (averaged over the
      epoch in the history; a non-finite ``loss`` counts as a non-finite update);
    - ``end_epoch()``: per-epoch work such as learning-rate decay;
    - ``state_dict()`` / ``load_state_dict(state)``: everything needed to resume (networks,
      optimizers, counters), as plain tensors and numbers; ``load_state_dict`` must also work in the
      middle of a run (the loop uses it to undo a non-finite update).

    The loop checks the parameters and buffers of ``trainer.model`` and ``trainer.guide`` (where
    these are ``nn.Module``\\ s) after every update; a trainer may instead define
    ``watched_modules() -> list[nn.Module]``.
    """

    def step(self, x: torch.Tensor, *rest: torch.Tensor) -> Dict[str, float]: ...

    def end_epoch(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def trainer_state(ckpt: dict) -> dict:
    """The trainer's state in a checkpoint written by :func:`fit_steps`.

    Checkpoints of ``pyro_lfbm.train.svi.fit`` from before it ran on this loop kept the SVI state
    (``model``, ``guide``, ``optim``) at the top level; they are read too.
    """
    if "trainer" in ckpt:
        return ckpt["trainer"]
    if "model" in ckpt:
        return {key: ckpt.get(key) for key in ("model", "guide", "optim")}
    raise CheckpointError("checkpoint holds no trainer state; was it written by pyro_lfbm?")


def check_training_data(x: torch.Tensor, batch_size: int, mask: Optional[torch.Tensor] = None) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` (N, ...) holds at least one batch and ``mask``
    (if any) has the shape of ``x``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if x.dim() < 2 or x.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} training examples, got {tuple(x.shape)}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the data shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- guards


def _watched_tensors(trainer) -> List[tuple]:
    """(name, tensor) of every floating parameter and buffer the trainer trains."""
    if hasattr(trainer, "watched_modules"):
        modules = [(f"module{i}.", m) for i, m in enumerate(trainer.watched_modules())]
    else:
        modules = [(f"{attr}.", getattr(trainer, attr)) for attr in ("model", "guide")
                   if isinstance(getattr(trainer, attr, None), torch.nn.Module)]
    seen, out = set(), []
    for prefix, module in modules:
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                out.append((prefix + name, tensor))
    return out


def _first_nonfinite(named: List[tuple]) -> Optional[str]:
    """Name of the first tensor holding NaN/inf: one float64 sum per tensor, one device sync."""
    if not named:
        return None
    with torch.no_grad():
        sums = torch.stack([torch.sum(t.detach(), dtype=torch.float64).to(named[0][1].device) for _, t in named])
        bad = ~torch.isfinite(sums)
        if not bool(bad.any()):
            return None
        return named[int(bad.nonzero()[0, 0])][0]


def _nonfinite_reason(err: BaseException) -> Optional[str]:
    """Why ``err`` is a non-finite event (None if it is some other error)."""
    if isinstance(err, FloatingPointError):
        return str(err).strip().splitlines()[0] if str(err).strip() else "FloatingPointError"
    if isinstance(err, ValueError) and "found invalid values" in str(err):
        line = next((ln.strip() for ln in str(err).splitlines() if "found invalid values" in ln), "")
        line = line.replace(", but found invalid values:", "").rstrip(":")
        if len(line) > 160:
            line = line[:157] + "..."
        return f"NaN or infinity reached argument validation ({line})"
    return None


_IMMUTABLE = (int, float, bool, str, bytes, complex, type(None))


def _clone_state(obj):
    """A deep copy of a state dict: tensors cloned, containers rebuilt (``copy.deepcopy`` costs
    about 40 times as much on the states trained here)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, _IMMUTABLE):
        return obj
    if type(obj) in (dict, OrderedDict):
        out = type(obj)((key, _clone_state(value)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):  # module state dicts carry version numbers for load_state_dict
            out._metadata = copy.deepcopy(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_clone_state(value) for value in obj)
    return copy.deepcopy(obj)


class _Snapshot:
    """A copy of the trainer's state and of every RNG, taken before an update."""

    def __init__(self, trainer):
        self.state = _clone_state(trainer.state_dict())
        self.rng = get_rng_state()

    def restore(self, trainer) -> None:
        trainer.load_state_dict(_clone_state(self.state))
        restore_rng_state(self.rng)


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM (a scheduler's "stop now"), not by Ctrl-C; everything said of
    :class:`KeyboardInterrupt` holds (the checkpoint is written first when training)."""


class _DeferredInterrupt:
    """While active (main thread only), the first SIGINT or SIGTERM only sets :attr:`requested`; a
    second one raises at once. :meth:`exception` is what to raise: :class:`Terminated` after SIGTERM,
    :class:`KeyboardInterrupt` after SIGINT, or after either with ``sigterm_is_ctrl_c``
    (data-parallel runs: ``torchrun`` passes Ctrl-C on to its workers as SIGTERM). ``announce``:
    print the one-line notice (rank 0 only). A signal set to be ignored (SIGINT under ``nohup`` or
    ``&``) stays ignored."""

    def __init__(self, saving: bool, sigterm_is_ctrl_c: bool = False, announce: bool = True):
        self.requested = False
        self.saving = saving
        self.announce = announce
        self.sigterm_is_ctrl_c = sigterm_is_ctrl_c
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(signum)
                # leave SIG_IGN / SIG_DFL of SIGINT alone; SIGTERM's default (die) is replaced
                if callable(current) or (signum == signal.SIGTERM and current == signal.SIG_DFL):
                    self._previous[signum] = current
                    signal.signal(signum, self._handle)
        return self

    def exception(self) -> KeyboardInterrupt:
        if self.signum == signal.SIGTERM and not self.sigterm_is_ctrl_c:
            return Terminated()
        return KeyboardInterrupt()

    def _handle(self, signum, frame):
        if self.requested:
            raise self.exception()
        self.requested = True
        self.signum = signum
        if self.announce:
            then = "then saving a checkpoint" if self.saving else "then stopping"
            if isinstance(self.exception(), Terminated):
                print(f"SIGTERM: finishing the current update, {then} (a second SIGTERM stops at once)",
                      file=sys.stderr, flush=True)
            else:
                print(f"\nCtrl-C: finishing the current update, {then} (Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False


# --------------------------------------------------------------------------- the loop


@dataclass
class _Start:
    """Where a run starts: the history so far, the next (epoch, batch), and the interrupted epoch's
    partial tally (``partial``: sums, count, seconds, skipped; empty at an epoch boundary)."""

    history: History
    epoch: int = 0
    batch: int = 0
    partial: dict = field(default_factory=dict)
    from_checkpoint: bool = False


def _resume(trainer, checkpoint: Checkpointing, epochs: int) -> _Start:
    """Load ``checkpoint.path`` into ``trainer`` (and every RNG); where the run goes on from."""
    checkpoint_path = checkpoint.path
    ckpt = load_checkpoint(checkpoint_path)
    if checkpoint.config is not None:
        check_config_compatible(ckpt.get("config", {}), checkpoint.config, checkpoint.keys)
    if ckpt.get("epoch", 0) > epochs:
        raise CheckpointError(
            f"checkpoint {checkpoint_path} has finished {ckpt['epoch']} epochs, more than the {epochs} asked for; "
            f"ask for at least {ckpt['epoch']} epochs or use another checkpoint folder"
        )
    try:
        trainer.load_state_dict(trainer_state(ckpt))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            "checkpoint does not fit this model (different architecture); use the same preset or a new --checkpoint-dir"
        ) from err
    restore_rng_state(ckpt)
    return _Start(History(list(ckpt["history"])), ckpt["epoch"], ckpt["batch"], dict(ckpt.get("partial") or {}), True)


class _Tally:
    """One epoch's running sums of the trainer's metrics, its counted and skipped updates and its
    seconds (``earlier``: those spent before an interruption, for a resumed epoch)."""

    def __init__(self, partial: Optional[dict] = None):
        partial = partial or {}
        self.sums: Dict[str, float] = dict(partial.get("sums", {}))
        self.count = int(partial.get("count", 0))
        self.skipped = int(partial.get("skipped", 0))
        self.earlier = float(partial.get("seconds", 0.0))
        self.started = time.perf_counter()

    def add(self, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.started

    def partial(self) -> dict:
        """What a mid-epoch checkpoint keeps of the tally."""
        return {"sums": dict(self.sums), "count": self.count, "seconds": self.seconds(), "skipped": self.skipped}

    def means(self, limit: Optional[int] = None) -> Dict[str, float]:
        return {key: value / max(self.count, 1) for key, value in list(self.sums.items())[:limit]}

    def row(self, epoch: int, batch_size: int, with_skipped: bool) -> Dict[str, float]:
        """The epoch's history row (``epoch`` from 1)."""
        seconds = self.seconds()
        row = {"epoch": epoch, **self.means(), "seconds": seconds,
               "examples_per_second": self.count * batch_size / max(seconds, 1e-9)}
        if with_skipped:
            row["nonfinite_skipped"] = self.skipped
        return row


class _Checkpoints:
    """Writes the run's checkpoint at a position (epoch, next batch), once per position; only the
    main process writes; a state holding NaN or infinity is refused."""

    def __init__(self, checkpoint: Optional[Checkpointing], trainer, history: History, main: bool,
                 saved_position: Optional[tuple]):
        self.checkpoint, self.trainer, self.history, self.main = checkpoint, trainer, history, main
        self.saved_position = saved_position

    def save(self, position: tuple, tally: Optional[_Tally] = None, state: Optional[dict] = None) -> None:
        """``state``: the trainer's state to write (default: its current one); ``tally``: the epoch's
        so far, kept for a mid-epoch position."""
        if self.checkpoint is None or position == self.saved_position:
            return
        if self.main:
            state = self.trainer.state_dict() if state is None else state
            bad = find_nonfinite(state)
            if bad is not None:  # the per-update guard makes this unreachable; never write a poisoned model
                raise FloatingPointError(f"refusing to save a checkpoint: {bad} holds NaN or infinity")
            mid = (tally or _Tally()).partial() if position[1] else None
            save_checkpoint(self.checkpoint.path, trainer=state, epoch=position[0], batch=position[1],
                            history=self.history.epochs, config=self.checkpoint.config or {}, partial=mid)
        self.saved_position = position


def _guarded_step(trainer, batch: tuple, watched: List[tuple]) -> tuple:
    """One update; returns ``(metrics, reason)``, ``reason`` naming what became non-finite (None if nothing)."""
    metrics = trainer.step(*batch)
    loss = metrics.get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        return metrics, f"the loss became {float(loss)}"
    bad = _first_nonfinite(watched)
    if bad is not None:
        return metrics, f"{bad} became NaN or infinite (the loss was {loss})"
    return metrics, None


def _diverged(epoch: int, batch_index: int, num_batches: int, reason: str) -> FloatingPointError:
    """The one-line error of a non-finite update that stops training."""
    return FloatingPointError(
        f"training diverged at epoch {epoch + 1}, batch {batch_index + 1} of {num_batches} "
        f"(step {epoch * num_batches + batch_index + 1}): {reason}; that update was undone and nothing "
        "from it was saved; lower the learning rate or the Langevin step size, or skip such updates "
        "(skip_nonfinite=True, --skip-nonfinite)"
    )


def fit_steps(
    trainer: StepTrainer,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    mask: Optional[torch.Tensor] = None,
    seed: int = 0,
    device: Optional[torch.device] = None,
    checkpoint: Optional[Checkpointing] = None,
    progress: bool = True,
    desc: str = "epoch",
    after_step: Optional[Callable[[int], None]] = None,
    after_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
    skip_nonfinite: bool = False,
) -> History:
    """Run ``trainer.step`` over minibatches of ``x`` (N, C, H, W) for ``epochs`` epochs.

    :param epochs: total number of epochs, at least 1 (a resumed run counts those already done).
    :param mask: optional per-example masks, same shape as ``x``; each batch is then passed as
        ``trainer.step(x_batch, mask_batch)`` (every image keeps its own mask).
    :param device: where batches are moved (default: stay where ``x`` is).
    :param checkpoint: where the checkpoint is written (after each epoch and on Ctrl-C or SIGTERM), whether
        an existing one is continued (callers that must not start over silently check for the file first),
        and the config saved with it and checked on resume (one-line
        :class:`~pyro_lfbm.train.checkpoint.CheckpointError` on a mismatch); None: no checkpoint.
    :param after_step: called with the global step index after every step.
    :param after_epoch: called with the epoch number (from 1) and its history row.
    :param skip_nonfinite: drop non-finite updates (counted in the history) instead of stopping.
    :returns: a :class:`History` of all epochs, including those before a resume; each row has
        ``epoch``, the epoch mean of every metric ``step`` returned, ``seconds`` and
        ``examples_per_second`` (and ``nonfinite_skipped`` with ``skip_nonfinite``).
    :raises ValueError: ``epochs`` < 1, fewer than ``batch_size`` examples, or a mask of another shape.
    :raises CheckpointError: the checkpoint does not fit, or has more epochs than ``epochs``.
    :raises FloatingPointError: a non-finite update (the trainer is left in its state before it).
    :raises KeyboardInterrupt: after Ctrl-C, once the checkpoint is written (:class:`Terminated`
        after SIGTERM).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    check_training_data(x, batch_size, mask)
    world = distributed.current()  # None in a plain (one-process) run
    if world is not None and not getattr(trainer, "data_parallel", False):
        raise ValueError(
            f"{type(trainer).__name__} trains in one process only, but this is process {world.rank} of {world.size}; "
            "start it with python, not torchrun (data-parallel training covers pyro_lfbm.train.fit)"
        )
    main = world is None or world.is_main
    checkpoint_path = checkpoint.path if checkpoint is not None else None
    if checkpoint_path is not None and main:  # rank 0 alone writes (and cleans up) checkpoints
        remove_stale_temporaries(checkpoint_path)
    resuming = checkpoint is not None and checkpoint.resume and checkpoint_path.exists()
    start = _resume(trainer, checkpoint, epochs) if resuming else _Start(History())
    if world is not None:  # every process starts from rank 0's state (fresh or resumed) and generators
        epochs_done, start.epoch, start.batch, start.partial = distributed.synchronize_start(
            trainer, (start.history.epochs, start.epoch, start.batch, start.partial))
        start.history = History(list(epochs_done))
    history = start.history
    num_batches = x.shape[0] // batch_size
    watched = _watched_tensors(trainer)
    checkpoints = _Checkpoints(checkpoint, trainer, history, main, (start.epoch, start.batch) if start.from_checkpoint else None)

    def batch(index: torch.Tensor) -> tuple:
        parts = (x,) if mask is None else (x, mask)
        return tuple(part[index].to(device, non_blocking=True) if device is not None else part[index] for part in parts)

    with _DeferredInterrupt(saving=checkpoint_path is not None, sigterm_is_ctrl_c=world is not None, announce=main) as interrupt, \
            warnings.catch_warnings():
        # Pyro warns "Encountered NaN: loss" before the guard reports the same thing in one line
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        in_a_row = 0  # non-finite updates in a row, across epochs
        for epoch in range(start.epoch, epochs):
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            first = start.batch if epoch == start.epoch else 0
            tally = _Tally(start.partial if first > 0 else None)
            position = (epoch, first)  # the next batch to run
            bar = tqdm(range(first, num_batches), desc=f"{desc} {epoch + 1}/{epochs}", disable=not (progress and main),
                       leave=False, dynamic_ncols=True)
            try:
                for batch_index in bar:
                    snapshot = _Snapshot(trainer)
                    try:
                        index = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                        if hasattr(trainer, "set_positions"):  # dataset positions, for persistent chains
                            trainer.set_positions(index)
                        metrics, reason = _guarded_step(trainer, batch(index), watched)
                    except KeyboardInterrupt:  # a second Ctrl-C inside the update: discard the half-done update
                        snapshot.restore(trainer)
                        interrupted_at, position = position, None  # saved here, not again below
                        checkpoints.save(interrupted_at, tally, snapshot.state)
                        raise
                    except (FloatingPointError, ValueError) as err:
                        reason = _nonfinite_reason(err)
                        if reason is None:
                            raise
                        if world is not None:  # raised on this process only: the others cannot skip it with us
                            snapshot.restore(trainer)
                            raise _diverged(epoch, batch_index, num_batches,
                                            f"{reason} (process {world.rank} of {world.size})") from None
                    if reason is not None:
                        snapshot.restore(trainer)
                        if not skip_nonfinite:
                            raise _diverged(epoch, batch_index, num_batches, reason) from None
                        tally.skipped += 1
                        in_a_row += 1
                        if in_a_row >= MAX_SKIPS_IN_A_ROW:
                            raise _diverged(epoch, batch_index, num_batches, f"{in_a_row} updates in a row were "
                                            f"non-finite, the last because {reason}") from None
                    else:
                        in_a_row = 0
                        tally.add(metrics)
                    position = (epoch, batch_index + 1)
                    if after_step is not None:
                        after_step(epoch * num_batches + batch_index)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in tally.means(limit=3).items()})
                    if world is not None:  # the processes stop at the same batch
                        interrupt.requested = distributed.any_process(interrupt.requested)
                    if interrupt.requested:
                        break
            except KeyboardInterrupt:  # raised between updates (e.g. by a callback): the state is consistent
                if position is not None:
                    checkpoints.save(position, tally)
                raise
            finally:
                bar.close()
            if interrupt.requested:
                checkpoints.save(position, tally)
                raise interrupt.exception()
            row = tally.row(epoch + 1, batch_size, with_skipped=skip_nonfinite)
            # The end of an epoch is one unit: a hard interrupt here keeps the previous checkpoint.
            history.epochs.append(row)
            trainer.end_epoch()
            if after_epoch is not None:
                after_epoch(epoch + 1, row)
            checkpoints.save((epoch + 1, 0))
            if world is not None:
                interrupt.requested = distributed.any_process(interrupt.requested)
            if interrupt.requested:
                raise interrupt.exception()
    return history
