"""Unsupervised recovery: learn from occluded images, then recover them (the ``--incomplete_train``
task of the official LFBM code, ``github.com/jianwen-xie/Latent-Space-Normalizing-Flow``, ``train.py`` at commit ``16b1b67``).

Each training image x_i (1, 28, 28) keeps one fixed mask m_i (:mod:`pyro_lfbm.data.masks`); the model
only ever sees x̃_i = x_i ⊙ m_i and its masked likelihood (in the Langevin inference and in the
parameter update). Recovery infers z from the masked image alone and returns x̂ = g(z).
Errors are measured in [0, 1] pixel units ((v + 1) / 2), pooled over all images:

* ``mse_hole``: over the occluded pixels only (the recovery error),
* ``mse_all``: over every pixel of g(z),
* ``mse_observed``: over the observed pixels.

:func:`reconstruct` and :func:`region_mse` are also the building blocks of inpainting and of the
test reconstruction error of the synthesis experiment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import pyro
import torch

from pyro_lfbm.infer.modes import eval_mode
from pyro_lfbm.train.recipe import fit_preset
from pyro_lfbm.infer import infer_dataset
from pyro_lfbm.data.masks import MaskSetting, coverage_stats
from pyro_lfbm.train.presets import Preset

__all__ = ["RecoveryResult", "reconstruct", "recovery_errors", "region_mse", "run_recovery", "to_unit"]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def region_mse(x_hat: torch.Tensor, x: torch.Tensor, region: Optional[torch.Tensor] = None, unit: bool = True) -> float:
    """Mean squared error between x_hat and x (N, C, H, W) over the pixels where ``region`` is true.

    :param region: (N or 1, C, H, W) bool/0-1 selection; ``None`` = every pixel.
    :param unit: measure in [0, 1] pixel units (True) or in the data's [-1, 1] units (False).
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"shapes differ: {tuple(x_hat.shape)} vs {tuple(x.shape)}")
    if unit:
        x_hat, x = to_unit(x_hat), to_unit(x)
    err = (x_hat - x).pow(2)
    if region is None:
        return float(err.mean())
    region = region.bool().expand_as(err)
    count = int(region.sum())
    if count == 0:
        raise ValueError("the region selects no pixel")
    return float(err[region].sum() / count)


@torch.no_grad()
def _decode(model, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model.generator(z[i : i + batch_size].to(device)).cpu() for i in range(0, z.shape[0], batch_size)])


def reconstruct(
    model,
    x: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    num_steps: int,
    step_size: float,
    noise: bool = False,
    init: Optional[Callable] = None,
    seed: Optional[int] = 0,
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "inference",
) -> torch.Tensor:
    """x̂ = g(z) with z inferred by Langevin on log p(x, z) under ``mask``; images (N, C, H, W) in [-1, 1].

    The model is evaluated in ``eval()`` mode (BatchNorm running statistics: every image is
    inferred on its own); z₀ ~ N(0, I) unless ``init(x_batch, mask_batch) -> {"z": (B, D)}``.
    ``seed`` fixes z₀ and the Langevin noise without touching the global RNG (None: leave it); the
    chains run in a Pyro param store of their own, so the caller's is left as it was.
    """
    if mask is not None:
        x = x * mask  # only observed pixels enter
    with eval_mode(model), torch.random.fork_rng(), pyro.get_param_store().scope():
        if seed is not None:
            torch.manual_seed(seed)
        result = infer_dataset(model, x, num_steps=num_steps, step_size=step_size, noise=noise, batch_size=batch_size,
                               mask=mask, init=init, progress=progress, desc=desc)
        return _decode(model, result.z, batch_size)


def recovery_errors(recovered: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, float]:
    """``{"mse_hole", "mse_all", "mse_observed"}`` in [0, 1] units; all tensors (N, C, H, W), mask 1 = observed."""
    hole = mask == 0
    out = {"mse_hole": region_mse(recovered, x, hole), "mse_all": region_mse(recovered, x)}
    out["mse_observed"] = region_mse(recovered, x, ~hole) if bool((~hole).any()) else float("nan")
    return out


@dataclass
class RecoveryResult:
    """One recovery run.

    :ivar dict metrics: mse_hole / mse_all / mse_observed (in [0, 1] units), coverage statistics,
        train and inference seconds, epochs, final loss.
    :ivar torch.Tensor recovered: x̂ = g(z), (N, C, H, W) in [-1, 1].
    :ivar torch.Tensor mask: (N, C, H, W), 1 = observed.
    :ivar list history: per-epoch training records.
    """

    metrics: Dict[str, float]
    recovered: torch.Tensor
    mask: torch.Tensor
    history: List[Dict] = field(default_factory=list)


def run_recovery(
    preset: Preset,
    x: torch.Tensor,
    setting: MaskSetting,
    *,
    seed: int = 1,
    mask_seed: Optional[int] = None,
    eval_steps: Optional[int] = None,
    eval_step_size: Optional[float] = None,
    eval_noise: bool = True,
    data: Optional[dict] = None,
    device: torch.device | str = "cpu",
    checkpoint_dir=None,
    resume: bool = True,
    progress: bool = False,
    skip_nonfinite: bool = False,
) -> RecoveryResult:
    """Mask the training images x (N, C, H, W), learn from them, recover them and measure the errors.

    :param setting: e.g. ``MaskSetting("salt-pepper", 50)``; masks are drawn with ``mask_seed``
        (default: ``seed``), so every prior of one seed sees the same masks.
    :param eval_steps, eval_step_size, eval_noise: the recovery inference; the default is the
        paper code's evaluation: the training chain (``learn.num_steps`` noisy steps of
        ``learn.step_size``) from a fresh z₀ ~ N(0, I).
    :param skip_nonfinite: drop non-finite training updates instead of stopping (:func:`~pyro_lfbm.train.recipe.fit_preset`).
    """
    mask_seed = seed if mask_seed is None else mask_seed
    mask = setting.make(x.shape[0], tuple(x.shape[1:]), seed=mask_seed)
    data = dict(data or {}, mask=setting.name, mask_seed=mask_seed)
    model, history = fit_preset(preset, x, mask, seed=seed, data=data, device=device, checkpoint_dir=checkpoint_dir,
                                resume=resume, progress=progress, skip_nonfinite=skip_nonfinite)
    steps = preset.learn.num_steps if eval_steps is None else eval_steps
    step_size = preset.learn.step_size if eval_step_size is None else eval_step_size
    started = time.perf_counter()
    recovered = reconstruct(model, x, mask, num_steps=steps, step_size=step_size, noise=eval_noise, seed=seed,
                            batch_size=preset.learn.test_batch_size, progress=progress, desc="recovery")
    metrics = recovery_errors(recovered, x, mask)
    cov = coverage_stats(mask)
    metrics.update(
        coverage=cov["mean"], coverage_std=cov["std"], eval_steps=steps, eval_step_size=step_size, eval_noise=eval_noise,
        epochs=len(history.epochs), train_seconds=round(history.train_seconds, 1),
        final_loss=history.epochs[-1]["loss"] if history.epochs else float("nan"),
        eval_seconds=round(time.perf_counter() - started, 1),
    )
    return RecoveryResult(metrics=metrics, recovered=recovered, mask=mask, history=list(history.epochs))
