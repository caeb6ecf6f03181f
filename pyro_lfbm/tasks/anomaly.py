"""Held-out-digit anomaly detection as one function: learn a model from the normal training images
of an :class:`~pyro_lfbm.data.AnomalySplit` (or load a trained checkpoint), score every test image
by the decision functions of :mod:`pyro_lfbm.metrics.anomaly`, and measure AUPRC, AP and AUROC.

:func:`run_anomaly` takes every setting as an argument, prints nothing and leaves the caller's
global state alone (the model is built and trained with its own seeded random stream and its own
Pyro param store, :func:`pyro_lfbm.train.recipe.isolated`, which the scoring runs in too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from pyro_lfbm.data import AnomalySplit
from pyro_lfbm.infer.dataset import infer_dataset
from pyro_lfbm.infer.modes import batchnorm_statistics_kept, module_mode, recalibrated_batchnorm
from pyro_lfbm.metrics.anomaly import (anomaly_metrics, anomaly_scores, importance_weighted_likelihood_ratio,
                                       lower_layer_likelihood_ratio)
from pyro_lfbm.metrics.evaluation import GaussianProposal, GuideProposal, iwae_log_px, latent_rate
from pyro_lfbm.train.distributed import sharded_inference
from pyro_lfbm.train.averaging import ExponentialAverage
from pyro_lfbm.train.checkpoint import CheckpointError, Checkpointing, check_config_compatible, load_checkpoint
from pyro_lfbm.train.loop import trainer_state
from pyro_lfbm.train.presets import Preset, preset_model
from pyro_lfbm.train.recipe import build, isolated, train_recipe
from pyro_lfbm.train.refit import CodeDensityFit, refit_prior

__all__ = ["AnomalyResult", "BATCHNORM_MODES", "load_trained_model", "run_anomaly"]

#: Scoring with BatchNorm on the running statistics left by training (``"eval"``), on each test batch's
#: statistics (``"train"``, the official LFBM code's), or on running statistics re-estimated from training
#: images at their test-time z (``"recalibrated"``, see :func:`run_anomaly`).
BATCHNORM_MODES = ("eval", "train", "recalibrated")


@dataclass
class AnomalyResult:
    """One anomaly run.

    :ivar list rows: one dict per (BatchNorm mode, decision function): heldout, prior, score, seed,
        auprc, ap, auroc, prevalence, preset, epochs, test_steps, batchnorm, n_train, n_test,
        train_seconds, test_seconds.
    :ivar dict scores: the first mode's scores, ``{"joint", "recon", "prior"}`` (and ``"iwae"``, ``"llr1"``, ...)
        each (N_test,).
    :ivar dict scores_by_mode: every scored BatchNorm mode's scores, ``{mode: {"joint", "recon", "prior"}}``.
    :ivar dict refits: with ``refit_epochs``, each scored mode's second-stage fit,
        ``{mode: CodeDensityFit}`` (:func:`~pyro_lfbm.train.refit.refit_prior`).
    :ivar torch.Tensor is_anomaly: (N_test,) 1 = held-out digit.
    :ivar torch.Tensor test_x: (N_test, C, H, W) test images.
    :ivar list history: per-epoch training records (of the checkpoint when one was scored).
    :ivar model: the trained :class:`~pyro_lfbm.models.LatentModel`.
    :ivar dict config: the configuration saved with (and checked against) the checkpoint.
    :ivar torch.Tensor latents: the first mode's inferred z (N_test, D) at which the scores were
        taken (for a hierarchical model, the layers concatenated: ``model.split_latents(latents)``).
    """

    rows: List[Dict]
    scores: Dict[str, torch.Tensor]
    is_anomaly: torch.Tensor
    test_x: torch.Tensor
    history: List[Dict] = field(default_factory=list)
    model: Optional[torch.nn.Module] = None
    config: Dict = field(default_factory=dict)
    latents: Optional[torch.Tensor] = None
    scores_by_mode: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)
    refits: Dict[str, CodeDensityFit] = field(default_factory=dict)


def load_trained_model(model: torch.nn.Module, path: str | Path, config: Optional[dict] = None,
                       config_keys: Sequence[str] = ("model",), guide: Optional[torch.nn.Module] = None,
                       average: Optional[ExponentialAverage] = None) -> List[Dict]:
    """Load the model state of a training checkpoint at ``path`` into ``model`` (and the guide's
    state into ``guide``, e.g. the encoder of an encoder or hybrid run); returns its history.

    :param average: the trainer's weight average (:attr:`~pyro_lfbm.train.svi.SVITrainer.average`, over
        ``model`` and ``guide``): the checkpoint's average is loaded into it and then into the modules.
    :raises CheckpointError: the file is not a finished checkpoint of a model of this configuration, or
        ``average`` is asked of a checkpoint trained without one.
    """
    ckpt = load_checkpoint(path)
    if config is not None:
        check_config_compatible(ckpt.get("config", {}), config, config_keys)
    if not ckpt.get("epoch", 0):
        raise CheckpointError(f"{path} has not finished one epoch of training (it was interrupted in the first); "
                              "finish the run with --resume before scoring it")
    state = trainer_state(ckpt)
    if average is not None and state.get("average") is None:
        raise CheckpointError(f"{path} was trained without weight averaging; score its last weights (--ema 0)")
    try:
        model.load_state_dict(state["model"])
        if guide is not None and state.get("guide") is not None:
            guide.load_state_dict(state["guide"])
        if average is not None:
            average.load_state_dict(state["average"])
            average.copy_to([module for module in (model, guide) if module is not None])
    except (RuntimeError, ValueError):
        raise CheckpointError(f"{path} does not fit this model; pass the --preset and --prior it was trained with") from None
    return list(ckpt.get("history", []))


def _batchnorm_context(mode: str, model, encoder, train_x: torch.Tensor, learn, seed: int, num_images: int):
    """The modules' BatchNorm set up for scoring in ``mode`` (see :data:`BATCHNORM_MODES`)."""
    if mode != "recalibrated":
        return module_mode(*([encoder] if encoder is not None else []), training=mode == "train")
    subset = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:num_images]
    init = encoder.init_fn if encoder is not None else None
    extra = [encoder] if encoder is not None else []

    def at_the_scoring_point(batch: torch.Tensor) -> None:
        # the statistics are those of the networks where an image is scored: the encoder at the image and
        # the generator at the inferred z. The inference's own evaluations are not counted: a chain's steps,
        # and the model run once at z ~ N(0, I) to find its latent sites (with an energy prior's latents
        # far from N(0, I), counting that run ruins the generator's statistics).
        with batchnorm_statistics_kept(model, *extra), torch.random.fork_rng():
            torch.manual_seed(seed)  # z₀ ~ N(0, I) without an encoder: leave the scoring's stream alone
            z = infer_dataset(model, batch, num_steps=learn.test_steps, step_size=learn.test_step_size, noise=False,
                              batch_size=batch.shape[0], progress=False, **({"init": init} if init else {})).z
        if encoder is not None:
            init(batch)
        model.log_joint_terms(batch, z)

    batches = [b for b in train_x[subset].split(learn.test_batch_size) if b.shape[0] > 1]  # BatchNorm needs 2
    return recalibrated_batchnorm(model, *extra, batches=batches, forward=at_the_scoring_point)


