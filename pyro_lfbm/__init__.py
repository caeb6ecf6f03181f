"""pyro-lfbm: latent-space flow-based priors with short-run Langevin inference, in Pyro.

The joint p(x, z) = p_α(z) p_β(x | z) is a Pyro model (:class:`LatentModel`) whose prior is a
learned normalizing flow (:class:`FlowPrior`, LFBM), a Gaussian (:class:`GaussianPrior`, ABP) or
a latent energy-based model (:class:`EnergyPrior`, LEBM); its posterior is inferred by short-run
Langevin dynamics (:class:`LangevinGuide`), which makes ``pyro.infer.SVI`` the paper's learning
algorithm.
"""

from pyro_lfbm.infer import EncoderGuide, HybridGuide, LangevinGuide, LangevinKernel, langevin_step, short_run_langevin
from pyro_lfbm.models import GLF, CoopFlow, HierarchicalLatentModel, ImageFlow, LatentModel
from pyro_lfbm.priors import EnergyPrior, FlowPrior, GaussianPrior, LatentPrior
from pyro_lfbm.train.loop import History, StepTrainer, fit_steps
from pyro_lfbm.train.svi import OptimConfig, SVITrainer, fit

__version__ = "0.1.0"

__all__ = [
    "CoopFlow",
    "EncoderGuide",
    "EnergyPrior",
    "FlowPrior",
    "GLF",
    "GaussianPrior",
    "HierarchicalLatentModel",
    "History",
    "HybridGuide",
    "ImageFlow",
    "LangevinGuide",
    "LangevinKernel",
    "LatentModel",
    "LatentPrior",
    "OptimConfig",
    "SVITrainer",
    "StepTrainer",
    "fit",
    "fit_steps",
    "langevin_step",
    "short_run_langevin",
]
