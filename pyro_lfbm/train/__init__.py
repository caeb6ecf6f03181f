"""Training: the one epoch loop (:func:`fit_steps`: checkpoints, exact resume, non-finite guards,
progress) and every trainer it drives: SVI (:class:`SVITrainer`, :func:`fit`; LFBM, ABP, LEBM,
LFBM-VAE and LFBM-hybrid through the one recipe :func:`build` / :func:`train_recipe`), the
post-hoc encoder (:func:`fit_encoder`), the weights' moving average (:class:`ExponentialAverage`), the second-stage density of a trained model's codes
(:func:`refit_prior`), GLF (:class:`GLFTrainer`) and CoopFlow
(:class:`CoopFlowTrainer`); atomic checkpoints; presets and configurations as frozen dataclasses."""

from pyro_lfbm.train.averaging import ExponentialAverage
from pyro_lfbm.train.checkpoint import CheckpointError, Checkpointing, load_checkpoint, save_checkpoint
from pyro_lfbm.train.loop import MAX_SKIPS_IN_A_ROW, History, StepTrainer, check_training_data, fit_steps, trainer_state
from pyro_lfbm.train.coopflow import CoopFlowConfig, CoopFlowOptim, CoopFlowTrainer, coopflow_preset
from pyro_lfbm.train.encoder import fit_encoder
from pyro_lfbm.train.glf import GLFConfig, GLFTrainer, glf_preset
from pyro_lfbm.train.presets import GUIDES, PRESETS, PRIOR_KINDS, PRIORS, PriorKind, register_prior, GuideConfig, LearnConfig, ModelConfig, Preset, get_preset
from pyro_lfbm.train.recipe import Recipe, build, fit_preset, isolated, run_tag, train_recipe, with_epochs
from pyro_lfbm.train.refit import CodeDensityFit, refit_prior
from pyro_lfbm.train.svi import OptimConfig, SVITrainer, check_param_store, fit

__all__ = [
    "CheckpointError",
    "CodeDensityFit",
    "CoopFlowConfig",
    "CoopFlowOptim",
    "CoopFlowTrainer",
    "ExponentialAverage",
    "GLFConfig",
    "GLFTrainer",
    "GUIDES",
    "GuideConfig",
    "History",
    "LearnConfig",
    "MAX_SKIPS_IN_A_ROW",
    "ModelConfig",
    "OptimConfig",
    "PRESETS",
    "PRIORS",
    "PRIOR_KINDS",
    "PriorKind",
    "register_prior",
    "Preset",
    "Recipe",
    "SVITrainer",
    "StepTrainer",
    "build",
    "check_param_store",
    "check_training_data",
    "coopflow_preset",
    "fit",
    "fit_encoder",
    "fit_preset",
    "fit_steps",
    "get_preset",
    "glf_preset",
    "isolated",
    "load_checkpoint",
    "Checkpointing",
    "refit_prior",
    "run_tag",
    "save_checkpoint",
    "train_recipe",
    "trainer_state",
    "with_epochs",
]
