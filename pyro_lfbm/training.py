"""Minibatch learning with ``pyro.infer.SVI``: epochs, learning-rate decay, checkpoints, resume.

With a :class:`~pyro_lfbm.infer.LangevinGuide` each step is LFBM's Algorithm 1; with an encoder
guide it is amortized variational learning (LFBM-VAE). The loop is interruption-safe: a checkpoint
is written atomically after every epoch and when the run is interrupted (Ctrl-C), and
``resume=True`` continues from the exact batch where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import pyro
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from pyro_lfbm.checkpoint import CheckpointError, check_config_compatible, load_checkpoint, restore_rng_state, save_checkpoint


@dataclass
class OptimConfig:
    """Adam with per-epoch exponential decay (paper: lr 4e-4, betas (0.5, 0.999), gamma 0.998).

    ``prior_lr``, when set, is the learning rate of the parameters under ``prior.`` (LEBM trains
    its energy network at 2e-5 and the generator at 1e-4).
    """

    lr: float = 4e-4
    betas: tuple = (0.5, 0.999)
    gamma: float = 0.998
    prior_lr: Optional[float] = None

    def args_for(self, param_name: str) -> dict:
        lr = self.prior_lr if self.prior_lr is not None and param_name.startswith("prior.") else self.lr
        return {"lr": lr, "betas": tuple(self.betas)}

    def build(self) -> pyro.optim.PyroLRScheduler:
        return pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": self.args_for, "gamma": self.gamma})


@dataclass
class History:
    """Per-epoch records: epoch, mean loss per example, seconds, examples per second."""

    epochs: List[Dict[str, float]] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(row["seconds"] for row in self.epochs)


def fit(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    mask: Optional[torch.Tensor] = None,
    optim: Optional[OptimConfig] = None,
    seed: int = 0,
    checkpoint_path: Optional[str | Path] = None,
    resume: bool = False,
    config: Optional[dict] = None,
    config_keys: tuple = (),
    loss: Optional[pyro.infer.ELBO] = None,
    progress: bool = True,
    after_step: Optional[Callable[[int], None]] = None,
    after_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> History:
    """Train ``model`` (a ``PyroModule``) with ``SVI(model, guide, Adam, Trace_ELBO)`` for ``epochs`` epochs.

    :param x: training images (N, C, H, W); each epoch visits them in a fresh order fixed by
        ``seed`` and the epoch number (so a resumed run sees the same batches), dropping the last
        incomplete batch as the paper does.
    :param mask: optional per-pixel masks (N, C, H, W) passed to ``model(x, mask)`` (learning from
        incomplete images); each image keeps its own mask.
    :param checkpoint_path: where to write the checkpoint (after each epoch and on Ctrl-C).
    :param resume: continue from ``checkpoint_path`` if it exists.
    :param config: a dict saved with the checkpoint; on resume the entries in ``config_keys``
        must match (a one-line :class:`~pyro_lfbm.checkpoint.CheckpointError` otherwise).
    :param after_step: called with the global step after each SVI step (e.g. ``flow.clear_cache``).
    :returns: the :class:`History` of all epochs, including those before a resume.
    """
    if x.dim() < 2 or x.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} training examples, got {tuple(x.shape)}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the data shape {tuple(x.shape)}")
    optim = optim or OptimConfig()
    scheduler = optim.build()
    svi = SVI(model, guide, scheduler, loss or Trace_ELBO())
    history, start_epoch, start_batch = History(), 0, 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

    device = _device_of(model, x)
    probe = x[:batch_size].to(device)
    check_param_store(model, *((probe,) if mask is None else (probe, mask[:batch_size].to(device))))

    if resume and checkpoint_path is not None and checkpoint_path.exists():
        ckpt = load_checkpoint(checkpoint_path)
        if config is not None:
            check_config_compatible(ckpt.get("config", {}), config, config_keys)
        _load_training_state(model, guide, scheduler, ckpt)
        history = History(list(ckpt["history"]))
        start_epoch, start_batch = ckpt["epoch"], ckpt["batch"]

    num_batches = x.shape[0] // batch_size
    position = (start_epoch, start_batch)  # the next batch to run

    def save(position_):
        epoch_, batch_ = position_
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                model=model.state_dict(),
                guide=guide.state_dict() if isinstance(guide, torch.nn.Module) else None,
                optim=scheduler.get_state(),
                epoch=epoch_,
                batch=batch_,
                history=history.epochs,
                config=config or {},
            )

    try:
        for epoch in range(start_epoch, epochs):
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            running, count, started = 0.0, 0, time.perf_counter()
            bar = tqdm(
                range(start_batch if epoch == start_epoch else 0, num_batches),
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            for batch_index in bar:
                idx = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                xb = x[idx].to(device, non_blocking=True)
                args = (xb,) if mask is None else (xb, mask[idx].to(device, non_blocking=True))
                value = svi.step(*args) / batch_size
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the loss became {value} at epoch {epoch + 1}, batch {batch_index}; lower the learning rate or step size"
                    )
                running, count = running + value, count + 1
                position = (epoch, batch_index + 1)
                if after_step is not None:
                    after_step(epoch * num_batches + batch_index)
                bar.set_postfix(loss=f"{running / count:.1f}")
            seconds = time.perf_counter() - started
            row = {
                "epoch": epoch + 1,
                "loss": running / max(count, 1),
                "seconds": seconds,
                "examples_per_second": count * batch_size / max(seconds, 1e-9),
                "lr": _current_lr(scheduler, optim.lr),
            }
            history.epochs.append(row)
            scheduler.step()
            start_batch = 0
            if after_epoch is not None:
                after_epoch(epoch + 1, row)
            position = (epoch + 1, 0)
            save(position)
    except KeyboardInterrupt:
        save(position)  # a batch cut off mid-step is run again on resume
        raise
    return history


def _load_training_state(model, guide, scheduler, ckpt) -> None:
    try:
        model.load_state_dict(ckpt["model"])
        if isinstance(guide, torch.nn.Module) and ckpt.get("guide") is not None:
            guide.load_state_dict(ckpt["guide"])
    except RuntimeError as err:
        raise CheckpointError(
            "checkpoint does not fit this model (different architecture); use the same preset or a new --checkpoint-dir"
        ) from err
    # The modules now hold the restored tensors; Pyro re-registers them by name on the next
    # step, and the optimizer state (keyed by those names) is consumed then.
    pyro.clear_param_store()
    scheduler.set_state(ckpt["optim"])
    restore_rng_state(ckpt)


def check_param_store(model, *args, **kwargs) -> None:
    """Raise if Pyro's param store maps this model's parameter names to other tensors.

    Pyro keeps parameters in a global store keyed by name; a second model built in the same
    process registers under the same names and ``SVI`` would silently optimise the first
    model's tensors. Call ``pyro.clear_param_store()`` before training a new model.
    """
    if not isinstance(model, torch.nn.Module):
        return
    own = {id(p) for p in model.parameters()}
    was_training = model.training
    model.eval()  # no BatchNorm statistics updates; fork_rng: no random numbers consumed
    try:
        with torch.no_grad(), torch.random.fork_rng(), pyro.poutine.block():
            trace = pyro.poutine.trace(model, param_only=True).get_trace(*args, **kwargs)
    finally:
        model.train(was_training)
    for name, site in trace.nodes.items():
        if site["type"] == "param" and id(site["value"].unconstrained()) not in own:
            raise RuntimeError(
                f"Pyro's param store holds another tensor under '{name}' (a previous model?); "
                "call pyro.clear_param_store() before training a new model"
            )


def _current_lr(scheduler, default: float) -> float:
    for optimizer in scheduler.optim_objs.values():
        return optimizer.optimizer.param_groups[0]["lr"]
    return default


def _device_of(model, x: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return x.device
