"""Minibatch learning with ``pyro.infer.SVI``: epochs, learning-rate decay, checkpoints, resume.

With a :class:`~pyro_lfbm.infer.LangevinGuide` each step is LFBM's Algorithm 1; with an encoder
guide it is amortized variational learning (LFBM-VAE). :class:`SVITrainer` is one SVI step per
batch and :func:`fit` runs it through the library's one epoch loop,
:func:`~pyro_lfbm.train.loop.fit_steps`: a checkpoint is written atomically after every epoch
and on Ctrl-C, and ``resume=True`` continues from the exact batch where it stopped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import pyro
from pyro.infer import SVI, Trace_ELBO

from pyro_lfbm.infer.modes import eval_mode
from pyro_lfbm.train import distributed
from pyro_lfbm.train.averaging import ExponentialAverage
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import History, check_training_data, fit_steps


@dataclass
class OptimConfig:
    """Adam with per-epoch exponential decay (paper: lr 4e-4, betas (0.5, 0.999), gamma 0.998).

    ``prior_lr``, when set, is the learning rate of the parameters under ``prior.`` (LEBM trains
    its energy network at 2e-5 and the generator at 1e-4). ``ema_decay``, when set, keeps an
    exponential moving average of the weights beside them (:class:`~pyro_lfbm.train.averaging.ExponentialAverage`;
    Polyak averaging), which :func:`~pyro_lfbm.train.recipe.train_recipe` puts into the model at the end.
    """

    lr: float = 4e-4
    betas: tuple = (0.5, 0.999)
    gamma: float = 0.998
    prior_lr: Optional[float] = None
    ema_decay: Optional[float] = None

    def args_for(self, param_name: str) -> dict:
        lr = self.prior_lr if self.prior_lr is not None and param_name.startswith("prior.") else self.lr
        return {"lr": lr, "betas": tuple(self.betas)}

    def build(self) -> pyro.optim.PyroLRScheduler:
        return pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": self.args_for, "gamma": self.gamma})


class SVITrainer:
    """One ``SVI(model, guide, Adam, Trace_ELBO)`` step per batch: the trainer :func:`fit` drives.

    It follows :class:`~pyro_lfbm.train.loop.StepTrainer`; ``step(x)`` or ``step(x, mask)``
    returns the loss per example and the learning rate in use. :meth:`load_state_dict` works both
    in a fresh process (resume) and in the middle of a run (the loop undoes a non-finite update
    with it): the optimizer states are put back into live Adam objects at once.

    With ``optim.ema_decay`` it also keeps :attr:`average`, an
    :class:`~pyro_lfbm.train.averaging.ExponentialAverage` of the model's and the guide's state,
    updated after every step and saved with the trainer's state; :meth:`load_average` puts it in.
    """

    def __init__(self, model: Callable, guide: Callable, optim: Optional[OptimConfig] = None,
                 loss: Optional[pyro.infer.ELBO] = None) -> None:
        self.model, self.guide = model, guide
        self.optim = optim or OptimConfig()
        self.loss = loss or Trace_ELBO()
        self.average = ExponentialAverage(self._modules(), self.optim.ema_decay) if self.optim.ema_decay else None
        self._build()

    def _modules(self) -> list:
        return [module for module in (self.model, self.guide) if isinstance(module, torch.nn.Module)]

    def _build(self) -> None:
        self.scheduler = self.optim.build()
        self.svi = SVI(self.model, self.guide, self.scheduler, self.loss)

    def step(self, x: torch.Tensor, *mask: torch.Tensor) -> Dict[str, float]:
        loss = self.svi.step(x, *mask) / x.shape[0]
        self.update_average()
        return {"loss": loss, "lr": _current_lr(self.scheduler, self.optim.lr)}

    def update_average(self) -> None:
        """Move the weight average (if any) towards the weights after an update."""
        if self.average is not None:
            self.average.update(self._modules())

    def load_average(self) -> None:
        """Put the averaged weights into the model and the guide (nothing without ``optim.ema_decay``)."""
        if self.average is not None:
            self.average.copy_to(self._modules())

    def set_positions(self, index: torch.Tensor) -> None:
        """Tell the guide the dataset positions (B,) of the next batch (persistent Langevin chains)."""
        if hasattr(self.guide, "set_positions"):
            self.guide.set_positions(index)

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        model = self.model.state_dict() if isinstance(self.model, torch.nn.Module) else None
        guide = self.guide.state_dict() if isinstance(self.guide, torch.nn.Module) else None
        # states set but not yet taken up by a parameter (right after a resume) are part of the state too
        optim = {**getattr(self.scheduler, "_state_waiting_to_be_consumed", {}), **self.scheduler.get_state()}
        state = {"model": model, "guide": guide, "optim": optim}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.model, torch.nn.Module):
            self.model.load_state_dict(state["model"])
        if isinstance(self.guide, torch.nn.Module) and state.get("guide") is not None:
            self.guide.load_state_dict(state["guide"])
        if self.average is not None:
            if state.get("average") is None:
                warnings.warn("the checkpoint was trained without weight averaging: the average starts from its weights",
                              UserWarning, stacklevel=2)
                self.average = ExponentialAverage(self._modules(), self.optim.ema_decay)
            else:
                self.average.load_state_dict(state["average"])
        # Fresh Adam/scheduler objects: Pyro hands a saved state only to an optimizer it creates.
        self._build()
        self.scheduler.set_state(state["optim"])
        # Create the optimizers of the parameters Pyro already knows (every one, mid-run) now, by a
        # step without gradients, which changes nothing: so that end_epoch's decay and state_dict
        # see them even before the next update. Unknown ones (fresh process) are created on first use.
        store = pyro.get_param_store()
        live = [p for name, p in store.named_parameters() if name in state["optim"]]
        for p in live:
            p.grad = None
        if live:
            self.scheduler(live)


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
    checkpoint: Optional[Checkpointing] = None,
    loss: Optional[pyro.infer.ELBO] = None,
    progress: bool = True,
    after_step: Optional[Callable[[int], None]] = None,
    after_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
    skip_nonfinite: bool = False,
    trainer: Optional[SVITrainer] = None,
) -> History:
    """Train ``model`` (a ``PyroModule``) with ``SVI(model, guide, Adam, Trace_ELBO)`` for ``epochs`` epochs.

    The loop is :func:`~pyro_lfbm.train.loop.fit_steps` driving an :class:`SVITrainer`: ``trainer``
    when given (of this ``model`` and ``guide``, e.g. the one :func:`~pyro_lfbm.train.recipe.build`
    made; ``optim`` and ``loss`` are then its own), else ``SVITrainer(model, guide, optim, loss)``.

    :param x: training images (N, C, H, W); each epoch visits them in a fresh order fixed by
        ``seed`` and the epoch number (so a resumed run sees the same batches), dropping the last
        incomplete batch as the paper does.
    :param mask: optional per-pixel masks (N, C, H, W) passed to ``model(x, mask)`` (learning from
        incomplete images); each image keeps its own mask.
    :param checkpoint: a :class:`~pyro_lfbm.train.checkpoint.Checkpointing`: the file written after each
        epoch and on Ctrl-C, whether an existing one is continued, and the config saved with it and
        checked on resume (a one-line :class:`~pyro_lfbm.train.checkpoint.CheckpointError` on a mismatch).
    :param after_step: called with the global step after each SVI step (e.g. ``flow.clear_cache``).
    :param skip_nonfinite: drop updates that leave a NaN/inf (counted in the history's
        ``nonfinite_skipped``) instead of stopping with a :class:`FloatingPointError`; see
        :func:`~pyro_lfbm.train.loop.fit_steps` for the guard and for Ctrl-C.
    :returns: the :class:`History` of all epochs (rows: epoch, loss per example, lr, seconds,
        examples_per_second), including those before a resume.

    Inside a process group of several processes (``torchrun``, see
    :mod:`pyro_lfbm.train.distributed`) the training is data-parallel: each process takes its share
    of every global batch of ``batch_size`` (the same batches as one process), the model's BatchNorm
    layers become :class:`~pyro_lfbm.train.distributed.SyncBatchNorm` (same parameters and state
    dict), gradients are summed over the processes, and rank 0 alone writes the checkpoint; the
    result follows the one-process run up to rounding.
    """
    check_training_data(x, batch_size, mask)  # before the param-store probe reads a batch
    device = _device_of(model, x)
    probe = x[:batch_size].to(device)
    check_param_store(model, *((probe,) if mask is None else (probe, mask[:batch_size].to(device))))
    if trainer is None:
        trainer = SVITrainer(model, guide, optim, loss)
    elif trainer.model is not model or trainer.guide is not guide:
        raise ValueError("trainer must be an SVITrainer of this model and guide (trainer.model, trainer.guide)")
    elif optim is not None or loss is not None:
        raise ValueError("pass optim and loss to the SVITrainer, not to fit, when fit is given a trainer")
    if distributed.current() is not None:  # launched by torchrun: data-parallel over the processes
        for module in (model, guide):
            if isinstance(module, torch.nn.Module):
                distributed.convert_sync_batchnorm(module)
        trainer = distributed.DataParallelSVI(trainer)
    return fit_steps(
        trainer, x, epochs=epochs, batch_size=batch_size, mask=mask, seed=seed,
        device=device, checkpoint=checkpoint,
        progress=progress, after_step=after_step, after_epoch=after_epoch, skip_nonfinite=skip_nonfinite,
    )


def check_param_store(model, *args, **kwargs) -> None:
    """Raise if Pyro's param store maps this model's parameter names to other tensors.

    Pyro keeps parameters in a global store keyed by name; a second model built in the same
    process registers under the same names and ``SVI`` would silently optimise the first
    model's tensors. Call ``pyro.clear_param_store()`` before training a new model.
    """
    if not isinstance(model, torch.nn.Module):
        return
    own = {id(p) for p in model.parameters()}
    # eval(): no BatchNorm statistics updates; fork_rng: no random numbers consumed
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng(), pyro.poutine.block():
        trace = pyro.poutine.trace(model, param_only=True).get_trace(*args, **kwargs)
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
