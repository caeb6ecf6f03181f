"""Training: the one epoch loop (:func:`fit_steps`: checkpoints, exact resume, non-finite guards,
progress), SVI learning on top of it (:class:`SVITrainer`, :func:`fit`), atomic checkpoints, the
named presets and the recipe that builds and fits a model from a preset (:func:`fit_preset`)."""

from pyro_lfbm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_lfbm.train.loop import MAX_SKIPS_IN_A_ROW, History, StepTrainer, check_training_data, fit_steps, trainer_state
from pyro_lfbm.train.presets import PRESETS, PRIORS, LearnConfig, ModelConfig, Preset, get_preset
from pyro_lfbm.train.recipe import fit_preset, run_tag, with_epochs
from pyro_lfbm.train.svi import OptimConfig, SVITrainer, check_param_store, fit

__all__ = [
    "CheckpointError",
    "History",
    "LearnConfig",
    "MAX_SKIPS_IN_A_ROW",
    "ModelConfig",
    "OptimConfig",
    "PRESETS",
    "PRIORS",
    "Preset",
    "SVITrainer",
    "StepTrainer",
    "check_param_store",
    "check_training_data",
    "fit",
    "fit_preset",
    "fit_steps",
    "get_preset",
    "load_checkpoint",
    "run_tag",
    "save_checkpoint",
    "trainer_state",
    "with_epochs",
]
