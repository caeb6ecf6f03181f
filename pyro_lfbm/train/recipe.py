"""The one training recipe: a preset becomes a model, a guide and a trainer (:func:`build`), and
:func:`train_recipe` learns it through the library's epoch loop.

Every task and script builds its models here: LFBM (the paper's Algorithm 1: ``SVI(model,
LangevinGuide(model), Adam, Trace_ELBO)``), ABP and LEBM (other priors), LFBM-VAE and a VAE (an
encoder guide, ``get_preset(name, prior, "encoder")``) and LFBM-hybrid (Langevin started at the
encoder's mean, ``get_preset(name, prior, "hybrid")``)::

    preset = get_preset("cpu", "flow")
    with isolated(seed=1):                         # own RNG stream and param store
        model, guide, trainer = build(preset)
        history = train_recipe(build(preset), x)   # or fit_steps(trainer, x, ...)

:func:`fit_preset` is the cached form used by the recovery, inpainting and synthesis tasks: its
checkpoint name records everything that shapes the model, so a finished run is loaded instead of
retrained (``resume=True``) and the inpainting task reuses the models the synthesis task trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

import pyro
import torch

from pyro_lfbm.infer import ConditionalEncoderGuide, EncoderGuide, HybridGuide, LangevinGuide
from pyro_lfbm.infer.accelerate import FusedLangevinGuide, has_fused_chain
from pyro_lfbm.infer.samplers import sampler_by_name
from pyro_lfbm.models import LatentModel
from pyro_lfbm.nets import LayerConditionalEncoder
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import History
from pyro_lfbm.train.presets import Preset
from pyro_lfbm.train.svi import SVITrainer, fit

__all__ = ["Recipe", "build", "fit_preset", "isolated", "run_tag", "train_recipe", "with_epochs"]

CONFIG_KEYS = ("model", "learn", "data")


@contextlib.contextmanager
def isolated(seed: Optional[int]) -> Iterator[None]:
    """A block with its own torch random stream (seeded with ``seed``; ``None``: continue the
    caller's) and its own empty Pyro param store; the caller's RNG state and param store are put
    back afterwards, also when the block raises.

    Training a model inside it gives the same numbers as ``pyro.clear_param_store();
    torch.manual_seed(seed)`` before building and training it, without changing the caller's
    global state (several models can be trained one after the other in one process).
    """
    with torch.random.fork_rng(), pyro.get_param_store().scope():
        if seed is not None:
            torch.manual_seed(seed)
        yield


@dataclass
class Recipe:
    """What :func:`build` returns; unpacks as ``model, guide, trainer``.

    :ivar model: the :class:`~pyro_lfbm.models.LatentModel`.
    :ivar guide: the training guide (:class:`~pyro_lfbm.infer.LangevinGuide`,
        :class:`~pyro_lfbm.infer.EncoderGuide` or :class:`~pyro_lfbm.infer.HybridGuide`).
    :ivar trainer: an :class:`~pyro_lfbm.train.SVITrainer` of the two with the preset's optimiser.
    :ivar encoder_guide: the encoder guide of the encoder and hybrid recipes, else None.
    :ivar preset: the preset it was built from.
    """

    model: LatentModel
    guide: Callable
    trainer: SVITrainer
    encoder_guide: Optional[EncoderGuide]
    preset: Preset

    def __iter__(self):
        return iter((self.model, self.guide, self.trainer))


def build_encoder_guide(preset: Preset, device: torch.device | str = "cpu") -> EncoderGuide:
    """The encoder guide of ``preset``: an :class:`~pyro_lfbm.infer.EncoderGuide` whose encoder mirrors the
    generator (for a hierarchical model one encoder over the concatenated layers, one Gaussian site per
    layer), or with ``guide.encoder == "conditional"`` a :class:`~pyro_lfbm.infer.ConditionalEncoderGuide`
    over that encoder."""
    config = preset.model
    if preset.guide.encoder == "conditional":
        encoder = LayerConditionalEncoder(config.build_encoder(), tuple(config.layer_dims))
        return ConditionalEncoderGuide(encoder, config.latent_sites()).to(device)
    if config.layer_dims:
        return EncoderGuide(config.build_encoder(), site=config.latent_sites(), sizes=tuple(config.layer_dims)).to(device)
    return EncoderGuide(config.build_encoder()).to(device)


def build(preset: Preset, *, device: torch.device | str = "cpu", loss: Optional[pyro.infer.ELBO] = None,
          compile_chain: bool = False) -> Recipe:
    """Model, training guide and trainer of ``preset`` (checked first: one ``ValueError`` naming the field).

    Draws the initial parameters from torch's global random stream: call it inside
    :func:`isolated` (or after seeding) for reproducible models.

    :param bool compile_chain: the Langevin recipe's guide is a
        :class:`~pyro_lfbm.infer.accelerate.FusedLangevinGuide` (the compiled log joint; the same
        chains as :class:`~pyro_lfbm.infer.LangevinGuide` up to float rounding, faster after a
        compile warm-up per batch shape). Other recipes ignore it.
    """
    preset.check()
    learn, kind = preset.learn, preset.guide.kind
    if preset.model.prior == "ebm" and kind in ("encoder", "hybrid"):
        warnings.warn(f"the energy prior with the {kind} guide can diverge: its negatives (prior Langevin from N(0, I)) "
                      "need not reach the encoder's codes, and the energy may fall without bound there (a training loss "
                      "running to -1e8, results/anomaly/hierarchical_energy/); the langevin guide keeps the codes near "
                      "the negatives", UserWarning, stacklevel=2)
    model = preset.model.build().to(device)
    encoder_guide = build_encoder_guide(preset, device) if kind in ("encoder", "hybrid") else None
    sampler = sampler_by_name(preset.guide.sampler) if preset.guide.sampler != "ula" else None
    if kind == "langevin" and compile_chain and has_fused_chain(model):
        guide = FusedLangevinGuide(model, num_steps=learn.num_steps, step_size=learn.step_size, sampler=sampler)
    elif kind == "langevin":
        guide = LangevinGuide(model, num_steps=learn.num_steps, step_size=learn.step_size, sampler=sampler)
    elif kind == "hybrid":
        guide = HybridGuide(model, encoder_guide, num_steps=preset.guide.hybrid_steps, step_size=learn.step_size)
    else:
        guide = encoder_guide
    return Recipe(model, guide, SVITrainer(model, guide, learn.optim, loss), encoder_guide, preset)


def train_recipe(
    recipe: Recipe,
    x: torch.Tensor,
    *,
    mask: Optional[torch.Tensor] = None,
    seed: int = 0,
    checkpoint: Optional[Checkpointing] = None,
    progress: bool = True,
    skip_nonfinite: bool = False,
) -> History:
    """Learn ``recipe`` from images x (N, C, H, W) for the preset's epochs and batch size by
    :func:`~pyro_lfbm.train.svi.fit` driving ``recipe.trainer`` (the epoch loop with checkpoints,
    resume and non-finite guards). With the preset's ``optim.ema_decay`` the model and guide end with
    the averaged weights (:meth:`~pyro_lfbm.train.svi.SVITrainer.load_average`; the checkpoint keeps
    the last weights and the average both, so a resumed run continues exactly).

    :param mask: optional per-image masks (N, C, H, W), 1 = observed, passed to ``model(x, mask)``.
    :param seed: fixes the batch order of every epoch.
    :param checkpoint: where the checkpoint goes, whether it is continued, and the config checked on resume
        (:class:`~pyro_lfbm.train.checkpoint.Checkpointing`).
    """
    learn = recipe.preset.learn
    decay = learn.optim.ema_decay
    updates = learn.epochs * (x.shape[0] // learn.batch_size)
    if decay is not None and decay ** updates > 0.05:
        warnings.warn(f"the weight average (ema_decay={decay}) spans about {round(1 / (1 - decay))} updates, but this run "
                      f"makes {updates}: {decay ** updates:.0%} of the averaged weights are the initial ones; lower "
                      "ema_decay (--ema) or turn it off (None, --ema 0)", UserWarning, stacklevel=2)
    clear_cache = getattr(recipe.model.prior, "clear_cache", None)
    history = fit(
        recipe.model, recipe.guide, x, epochs=learn.epochs, batch_size=learn.batch_size, mask=mask, trainer=recipe.trainer,
        seed=seed, checkpoint=checkpoint,
        progress=progress, skip_nonfinite=skip_nonfinite,
        after_step=(lambda _step: clear_cache()) if clear_cache is not None else None,
    )
    recipe.trainer.load_average()
    if clear_cache is not None:
        clear_cache()
    return history


def with_epochs(preset: Preset, epochs: Optional[int]) -> Preset:
    """The preset with ``learn.epochs`` replaced (``None`` keeps it); :meth:`Preset.with_epochs`."""
    return preset.with_epochs(epochs)


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
    """Build ``preset`` (seeded by ``seed``) and fit it to images x (N, C, H, W) in [-1, 1].

    Runs in :func:`isolated`: the caller's RNG state and Pyro param store are left as they were.

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
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the image shape {tuple(x.shape)}")
        mask = mask.float()
        x = x * mask  # x̃ = x ⊙ m: the hole pixels are never seen
    path = None
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir) / f"{run_tag(preset, data)}-seed{seed}.pt"
    config = json.loads(json.dumps({**preset.to_dict(), "data": data}, default=str))
    with isolated(seed):
        recipe = build(preset, device=device)
        checkpoint = Checkpointing(path, resume, config, CONFIG_KEYS) if path is not None else None
        history = train_recipe(recipe, x, mask=mask, seed=seed, checkpoint=checkpoint, progress=progress,
                               skip_nonfinite=skip_nonfinite)
    return recipe.model, history
