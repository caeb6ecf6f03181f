"""Training CoopFlow (:class:`~pyro_lfbm.models.CoopFlow`): the cooperative update of the flow and the
EBM, its settings, configuration and presets. Drive :class:`CoopFlowTrainer` with
:func:`~pyro_lfbm.train.loop.fit_steps`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from pyro_lfbm.models.coopflow import CoopFlow
from pyro_lfbm.models.image_flow import ImageFlow, dequantize
from pyro_lfbm.nets.energy import make_energy

__all__ = ["CoopFlowConfig", "CoopFlowOptim", "CoopFlowTrainer", "coopflow_preset", "grad_norm_step"]


def grad_norm_step(optimizer: torch.optim.Optimizer, params, clip_norm: Optional[float], max_norm: float) -> Tuple[float, bool]:
    """Clip the gradients of ``params`` to ``clip_norm`` and step, unless their norm is not finite
    or exceeds ``max_norm`` (then the gradients are dropped and nothing moves).

    :returns: ``(norm before clipping, skipped)``.
    """
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm else float("inf")).item()
    skipped = not math.isfinite(norm) or norm > max_norm
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, skipped


@dataclass(frozen=True)
class CoopFlowOptim:
    """Optimisation settings (the official code's values as defaults).

    :ivar flow_lr, ebm_lr: Adam learning rates (1e-4 both).
    :ivar ebm_betas: Adam betas of the EBM ((0.5, 0.5)); the flow uses Adam's default.
    :ivar warmup_steps: linear learning-rate warm-up over the first batches (200).
    :ivar clip_norm: gradient-norm clipping of both models (1.0; ``None`` = off).
    :ivar max_flow_grad_norm, max_ebm_grad_norm: skip an update whose norm exceeds these (1e6 / 5e6).
    :ivar gamma: per-epoch exponential learning-rate decay (1.0 = none).
    :ivar dequantize: dequantize revised images (:func:`~pyro_lfbm.models.image_flow.dequantize`)
        before the flow NLL.
    :ivar pretrain_flow_epochs: CoopFlow(Pre): first train the flow alone by maximum likelihood on
        the data for this many epochs (the official "Pre" variant loads a flow pretrained on data).
    :ivar flow_frozen_epochs: CoopFlow(Pre): then train only the EBM for this many epochs.
    """

    flow_lr: float = 1e-4
    ebm_lr: float = 1e-4
    flow_betas: Tuple[float, float] = (0.9, 0.999)
    ebm_betas: Tuple[float, float] = (0.5, 0.5)
    warmup_steps: int = 200
    clip_norm: Optional[float] = 1.0
    max_flow_grad_norm: float = 1e6
    max_ebm_grad_norm: float = 5e6
    gamma: float = 1.0
    dequantize: bool = True
    pretrain_flow_epochs: int = 0
    flow_frozen_epochs: int = 0


class CoopFlowTrainer:
    """One CoopFlow iteration per :meth:`step`; drive it with :func:`pyro_lfbm.train.loop.fit_steps`.

    :meth:`step` returns, among others, ``flow_bpd`` / ``flow_bpd_after``: the flow's bits/dim of
    the revised batch before and after its update, ``score_flow`` / ``score_revised`` /
    ``score_data``: mean f_θ of the flow samples, the revised samples and the data batch,
    ``*_grad_norm`` (before clipping) and ``*_skipped`` (1.0 when the guard dropped the update).

    The flow's ActNorm layers are initialised from the first data batch (Glow's data-dependent
    init; the official code initialises on data too).

    :param CoopFlow model: the flow and the EBM.
    :param CoopFlowOptim optim: settings.
    """

    def __init__(self, model: CoopFlow, optim: Optional[CoopFlowOptim] = None):
        self.model, self.optim = model, optim or CoopFlowOptim()
        o = self.optim
        self.flow_opt = torch.optim.Adam(model.flow.parameters(), lr=o.flow_lr, betas=tuple(o.flow_betas))
        self.ebm_opt = torch.optim.Adam(model.energy.parameters(), lr=o.ebm_lr, betas=tuple(o.ebm_betas))
        self.iteration, self.epoch = 0, 0
        self.skipped = {"flow": 0, "ebm": 0}
        self.last_revised: Optional[torch.Tensor] = None  #: the revised batch of the last step

    def _set_lr(self) -> None:
        o = self.optim
        warm = min(1.0, (self.iteration + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
        decay = o.gamma**self.epoch
        for opt, lr in ((self.flow_opt, o.flow_lr), (self.ebm_opt, o.ebm_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * warm * decay

    def _dequantize(self, x: torch.Tensor) -> torch.Tensor:
        return dequantize(x) if self.optim.dequantize else x

    def step(self, x: torch.Tensor) -> Dict[str, float]:
        """One iteration on a data batch ``x`` (B, C, H, W) in [-1, 1]; returns its metrics."""
        model, o = self.model, self.optim
        if not bool(model.flow.initialized):
            model.flow.data_init(self._dequantize(x))
        self._set_lr()
        if self.epoch < o.pretrain_flow_epochs:
            return self._pretrain_step(x)
        x_flow = model.sample_flow(x.shape[0])
        x_rev = model.revise(x_flow)
        _check_finite("flow samples", x_flow, self.iteration)
        _check_finite("revised samples", x_rev, self.iteration)

        with torch.no_grad():
            score_flow = model.score(x_flow).mean().item()
        # (3) the flow learns from the revised samples
        flow_frozen = self.epoch < o.pretrain_flow_epochs + o.flow_frozen_epochs
        x_rev_q = self._dequantize(x_rev)
        flow_nll = -model.flow.log_prob(x_rev_q).mean()
        _check_finite("flow NLL", flow_nll, self.iteration)
        if flow_frozen:
            flow_norm, flow_skipped = 0.0, False
        else:
            self.flow_opt.zero_grad(set_to_none=True)
            flow_nll.backward()
            flow_norm, flow_skipped = grad_norm_step(self.flow_opt, model.flow.parameters(), o.clip_norm, o.max_flow_grad_norm)
        with torch.no_grad():  # the same revised batch under the updated flow
            flow_nll_after = -model.flow.log_prob(x_rev_q).mean().item()
        self.last_revised = x_rev
        # (4) the EBM contrasts data with revised samples
        score_data, score_rev = model.score(x).mean(), model.score(x_rev).mean()
        ebm_loss = score_rev - score_data
        _check_finite("EBM loss", ebm_loss, self.iteration)
        self.ebm_opt.zero_grad(set_to_none=True)
        ebm_loss.backward()
        ebm_norm, ebm_skipped = grad_norm_step(self.ebm_opt, model.energy.parameters(), o.clip_norm, o.max_ebm_grad_norm)

        self.skipped["flow"] += int(flow_skipped)
        self.skipped["ebm"] += int(ebm_skipped)
        self.iteration += 1
        pixels = model.flow.num_pixels
        return {
            "loss": ebm_loss.item(), "flow_bpd": _bpd(flow_nll.item(), pixels),
            "flow_bpd_after": _bpd(flow_nll_after, pixels), "score_data": score_data.item(),
            "score_flow": score_flow, "score_revised": score_rev.item(),
            "revision_distance": (x_rev - x_flow).pow(2).mean().sqrt().item(),
            "flow_grad_norm": flow_norm, "ebm_grad_norm": ebm_norm,
            "flow_skipped": float(flow_skipped), "ebm_skipped": float(ebm_skipped),
        }

    def _pretrain_step(self, x: torch.Tensor) -> Dict[str, float]:
        """Flow maximum likelihood on the data batch (CoopFlow(Pre)'s pretraining); no EBM update."""
        model, o = self.model, self.optim
        nll = -model.flow.log_prob(self._dequantize(x)).mean()
        _check_finite("flow NLL (pretraining)", nll, self.iteration)
        self.flow_opt.zero_grad(set_to_none=True)
        nll.backward()
        norm, skipped = grad_norm_step(self.flow_opt, model.flow.parameters(), o.clip_norm, o.max_flow_grad_norm)
        self.skipped["flow"] += int(skipped)
        self.iteration += 1
        return {"flow_bpd": _bpd(nll.item(), model.flow.num_pixels),
                "flow_grad_norm": norm, "flow_skipped": float(skipped)}

    def end_epoch(self) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "flow_opt": self.flow_opt.state_dict(),
                "ebm_opt": self.ebm_opt.state_dict(), "iteration": self.iteration, "epoch": self.epoch,
                "skipped": dict(self.skipped), "optim": asdict(self.optim)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.flow_opt.load_state_dict(state["flow_opt"])
        self.ebm_opt.load_state_dict(state["ebm_opt"])
        self.iteration, self.epoch, self.skipped = state["iteration"], state["epoch"], dict(state["skipped"])


def _bpd(nll: float, pixels: int) -> float:
    """Bits per pixel on the [0, 256) scale from a NLL in [-1, 1] units (x = u / 128 - 1)."""
    return (nll + pixels * math.log(128.0)) / (pixels * math.log(2.0))


def _check_finite(what: str, value: torch.Tensor, iteration: int) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"CoopFlow: non-finite {what} at iteration {iteration}; lower the learning rates or the Langevin step size"
        )


