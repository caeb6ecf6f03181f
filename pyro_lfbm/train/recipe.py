"""Build a model from a preset and learn it by LFBM's Algorithm 1, optionally from masked images.

:func:`fit_preset` is the one training entry point of the recovery, inpainting and synthesis
experiments: ``SVI(model, LangevinGuide(model), Adam, Trace_ELBO)`` through
:func:`pyro_lfbm.train.svi.fit`, with a checkpoint whose name records everything that shapes the
model, so that a finished run is loaded instead of retrained (``resume=True``) and the inpainting
script can reuse the models that the synthesis script trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional, Tuple

import pyro
import torch

from pyro_lfbm.infer import LangevinGuide
from pyro_lfbm.models import LatentModel
from pyro_lfbm.train.presets import Preset
from pyro_lfbm.train.svi import History, fit

__all__ = ["fit_preset", "run_tag", "with_epochs"]

CONFIG_KEYS = ("model", "learn", "data")


def with_epochs(preset: Preset, epochs: Optional[int]) -> Preset:
    """The preset with ``learn.epochs`` replaced (``None`` keeps it)."""
    if epochs is None:
        return preset
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    return Preset(preset.model, replace(preset.learn, epochs=epochs))


def run_tag(preset: Preset, data: dict) -> str:
    """A short name for a training run: ``<prior>-<hash of preset and data description>``."""
    blob = json.dumps({**preset.to_dict(), "data": data}, sort_keys=True, default=str)
    return f"{preset.model.prior}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def fit_preset(
    preset: Preset,
    x: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    seed: int = 1,
    data: Optional[dict] = None,
    device: torch.device | str = "cpu",
    checkpoint_dir: Optional[str | Path] = None,
    resume: bool = True,
    progress: bool = True,
    skip_nonfinite: bool = False,
) -> Tuple[LatentModel, History]:
    """Build ``preset.model`` (seeded by ``seed``) and fit it to images x (N, C, H, W) in [-1, 1].

    :param mask: optional fixed per-image masks (N, C, H, W), 1 = observed. The model then sees
        only x̃ = x ⊙ m (holes zeroed before training, so nothing leaks) and its masked likelihood
        drives both the Langevin inference and the parameter update.
    :param data: a description of the data (name, split, size, mask setting, seed); it is part of
        the checkpoint name, so different data never share a checkpoint.
    :param checkpoint_dir: where ``<run_tag>-seed<seed>.pt`` is written after every epoch; with
        ``resume`` a finished checkpoint is loaded without training.
    :param skip_nonfinite: drop non-finite updates instead of stopping (see :func:`~pyro_lfbm.train.loop.fit_steps`).
    :returns: (model in train mode, :class:`~pyro_lfbm.train.svi.History`).
    """
    data = dict(data or {}, n=int(x.shape[0]), masked=mask is not None)
    learn = preset.learn
    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = preset.model.build().to(device)
    guide = LangevinGuide(model, num_steps=learn.num_steps, step_size=learn.step_size, noise=True)
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the image shape {tuple(x.shape)}")
        mask = mask.float()
        x = x * mask  # x̃ = x ⊙ m: the hole pixels are never seen
    path = None
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / f"{run_tag(preset, data)}-seed{seed}.pt"
    config = {**preset.to_dict(), "data": data}
    after_step = getattr(model.prior, "clear_cache", None)
    history = fit(
        model, guide, x, epochs=learn.epochs, batch_size=learn.batch_size, mask=mask, optim=learn.optim, seed=seed,
        checkpoint_path=path, resume=resume, config=json.loads(json.dumps(config, default=str)),
        config_keys=CONFIG_KEYS, progress=progress, skip_nonfinite=skip_nonfinite,
        after_step=(lambda _step: after_step()) if after_step is not None else None,
    )
    return model, history
