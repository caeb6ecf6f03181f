"""Inference over a whole data set, in batches: Langevin latents (:func:`infer_dataset`) and the
log joint's terms at given latents (:func:`batched_log_joint_terms`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from tqdm.auto import tqdm

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.accelerate import FusedLangevinGuide, has_fused_chain
from pyro_lfbm.infer.guide import LangevinGuide
from pyro_lfbm.infer.modes import eval_mode


@dataclass
class InferenceResult:
    """Latents and log joints of a data set after Langevin inference.

    :ivar torch.Tensor z: (N, D) final latents (for a model with several latent sites, their
        concatenation in the model's ``latent_sites`` order; ``model.split_latents(z)`` splits it).
    :ivar dict log_joint_terms: ``{"prior": (N,), "likelihood": (N,)}`` at the final latents, when
        the model has ``log_joint_terms`` (a :class:`~pyro_lfbm.models.LatentModel`); else empty.
    :ivar torch.Tensor log_joint: (N,) log p(x, z) at the final latents.
    :ivar int gradient_evaluations: per example.
    :ivar float seconds: wall time of the inference.
    """

    z: torch.Tensor
    log_joint: torch.Tensor
    log_joint_terms: Dict[str, torch.Tensor]
    gradient_evaluations: int
    seconds: float


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``; a last batch of one image
    is folded into the one before it, because BatchNorm in training mode cannot normalise a
    single example."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, starts[1:] + [n])]


def infer_dataset(
    model,
    x: torch.Tensor,
    *,
    num_steps: int,
    step_size: float,
    noise: bool = False,
    batch_size: int = 500,
    mask: Optional[torch.Tensor] = None,
    init: Optional[Callable[..., Dict[str, torch.Tensor]]] = None,
    progress: bool = True,
    desc: str = "inference",
    compile: bool = False,
) -> InferenceResult:
    """Infer z for every image of ``x`` (N, C, H, W) by ``num_steps`` Langevin steps per batch.

    The paper's test-time inference is ``noise=False`` (gradient ascent on log p(x, z)) from
    z₀ ~ N(0, I), 400 steps of 0.1. ``init(x_batch, mask_batch) -> {"z": ...}`` replaces z₀.
    The model is used in whatever train/eval mode it is in (that matters for BatchNorm).
    Tensors are returned on the CPU.

    :param bool compile: run the chains with the compiled log joint of a
        :class:`~pyro_lfbm.models.LatentModel`
        (:class:`~pyro_lfbm.infer.accelerate.FusedLangevinGuide`): the same chains up to float
        rounding, compiled once per batch shape and BatchNorm mode. Other models ignore it.
    """
    import time

    if compile and has_fused_chain(model):
        guide = FusedLangevinGuide(model, num_steps=num_steps, step_size=step_size, noise=noise, init=init)
    else:
        guide = LangevinGuide(model, num_steps=num_steps, step_size=step_size, noise=noise, init=init)
    device = next(iter(model.parameters())).device
    zs, lps, terms = [], [], {}
    started = time.perf_counter()
    for batch in tqdm(batch_slices(x.shape[0], batch_size), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        xb = x[batch].to(device)
        mb = None if mask is None else mask[batch].to(device)
        latents = guide.infer(xb, mb)
        join = getattr(model, "join_latents", None)  # several latent sites -> the concatenated z
        z = join(latents) if join is not None else latents["z"]
        with torch.no_grad():
            if hasattr(model, "log_joint_terms"):
                parts = model.log_joint_terms(xb, z, mb)
                for key, value in parts.items():
                    terms.setdefault(key, []).append(value.cpu())
                lp = sum(parts.values())
            else:
                lp = model.log_joint(xb, mb, z=z)
        zs.append(z.cpu())
        lps.append(lp.cpu())
    seconds = time.perf_counter() - started
    return InferenceResult(
        z=torch.cat(zs),
        log_joint=torch.cat(lps),
        log_joint_terms={k: torch.cat(v) for k, v in terms.items()},
        gradient_evaluations=num_steps,
        seconds=seconds,
    )


def _device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def batched_log_joint_terms(model, x: torch.Tensor, z: torch.Tensor, *, batch_size: int = 500) -> Dict[str, torch.Tensor]:
    """``{"prior": log p_α(z), "likelihood": log p_β(x | z)}``, each (N,), of a
    :class:`~pyro_lfbm.models.LatentModel` at latents z (N, D) for images x (N, C, H, W).

    The model is evaluated in ``eval()`` mode (its mode is restored afterwards); CPU tensors.
    """
    if x.dim() < 2 or z.dim() != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"need x (N, C, H, W) and z (N, D) with the same N; got {tuple(x.shape)} and {tuple(z.shape)}")
    device, parts = _device(model), {"prior": [], "likelihood": []}
    with eval_mode(model), posterior_inference():
        for s in range(0, x.shape[0], batch_size):
            xb, zb = x[s : s + batch_size].to(device), z[s : s + batch_size].to(device)
            for key, value in model.log_joint_terms(xb, zb).items():
                parts[key].append(value.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