@dataclass(frozen=True)
class CoopFlowConfig:
    """Everything needed to rebuild a :class:`CoopFlow` and its trainer."""

    image_shape: Tuple[int, int, int] = (1, 28, 28)
    flow_levels: int = 2
    flow_steps: int = 4
    flow_hidden: int = 16
    flow_checkerboard_steps: int = 0
    energy: str = "conv"
    energy_width: int = 16
    num_steps: int = 30
    step_size: float = 0.03
    max_move: float = 0.1
    batch_size: int = 100
    epochs: int = 5
    optim: CoopFlowOptim = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.optim is None:
            object.__setattr__(self, "optim", CoopFlowOptim())
        elif isinstance(self.optim, dict):
            object.__setattr__(self, "optim", CoopFlowOptim(**self.optim))

    def build(self) -> CoopFlow:
        flow = ImageFlow(tuple(self.image_shape), self.flow_levels, self.flow_steps, self.flow_hidden,
                         self.flow_checkerboard_steps)
        energy = make_energy(self.energy, tuple(self.image_shape), self.energy_width)
        return CoopFlow(flow, energy, self.num_steps, self.step_size, self.max_move)

    def to_dict(self) -> dict:
        return asdict(self)


def coopflow_preset(name: str, image_shape=(1, 28, 28)) -> CoopFlowConfig:
    """``tiny`` (seconds, tests), ``cpu`` (28×28 grey on a 2-core CPU: 1 epoch of flow pretraining,
    3 cooperative epochs, Langevin step 5.0) or ``paper`` (32×32
    colour with a GPU: batch 28, 30 steps of 0.03, the ``EBM_res`` energy, a 3-level Glow of 8 steps
    per level and width 256 standing in for the official Flow++)."""
    image_shape = tuple(int(s) for s in image_shape)
    if name == "tiny":
        return CoopFlowConfig(image_shape, flow_levels=1, flow_steps=1, flow_hidden=8, flow_checkerboard_steps=0,
                              energy_width=8, num_steps=5, batch_size=20, epochs=1,
                              optim=CoopFlowOptim(flow_lr=1e-3, ebm_lr=1e-3, warmup_steps=0))
    if name == "cpu":
        # A small EBM has tiny input gradients early on: with the official s = 0.03 the revision does not
        # move the samples within a CPU budget, so s is larger and the +-0.1 per-step clip bounds the moves.
        # One epoch of flow pretraining on data (as CoopFlow(Pre)) precedes the cooperative epochs.
        return CoopFlowConfig(image_shape, flow_levels=2, flow_steps=4, flow_hidden=16, flow_checkerboard_steps=0,
                              energy_width=16, num_steps=30, step_size=5.0, batch_size=100, epochs=4,
                              optim=CoopFlowOptim(flow_lr=2e-4, ebm_lr=5e-4, warmup_steps=50, pretrain_flow_epochs=1))
    if name == "paper":
        if image_shape[1:] != (32, 32):
            raise ValueError(f"the paper preset is for 32x32 images, got {image_shape}")
        return CoopFlowConfig(image_shape, flow_levels=3, flow_steps=8, flow_hidden=256, flow_checkerboard_steps=0,
                              energy="res32", energy_width=128, num_steps=30, step_size=0.03, batch_size=28,
                              epochs=200, optim=CoopFlowOptim())
    raise ValueError(f"unknown CoopFlow preset {name!r}; choose tiny, cpu or paper")
