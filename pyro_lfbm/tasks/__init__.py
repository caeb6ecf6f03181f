"""The paper's tasks as functions with explicit arguments that return results (no command line,
no printing, no global state: every model is trained with its own seeded random stream and its own
Pyro param store, :func:`pyro_lfbm.train.isolated`; progress bars only when asked for): anomaly detection (:mod:`~pyro_lfbm.tasks.anomaly`), recovery from
occluded training images (:mod:`~pyro_lfbm.tasks.recovery`), inpainting
(:mod:`~pyro_lfbm.tasks.inpainting`) and synthesis (:mod:`~pyro_lfbm.tasks.synthesis`)."""

from pyro_lfbm.tasks.anomaly import AnomalyResult, run_anomaly
from pyro_lfbm.tasks.inpainting import hole_mask, inpaint, inpainting_errors, paper_hole
from pyro_lfbm.tasks.recovery import RecoveryResult, reconstruct, recovery_errors, region_mse, run_recovery
from pyro_lfbm.tasks.synthesis import sample_images, synthesis_metrics, test_reconstruction_mse

__all__ = [
    "AnomalyResult",
    "RecoveryResult",
    "hole_mask",
    "inpaint",
    "inpainting_errors",
    "paper_hole",
    "reconstruct",
    "recovery_errors",
    "region_mse",
    "run_anomaly",
    "run_recovery",
    "sample_images",
    "synthesis_metrics",
    "test_reconstruction_mse",
]
