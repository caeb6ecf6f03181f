"""One run of the anomaly-detection experiment from the command line's settings: the checked
preset, the split, :func:`pyro_lfbm.tasks.anomaly.run_anomaly`, and the run's files.

Shared by ``experiments/anomaly.py`` (one run) and ``experiments/anomaly_table.py`` (the grid of
held-out digits × priors × seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import pandas as pd
import torch

from pyro_lfbm.data import heldout_digit_split
from pyro_lfbm.harness.cli import UsageError, run_record, save_tensors, staged_output, write_json
from pyro_lfbm.harness.plots import plot_precision_recall, plot_score_histograms, save_ranked_grid
from pyro_lfbm.tasks.anomaly import AnomalyResult, run_anomaly as run_anomaly_task
from pyro_lfbm.train import distributed
from pyro_lfbm.train.presets import PRESETS, get_preset, preset_model


#: ``--batchnorm`` choices and the BatchNorm modes each scores in (:data:`pyro_lfbm.tasks.anomaly.BATCHNORM_MODES`).
BATCHNORM_CHOICES = {"eval": ("eval",), "train": ("train",), "recalibrated": ("recalibrated",),
                     "both": ("eval", "train"), "all": ("eval", "train", "recalibrated")}


@dataclass
class AnomalyRunConfig:
    heldout: int = 7
    dataset: str = "mnist"
    prior: str = "flow"
    preset: str = "cpu"
    seed: int = 1
    epochs: Optional[int] = None
    test_steps: Optional[int] = None
    test_batch_size: Optional[int] = None
    batchnorm: str = "eval"
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    data_root: Optional[str] = None
    device: str = "cpu"
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    eval_only: Optional[str] = None
    progress: bool = True
    sigma: Optional[float] = None
    lr: Optional[float] = None
    lr_decay: Optional[float] = None
    model_overrides: Optional[Dict] = None
    skip_nonfinite: bool = False
    chain: Optional[str] = None
    model: Optional[str] = None
    guide: Optional[str] = None
    sampler: str = "ula"
    encoder: str = "mean-field"
    iwae_particles: int = 0
    llr_layers: Tuple[int, ...] = ()
    refit_epochs: int = 0
    ema: Optional[float] = None

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = preset_model_name(self.preset)
        if self.guide is None:
            self.guide = preset_guide(self.preset)
        if self.chain is None:
            self.chain = default_chain(self.model)


def preset_guide(preset: str) -> str:
    """The training guide a named preset brings (``"langevin"`` for an unknown name, which is refused later)."""
    return PRESETS[preset]().guide.kind if preset in PRESETS else "langevin"


def preset_model_name(preset: str) -> str:
    """The model a named preset brings, ``"latent"`` or ``"hierarchical"`` (``"latent"`` for an unknown name)."""
    return preset_model(PRESETS[preset]()) if preset in PRESETS else "latent"


#: What a checkpoint must agree on to be resumed or scored: the model config and, for the encoder and
#: hybrid guides, the guide config (absent from both for the default Langevin guide).
CONFIG_KEYS = ("model", "guide")


RUN_FILES = ("metrics.csv", "history.csv", "scores.pt", "precision_recall.png", "score_histograms.png",
             "ranked.png", "run.json")


def run_variant(cfg: AnomalyRunConfig, guide: str = "langevin", model: str = "latent") -> str:
    """The model and guide of a run when not the default LFBM (``"hierarchical"``, ``"encoder"``,
    ``"hierarchical-encoder"``, ``"underdamped"``, ``"hierarchical-encoder-conditional"``, ``"fashion-mnist"``, ...;
    ``""`` for ``--model latent --guide langevin --sampler ula`` on MNIST): part of its
    folder and checkpoint names, so that runs of different models never share them. ``guide`` and ``model``:
    those left unnamed (:func:`run_recipe` passes the preset's own)."""
    parts = ((cfg.model, model), (cfg.guide, guide), (cfg.sampler, "ula"), (cfg.encoder, "mean-field"),
             (cfg.dataset, "mnist"))
    return "-".join(part for part, default in parts if part != default)


def run_recipe(run: Dict) -> str:
    """A readable name for what a run trained, from its ``run.json`` ``config["run"]``: the preset, the
    prior unless it is the flow (LFBM's), the :func:`run_variant` and every override, e.g. ``"cpu"``,
    ``"paper"``, ``"cpu-hybrid ebm"``, ``"cpu hierarchical-encoder"``, ``"cpu lr=0.0004 generator_hidden=512"``,
    ``"cpu-hybrid test_steps=20"``. Runs of one recipe at different lengths or seeds share it."""
    cfg = AnomalyRunConfig(**{k: v for k, v in run.items() if k in AnomalyRunConfig.__dataclass_fields__})
    overrides = {"lr": cfg.lr, "lr_decay": cfg.lr_decay, "sigma": cfg.sigma, "test_steps": cfg.test_steps, "ema": cfg.ema, **(cfg.model_overrides or {})}
    parts = [cfg.preset, "" if cfg.prior == "flow" else cfg.prior, run_variant(cfg, guide=preset_guide(cfg.preset), model=preset_model_name(cfg.preset)),
             *(f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"
               for key, value in overrides.items() if value is not None)]
    return " ".join(part for part in parts if part)


def run_folder_name(heldout: int, prior: str, seed: int, variant: str = "") -> str:
    """The folder of one run's files: ``heldout<d>-<prior>[-<variant>]-seed<s>`` (see :func:`run_variant`)."""
    return f"heldout{heldout}-{prior}{'-' + variant if variant else ''}-seed{seed}"


def checkpoint_name(cfg: AnomalyRunConfig) -> str:
    variant = run_variant(cfg)
    return f"lfbm-{cfg.prior}{'-' + variant if variant else ''}-heldout{cfg.heldout}-seed{cfg.seed}-{cfg.preset}.pt"


def anomaly_preset(cfg: AnomalyRunConfig):
    """The preset of a run with every override of ``cfg`` applied and checked.

    :raises UsageError: one line naming the option with an impossible value, or a combination
        that cannot work (``--limit-train`` below one training batch, ``--limit-test`` below 2, a
        scoring batch of one image with batch statistics, ``--eval-only`` with ``--resume`` or
        ``--epochs``, or a checkpoint file that does not exist).
    """
    try:
        preset = get_preset(cfg.preset, cfg.prior, cfg.guide, cfg.model)
        if cfg.sampler != "ula":
            preset = preset.with_guide(preset.guide.kind, sampler=cfg.sampler)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if cfg.encoder != "mean-field":
        if preset.guide.kind == "langevin":
            raise UsageError(f"--encoder {cfg.encoder} is the inference network of the encoder and hybrid guides; "
                             "add --guide encoder or --guide hybrid")
        if not preset.model.layer_dims:
            raise UsageError(f"--encoder {cfg.encoder} conditions a hierarchical model's layers on each other; add --model hierarchical")
        preset = preset.with_guide(preset.guide.kind, encoder=cfg.encoder)
    model, learn = preset.model, preset.learn
    if cfg.sigma is not None:
        if not cfg.sigma > 0:
            raise UsageError(f"--sigma must be positive, got {cfg.sigma}")
        model = replace(model, sigma=cfg.sigma)
    overrides = dict(cfg.model_overrides or {})
    for key in overrides:
        if not hasattr(model, key):
            raise UsageError(f"--set {key}=...: the model config has no field {key!r}")
    if "layer_dims" in overrides and not model.layer_dims:
        raise UsageError("--set layer_dims=...: the latent sizes of a hierarchical model's layers; add --model hierarchical")
    if "layer_prior" in overrides and not model.layer_dims:
        raise UsageError("--set layer_prior=...: the prior over a hierarchical model's layers; add --model hierarchical")
    if "layer_dims" in overrides and "latent_dim" not in overrides:  # the joint latent is the layers' concatenation
        overrides["latent_dim"] = sum(overrides["layer_dims"])
    if overrides:
        try:
            model = replace(model, **overrides)
        except ValueError as err:
            raise UsageError(f"--set: {err}") from None
    if cfg.lr is not None:
        if not cfg.lr > 0:
            raise UsageError(f"--lr must be positive, got {cfg.lr}")
        learn = replace(learn, optim=replace(learn.optim, lr=cfg.lr))
    if cfg.lr_decay is not None:
        if not 0 < cfg.lr_decay <= 1:
            raise UsageError(f"--lr-decay must be a factor per epoch in (0, 1], e.g. 0.95, got {cfg.lr_decay}")
        learn = replace(learn, optim=replace(learn.optim, gamma=cfg.lr_decay))
    if cfg.ema is not None:
        if not 0 <= cfg.ema < 1:
            raise UsageError(f"--ema must be a decay in (0, 1), e.g. 0.999, or 0 for the last weights, got {cfg.ema}")
        learn = replace(learn, optim=replace(learn.optim, ema_decay=cfg.ema or None))
    if cfg.epochs is not None:
        if cfg.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {cfg.epochs}")
        learn = replace(learn, epochs=cfg.epochs)
    if cfg.test_steps is not None:
        if cfg.test_steps < 0:
            raise UsageError(f"--test-steps must be at least 0, got {cfg.test_steps}")
        learn = replace(learn, test_steps=cfg.test_steps)
    if cfg.batchnorm not in BATCHNORM_CHOICES:
        raise UsageError(f"--batchnorm must be one of {', '.join(BATCHNORM_CHOICES)}, got {cfg.batchnorm!r}")
    smallest = 2 if "train" in BATCHNORM_CHOICES[cfg.batchnorm] else 1  # BatchNorm on batch statistics needs two images
    if cfg.test_batch_size is not None:
        if cfg.test_batch_size < smallest:
            raise UsageError(f"--test-batch-size must be at least {smallest} with --batchnorm {cfg.batchnorm}, got {cfg.test_batch_size}")
        learn = replace(learn, test_batch_size=cfg.test_batch_size)
    if not 0 <= cfg.heldout <= 9:
        raise UsageError(f"--heldout must be a digit 0-9, got {cfg.heldout}")
    if cfg.iwae_particles < 0:
        raise UsageError(f"--iwae-particles must be at least 0, got {cfg.iwae_particles}")
    if cfg.iwae_particles and preset.guide.kind == "langevin":
        raise UsageError("--iwae-particles draws z from an encoder and the langevin guide has none; "
                         "add --guide encoder or --guide hybrid")
    if cfg.iwae_particles and "eval" not in BATCHNORM_CHOICES[cfg.batchnorm]:
        raise UsageError("--iwae-particles scores with BatchNorm on running statistics; use --batchnorm eval, both or all")
    if cfg.refit_epochs < 0:
        raise UsageError(f"--refit-epochs must be at least 0, got {cfg.refit_epochs}")
    if cfg.refit_epochs and preset.model.prior != "flow":
        raise UsageError(f"--refit-epochs refits the prior by maximum likelihood, and the {preset.model.prior} prior cannot be "
                         "(the Gaussian has no parameters, the energy prior no normalised density); use --prior flow")
    if cfg.llr_layers:
        layers = len(preset.model.layer_dims or ())
        if not layers:
            raise UsageError("--llr-layers redraws the lowest latent layers of a hierarchical model; add --model hierarchical")
        bad = [k for k in cfg.llr_layers if not 1 <= k < layers]
        if bad:
            raise UsageError(f"--llr-layers takes layer counts from 1 to {layers - 1} (the model has {layers} layers), got {bad}")
        if cfg.iwae_particles and model.layer_prior == "top-down" and cfg.encoder != "mean-field":
            raise UsageError("--iwae-particles with --llr-layers takes Havtorn's ratio as two bounds, which needs one "
                             f"Gaussian q per image, and the {cfg.encoder} encoder's q is a chain; use --encoder mean-field")
    if learn.test_steps == 0 and preset.guide.kind == "langevin":
        raise UsageError(
            "--test-steps 0 scores at the encoder's z, and the langevin guide has no encoder; pass --test-steps 1 "
            "or more, or --guide encoder or hybrid" if cfg.test_steps is not None else
            f"the {cfg.preset} preset scores at the encoder's z, and --guide langevin has no encoder; add "
            "--test-steps 100 (or take --preset cpu, the paper's Langevin recipe)")
    preset = replace(preset, model=model, learn=learn)
    try:
        preset.check()
    except ValueError as err:
        raise UsageError(f"--set: {err}") from None
    if cfg.limit_train is not None and cfg.limit_train < learn.batch_size:
        raise UsageError(f"--limit-train {cfg.limit_train} is less than one training batch ({learn.batch_size} images in the "
                         f"{cfg.preset} preset); pass at least {learn.batch_size}")
    if cfg.limit_test is not None and cfg.limit_test < 2:
        raise UsageError(f"--limit-test {cfg.limit_test} is too few: AUPRC needs normal and anomalous test images; pass at least 2")
    if cfg.eval_only:
        if cfg.resume:
            raise UsageError("--eval-only scores a trained checkpoint and --resume trains one; pass one of them")
        if cfg.epochs is not None:
            raise UsageError("--epochs has no effect with --eval-only (the checkpoint's epochs are scored); drop it")
        if not Path(cfg.eval_only).is_file():
            raise UsageError(f"--eval-only {cfg.eval_only}: no such checkpoint file")
    return preset


#: ``--chain`` choices: the compiled log joint (torch.compile; eager if compiling fails) or the eager reference.
CHAINS = ("compiled", "eager")

CHAIN_HELP = ("Langevin chains for training and scoring: 'compiled' (default; 'eager' with --model hierarchical) "
              "compiles the log joint with "
              "torch.compile once per batch shape and BatchNorm mode (seconds to a minute each, then each step "
              "about 1.5x faster on a CPU; falls back to eager with a warning if compiling fails; a torchrun job "
              "runs eagerly); 'eager' is the reference, same numbers up to float rounding")


def default_chain(model: str) -> str:
    """The ``--chain`` of a run that does not name one: ``"compiled"``, but ``"eager"`` for the
    hierarchical model, whose compiled chain was measured slower than the eager one with BatchNorm on
    batch statistics (training; 2-core CPU, inductor: 163 against 124 ms per step at batch 100 of the
    cpu preset) and faster only on running statistics (80 against 141 ms)."""
    return "eager" if model == "hierarchical" else "compiled"


def compiled_chain(chain: str) -> bool:
    """Whether a run's chains are compiled: ``--chain compiled`` in a single process (a torchrun job's
    chains run eagerly: their BatchNorm layers synchronise across the processes)."""
    if chain not in CHAINS:
        raise UsageError(f"--chain must be one of {', '.join(CHAINS)}, got {chain!r}")
    return chain == "compiled" and distributed.current() is None


def run_config_dict(cfg: AnomalyRunConfig, preset) -> Dict:
    """What a run's checkpoint and ``run.json`` record: the model and learning settings and the run's options."""
    config = {"model": preset.to_dict()["model"], "learn": preset.to_dict()["learn"], "run": vars(cfg).copy()}
    if "guide" in preset.to_dict():
        config["guide"] = preset.to_dict()["guide"]
    for key in ("epochs", "test_steps", "test_batch_size"):
        config["learn"][key] = getattr(preset.learn, key)
    return config


def run_split(data_root, heldout: int, seed: int, limit_train: Optional[int] = None,
              limit_test: Optional[int] = None, dataset: str = "mnist"):
    """The held-out-class split of a run (its subset under ``--limit-train`` / ``--limit-test``): MNIST's
    digits, or ``dataset="fashion-mnist"``'s classes (a development task beside the reported MNIST digits).

    :raises UsageError: an impossible ``heldout``; :class:`~pyro_lfbm.data.DataError`: missing files.
    """
    try:
        split = heldout_digit_split(data_root, heldout=heldout, seed=seed, dataset=dataset)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if limit_train or limit_test:
        split = split.subset(limit_train, limit_test, seed=seed)
    return split


def run_anomaly(cfg: AnomalyRunConfig) -> AnomalyResult:
    """Train LFBM (or ABP / LEBM) on the normal images of the held-out-digit split and score its test set."""
    preset = anomaly_preset(cfg)
    split = run_split(cfg.data_root, cfg.heldout, cfg.seed, cfg.limit_train, cfg.limit_test, cfg.dataset)
    config = run_config_dict(cfg, preset)
    checkpoint_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    return run_anomaly_task(
        preset, split, seed=cfg.seed, batchnorm=BATCHNORM_CHOICES[cfg.batchnorm],
        device=torch.device(cfg.device), resume=cfg.resume, trained_checkpoint=cfg.eval_only,
        checkpoint_path=checkpoint_dir / checkpoint_name(cfg) if checkpoint_dir and not cfg.eval_only else None,
        config=config, config_keys=CONFIG_KEYS, preset_name=cfg.preset, progress=cfg.progress,
        skip_nonfinite=cfg.skip_nonfinite, compile_chain=compiled_chain(cfg.chain), iwae_particles=cfg.iwae_particles,
        llr_layers=tuple(cfg.llr_layers), refit_epochs=cfg.refit_epochs,
    )


def save_anomaly_run(result: AnomalyResult, cfg: AnomalyRunConfig, out: Path) -> None:
    """Write one run's files (:data:`RUN_FILES`) into ``out``, all at once or not at all.

    metrics.csv has one row per BatchNorm mode and decision function; scores.pt holds the test
    scores of the first mode (each shape ``(N_test,)``), ``is_anomaly``, and under ``"batchnorm"`` the
    scores of every scored mode (``{mode: {score: (N_test,)}}``); the figures use the first mode's, and
    ranked.png (the 32 highest-scoring test images above the 32 lowest) ranks them by the preset's decision
    function (:attr:`~pyro_lfbm.train.presets.Preset.score`), the one the command prints.
    For a model with several latent sites (``--model hierarchical``) scores.pt also holds the
    inferred ``z`` (N_test, D) of the first mode's scores and the sites' ``latent_dims``, so that per-layer
    scores (e.g. Havtorn et al.'s likelihood ratios, conditioning on the top layers) can be
    computed later without repeating the inference. With ``--refit-epochs``, refit_history.csv holds
    each mode's second-stage fit, one row per epoch (:class:`~pyro_lfbm.train.refit.CodeDensityFit`),
    with ``kept`` marking the epoch whose state scored.
    """
    saved = dict(result.scores) | {"is_anomaly": result.is_anomaly, "batchnorm": result.scores_by_mode}
    if len(getattr(result.model, "latent_sites", ())) > 1 and result.latents is not None:
        saved |= {"z": result.latents, "latent_dims": torch.tensor(result.model.latent_dims)}
    with staged_output(Path(out)) as stage:
        pd.DataFrame(result.rows).to_csv(stage / "metrics.csv", index=False)
        pd.DataFrame(result.history).to_csv(stage / "history.csv", index=False)
        if result.refits:
            pd.DataFrame([{"batchnorm": mode, **row, "kept": row["epoch"] == fit.best_epoch}
                          for mode, fit in result.refits.items() for row in fit.history]).to_csv(
                stage / "refit_history.csv", index=False)
        save_tensors(saved, stage / "scores.pt")
        variant = run_variant(cfg)
        title = f"held-out {cfg.heldout}, {cfg.prior} prior{', ' + variant if variant else ''}, seed {cfg.seed}"
        plot_precision_recall(result.is_anomaly, result.scores, stage / "precision_recall.png", title)
        plot_score_histograms(result.is_anomaly, result.scores, stage / "score_histograms.png", title)
        save_ranked_grid(result.test_x, result.scores[anomaly_preset(cfg).score], stage / "ranked.png")
        write_json(stage / "run.json", run_record({"config": result.config}))