def run_anomaly(
    preset: Preset,
    split: AnomalySplit,
    *,
    seed: int = 1,
    batchnorm: Sequence[str] = ("eval", "train"),
    device: torch.device | str = "cpu",
    checkpoint_path: Optional[str | Path] = None,
    resume: bool = False,
    trained_checkpoint: Optional[str | Path] = None,
    config: Optional[dict] = None,
    config_keys: Sequence[str] = ("model",),
    preset_name: str = "custom",
    progress: bool = False,
    skip_nonfinite: bool = False,
    compile_chain: bool = False,
    iwae_particles: int = 0,
    llr_layers: Sequence[int] = (),
    recalibration_images: int = 10_000,
    refit_epochs: int = 0,
) -> AnomalyResult:
    """Learn ``preset``'s model from ``split.train_x`` (or load ``trained_checkpoint``) and score ``split.test_x``.

    :param seed: seeds the model's initialisation and training (and the scoring order and z₀).
    :param batchnorm: the BatchNorm modes to score in, each of :data:`BATCHNORM_MODES` (``"eval"`` and ``"train"``
        as in :func:`~pyro_lfbm.metrics.anomaly.anomaly_scores`; ``"recalibrated"``: see ``recalibration_images``).
    :param checkpoint_path: training checkpoint (written every epoch); ``resume`` continues it.
    :param trained_checkpoint: score this finished checkpoint instead of training.
    :param config: saved with the checkpoint; the entries ``config_keys`` must match on resume/load.
    :param preset_name: the preset's name, recorded in the rows.
    :param compile_chain: train and score with the compiled Langevin chain (see
        :func:`~pyro_lfbm.train.recipe.build`); the same model up to float rounding.
    :param iwae_particles: P > 0 adds the decision function ``"iwae"``, −log p(x) estimated by
        :func:`~pyro_lfbm.metrics.evaluation.iwae_log_px` with P draws from the encoder's q_φ(z | x)
        (Burda, Grosse, Salakhutdinov, ICLR 2016): the marginal likelihood by which VAEs are scored
        (Nalisnick et al., ICLR 2019; the baselines of Havtorn et al., ICML 2021). It needs an encoder
        guide and is scored with BatchNorm on running statistics only (``"eval"`` in ``batchnorm``).
        It also adds ``"rate"``, KL(q_φ(z | x) ‖ p_α(z)) with the same P draws
        (:func:`~pyro_lfbm.metrics.evaluation.latent_rate`; Alemi, Fischer, Dillon, 2018).
        With ``llr_layers`` and a prior with exact layer conditionals (:class:`~pyro_lfbm.priors.TopDownPrior`)
        it also adds ``"llr{k}_iw"``, Havtorn et al.'s ratio as the difference of two bounds with P particles
        (:func:`~pyro_lfbm.metrics.anomaly.importance_weighted_likelihood_ratio`).
    :param llr_layers: for a hierarchical model, each k adds the decision function ``"llr{k}"``,
        Havtorn et al.'s likelihood ratio LLR^{>k} at the test-time z
        (:func:`~pyro_lfbm.metrics.anomaly.lower_layer_likelihood_ratio`), in every BatchNorm mode.
    :param recalibration_images: for the ``"recalibrated"`` mode, how many training images (a seeded
        random subset of ``split.train_x``), in batches of ``learn.test_batch_size``, re-estimate every
        running mean and variance of the model and the encoder as plain averages of batch statistics
        (:func:`~pyro_lfbm.infer.modes.recalibrated_batchnorm`): the encoder's at each image, the
        generator's at the z the test-time inference gives it (the chain's own steps are not counted).
        The test images are then scored on those statistics, each on its own; the training's
        statistics are restored afterwards.
    :param refit_epochs: E > 0 adds the decision function ``"prior_refit"``, −log q(z) at the test-time z,
        where q is a copy of the trained prior refit by maximum likelihood to the test-time z of the
        training images (inferred as the test images are, in the same BatchNorm mode) for at most E epochs,
        stopped early on a seeded tenth of them (:func:`~pyro_lfbm.train.refit.refit_prior`; the second
        stage of Dai & Wipf's two-stage VAE, ICLR 2019). It needs a prior with parameters and a normalised
        density (the flow). The fit's time counts in ``test_seconds``.

    A preset with an encoder (``guide`` ``"encoder"`` or ``"hybrid"``) scores with test chains
    started at the encoder mean μ_φ(x) instead of z₀ ~ N(0, I) (the encoder in the scoring BatchNorm
    mode too). The rows name the ``model`` (``"latent"`` or ``"hierarchical"``) and the ``guide``.

    A prior with per-layer densities (``prior.layer_log_probs``, :class:`~pyro_lfbm.priors.TopDownPrior`)
    adds the decision function ``"prior_top"``, −log p(z₁) of the top layer alone: the layer that Havtorn et
    al. (ICML 2021) find carries an image's semantics, where the lower ones carry its low-level features.
    """
    modes = tuple(batchnorm)
    if not modes or any(mode not in BATCHNORM_MODES for mode in modes):
        raise ValueError(f"batchnorm must be a sequence of {BATCHNORM_MODES}, got {batchnorm!r}")
    if iwae_particles < 0:
        raise ValueError(f"iwae_particles must be 0 (off) or a number of particles, got {iwae_particles}")
    if iwae_particles and (preset.guide.kind == "langevin" or "eval" not in modes):
        raise ValueError("the iwae score draws from the encoder with BatchNorm on running statistics; "
                         "use the encoder or hybrid guide and the eval BatchNorm mode")
    if iwae_particles and llr_layers and preset.model.layer_prior == "top-down" and preset.guide.encoder != "mean-field":
        raise ValueError("the importance-weighted likelihood ratio needs q(z_{>k} | x) in closed form, one Gaussian per "
                         f"image; the {preset.guide.encoder} encoder's q is a chain; use the mean-field encoder")
    if "recalibrated" in modes and (isinstance(recalibration_images, bool) or not isinstance(recalibration_images, int)
                                    or recalibration_images < 2 or split.train_x.shape[0] < 2):
        raise ValueError("the recalibrated BatchNorm mode needs recalibration_images >= 2 and at least 2 training "
                         f"images, got {recalibration_images!r} of {split.train_x.shape[0]}")
    num_layers = len(preset.model.layer_dims or ())
    if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_layers for k in llr_layers):
        raise ValueError(f"llr_layers must be layer counts from 1 to {num_layers - 1} of a hierarchical model, got {tuple(llr_layers)}"
                         if num_layers else "llr_layers needs a hierarchical model (preset.model.layer_dims)")
    if isinstance(refit_epochs, bool) or not isinstance(refit_epochs, int) or refit_epochs < 0:
        raise ValueError(f"refit_epochs must be 0 (off) or a number of epochs, got {refit_epochs!r}")
    if refit_epochs and preset.model.prior != "flow":
        raise ValueError(f"refit_epochs refits the prior by maximum likelihood, and the {preset.model.prior} prior "
                         "cannot be (the Gaussian has no parameters, the energy prior no normalised density); use the flow prior")
    learn = preset.learn
    config = dict(config or {"model": preset.to_dict()["model"]})
    with isolated(seed):
        recipe = build(preset, device=device, compile_chain=compile_chain)
        model = recipe.model
        if trained_checkpoint is not None:
            guide = recipe.guide if isinstance(recipe.guide, torch.nn.Module) else None
            history = load_trained_model(model, trained_checkpoint, config, config_keys, guide=guide,
                                         average=recipe.trainer.average)
            epochs_trained = len(history)
        else:
            checkpoint = (Checkpointing(checkpoint_path, resume, config, config_keys)
                          if checkpoint_path is not None else None)
            history = train_recipe(recipe, split.train_x, seed=seed, checkpoint=checkpoint, progress=progress,
                                   skip_nonfinite=skip_nonfinite).epochs
            epochs_trained = learn.epochs
        train_seconds = sum(row["seconds"] for row in history)

        rows, first_scores, scores_by_mode, refits = [], None, {}, {}
        encoder = recipe.encoder_guide
        kind = preset_model(preset)
        for mode in modes:
            started = time.perf_counter()
            with _batchnorm_context(mode, model, encoder, split.train_x, learn, seed, recalibration_images):
                def score(x: torch.Tensor):
                    return anomaly_scores(model, x, num_steps=learn.test_steps, step_size=learn.test_step_size,
                                          batch_size=learn.test_batch_size, batchnorm="train" if mode == "train" else "eval",
                                          seed=seed, progress=progress,
                                          inference=sharded_inference,  # infer_dataset itself in one process
                                          compile=compile_chain, init=encoder.init_fn if encoder is not None else None)

                scores, inferred = score(split.test_x)
                if refit_epochs:
                    with batchnorm_statistics_kept(model, *([encoder] if encoder is not None else [])):
                        _, training_codes = score(split.train_x)  # (batch statistics must not move the running ones)
                    refits[mode] = refit_prior(model.prior, training_codes.z, epochs=refit_epochs, seed=seed, progress=progress)
                    with torch.no_grad():
                        q = refits[mode].prior
                        scores["prior_refit"] = -q.log_prob(inferred.z.to(q.base_loc.device)).cpu()
                if iwae_particles and mode == "eval":
                    proposal = (GaussianProposal.from_guide(encoder, split.test_x, batch_size=learn.test_batch_size)
                                if preset.guide.encoder == "mean-field" else GuideProposal(encoder, split.test_x))
                    scores["iwae"] = -iwae_log_px(model, split.test_x, proposal, num_particles=iwae_particles,
                                                  batch_size=max(1, learn.test_batch_size // iwae_particles), seed=seed,
                                                  progress=progress)
                    scores["rate"] = latent_rate(model, proposal, num_particles=iwae_particles,
                                                 batch_size=learn.test_batch_size, seed=seed, progress=progress)
                    if hasattr(model.prior, "sample_lower_layers"):  # exact layer conditionals: Havtorn's ratio as bounds
                        for k in llr_layers:
                            scores[f"llr{k}_iw"], _ = importance_weighted_likelihood_ratio(
                                model, split.test_x, proposal, k, num_particles=iwae_particles,
                                batch_size=max(1, learn.test_batch_size // iwae_particles), seed=seed, progress=progress)
                layer_log_probs = getattr(model.prior, "layer_log_probs", None)
                if layer_log_probs is not None:
                    with torch.no_grad():
                        scores["prior_top"] = -layer_log_probs(inferred.z.to(model.prior.base_loc.device))[:, 0].cpu()
                for k in llr_layers:
                    with module_mode(model, training=mode == "train"):
                        scores[f"llr{k}"], _ = lower_layer_likelihood_ratio(
                            model, split.test_x, inferred.z, k, batch_size=learn.test_batch_size, seed=seed, progress=progress)
            test_seconds = time.perf_counter() - started
            for name in scores:
                rows.append({
                    "heldout": split.heldout, "prior": preset.model.prior, "model": kind, "guide": preset.guide.kind,
                    "encoder": preset.guide.encoder, "score": name, "seed": seed,
                    **anomaly_metrics(split.test_is_anomaly, scores[name]),
                    "preset": preset_name, "epochs": epochs_trained, "test_steps": learn.test_steps, "batchnorm": mode,
                    "n_train": int(split.train_x.shape[0]), "n_test": int(split.test_x.shape[0]),
                    "train_seconds": round(train_seconds, 1), "test_seconds": round(test_seconds, 1),
                })
            scores_by_mode[mode] = scores
            if first_scores is None:
                first_scores, latents = scores, inferred.z
    return AnomalyResult(rows, first_scores, split.test_is_anomaly, split.test_x, history, model, config, latents,
                         scores_by_mode, refits)
