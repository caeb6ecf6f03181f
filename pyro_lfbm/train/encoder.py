"""A post-hoc inference network: fit an encoder guide to a *frozen* model (LFBM-MCMC's amortized
encoder), through the library's one epoch loop."""

from __future__ import annotations

from typing import List

import torch
from pyro import poutine

from pyro_lfbm.infer.encoder_guide import EncoderGuide
from pyro_lfbm.infer.modes import eval_mode, frozen_parameters
from pyro_lfbm.train.loop import fit_steps
from pyro_lfbm.train.svi import OptimConfig, SVITrainer

__all__ = ["fit_encoder"]


def fit_encoder(
    model,
    guide: EncoderGuide,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> List[float]:
    """Fit the encoder of ``guide`` to a frozen ``model`` by SVI (Trace_ELBO), model parameters fixed.

    The model's parameters are hidden from the trace (``poutine.block(hide_types=["param"])``), so
    the optimiser (Adam, ``lr``, no decay) only sees the guide's; for the duration the model is in
    ``eval()`` mode (its BatchNorm statistics are not updated) with its parameters frozen
    (:func:`~pyro_lfbm.infer.modes.frozen_parameters`), and both are restored afterwards. The epochs
    run through :func:`~pyro_lfbm.train.loop.fit_steps` (batch order fixed by ``seed``, the last
    incomplete batch dropped, non-finite updates refused).

    :param x: training images (N, C, H, W), N ≥ batch_size.
    :returns: the mean loss per example (negative ELBO) of every epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs!r}")
    trainer = SVITrainer(poutine.block(model, hide_types=["param"]), guide, OptimConfig(lr=lr, betas=(0.9, 0.999), gamma=1.0))
    device = next(iter(guide.parameters())).device
    guide.train()
    with eval_mode(model), frozen_parameters(model):
        history = fit_steps(trainer, x, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                            progress=progress, desc="encoder epoch")
    return [row["loss"] for row in history.epochs]
