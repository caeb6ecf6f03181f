"""Posterior inference: short-run Langevin (guide and pure step function) and MCMC kernels."""

from pyro_lfbm.infer.dataset import InferenceResult, infer_dataset
from pyro_lfbm.infer.guide import LangevinGuide
from pyro_lfbm.infer.kernel import LangevinKernel
from pyro_lfbm.infer.langevin import LangevinState, evaluate, langevin_step, short_run_langevin, value_and_grad
from pyro_lfbm.infer.trace_log_joint import find_latent_sites, per_example_log_joint

__all__ = [
    "InferenceResult",
    "LangevinGuide",
    "LangevinKernel",
    "LangevinState",
    "evaluate",
    "find_latent_sites",
    "infer_dataset",
    "langevin_step",
    "per_example_log_joint",
    "short_run_langevin",
    "value_and_grad",
]
