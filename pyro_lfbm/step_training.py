"""The one epoch loop of the library: minibatches, checkpoints, resume, progress.

A *trainer* object (see :class:`StepTrainer`) does one update per batch; :func:`fit_steps` drives
it. SVI learning (:class:`pyro_lfbm.training.SVITrainer`, behind :func:`pyro_lfbm.training.fit`),
GLF and CoopFlow all run through this loop. Every epoch visits the data in an order fixed by
``seed`` and the epoch number and drops the last incomplete batch; an atomic checkpoint is written
after every epoch and on Ctrl-C, and ``resume=True`` continues from the exact batch where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol

import torch
from tqdm.auto import tqdm

from pyro_lfbm.checkpoint import CheckpointError, check_config_compatible, load_checkpoint, restore_rng_state, save_checkpoint


@dataclass
class History:
    """Per-epoch records: epoch, the epoch means of the trainer's metrics, seconds, examples per second."""

    epochs: List[Dict[str, float]] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(row["seconds"] for row in self.epochs)


class StepTrainer(Protocol):
    """What :func:`fit_steps` needs from a trainer.

    - ``step(x) -> dict[str, float]`` (or ``step(x, mask)`` when the loop is given masks): one
      update on a batch ``x`` (B, C, H, W); the dict holds the batch's metrics (averaged over the
      epoch in the history; a non-finite ``loss`` stops the run);
    - ``end_epoch()``: per-epoch work such as learning-rate decay;
    - ``state_dict()`` / ``load_state_dict(state)``: everything needed to resume (networks,
      optimizers, counters), as plain tensors and numbers.
    """

    def step(self, x: torch.Tensor, *rest: torch.Tensor) -> Dict[str, float]: ...

    def end_epoch(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def trainer_state(ckpt: dict) -> dict:
    """The trainer's state in a checkpoint written by :func:`fit_steps`.

    Checkpoints of ``pyro_lfbm.training.fit`` from before it ran on this loop kept the SVI state
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
    if x.dim() < 2 or x.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} training examples, got {tuple(x.shape)}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the data shape {tuple(x.shape)}")


def fit_steps(
    trainer: StepTrainer,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    mask: Optional[torch.Tensor] = None,
    seed: int = 0,
    device: Optional[torch.device] = None,
    checkpoint_path: Optional[str | Path] = None,
    resume: bool = False,
    config: Optional[dict] = None,
    config_keys: tuple = (),
    progress: bool = True,
    desc: str = "epoch",
    after_step: Optional[Callable[[int], None]] = None,
    after_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> History:
    """Run ``trainer.step`` over minibatches of ``x`` (N, C, H, W) for ``epochs`` epochs.

    :param mask: optional per-example masks, same shape as ``x``; each batch is then passed as
        ``trainer.step(x_batch, mask_batch)`` (every image keeps its own mask).
    :param device: where batches are moved (default: stay where ``x`` is).
    :param checkpoint_path: checkpoint file (written after each epoch and on Ctrl-C).
    :param resume: continue from ``checkpoint_path`` when it exists.
    :param config: saved with the checkpoint; on resume the entries named in ``config_keys``
        must match (one-line :class:`~pyro_lfbm.checkpoint.CheckpointError` otherwise).
    :param after_step: called with the global step index after every step.
    :param after_epoch: called with the epoch number (from 1) and its history row.
    :returns: a :class:`History` of all epochs, including those before a resume; each row has
        ``epoch``, the epoch mean of every metric ``step`` returned, ``seconds`` and ``examples_per_second``.
    :raises ValueError: fewer than ``batch_size`` examples, or a mask of another shape.
    :raises FloatingPointError: a step returned a non-finite ``loss`` metric.
    """
    check_training_data(x, batch_size, mask)
    history, start_epoch, start_batch = History(), 0, 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        ckpt = load_checkpoint(checkpoint_path)
        if config is not None:
            check_config_compatible(ckpt.get("config", {}), config, config_keys)
        try:
            trainer.load_state_dict(trainer_state(ckpt))
        except (RuntimeError, KeyError) as err:
            raise CheckpointError(
                "checkpoint does not fit this model (different architecture); use the same preset or a new --checkpoint-dir"
            ) from err
        restore_rng_state(ckpt)
        history = History(list(ckpt["history"]))
        start_epoch, start_batch = ckpt["epoch"], ckpt["batch"]

    num_batches = x.shape[0] // batch_size
    position = (start_epoch, start_batch)  # the next batch to run

    def save(position_):
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, trainer=trainer.state_dict(), epoch=position_[0], batch=position_[1],
                            history=history.epochs, config=config or {})

    def batch(index: torch.Tensor) -> tuple:
        parts = (x,) if mask is None else (x, mask)
        return tuple(part[index].to(device, non_blocking=True) if device is not None else part[index] for part in parts)

    try:
        for epoch in range(start_epoch, epochs):
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            sums: Dict[str, float] = {}
            count, started = 0, time.perf_counter()
            bar = tqdm(range(start_batch if epoch == start_epoch else 0, num_batches), desc=f"{desc} {epoch + 1}/{epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True)
            for batch_index in bar:
                metrics = trainer.step(*batch(order[batch_index * batch_size : (batch_index + 1) * batch_size]))
                if "loss" in metrics and not math.isfinite(metrics["loss"]):
                    raise FloatingPointError(
                        f"the loss became {metrics['loss']} at epoch {epoch + 1}, batch {batch_index}; "
                        "lower the learning rate or step size"
                    )
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
                position = (epoch, batch_index + 1)
                if after_step is not None:
                    after_step(epoch * num_batches + batch_index)
                bar.set_postfix({k: f"{v / count:.3g}" for k, v in list(sums.items())[:3]})
            seconds = time.perf_counter() - started
            row = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()}, "seconds": seconds,
                   "examples_per_second": count * batch_size / max(seconds, 1e-9)}
            history.epochs.append(row)
            trainer.end_epoch()
            start_batch = 0
            if after_epoch is not None:
                after_epoch(epoch + 1, row)
            position = (epoch + 1, 0)
            save(position)
    except KeyboardInterrupt:
        save(position)  # a batch cut off mid-step is run again on resume
        raise
    return history
