"""Latent priors p(z): the common interface and its implementations."""

from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.priors.flow import FlowPrior
from pyro_lfbm.priors.gaussian import GaussianPrior
from pyro_lfbm.priors.top_down import TopDownPrior

__all__ = ["FlowPrior", "GaussianPrior", "LatentPrior", "TopDownPrior"]

try:  # written in parallel; becomes a plain import once energy.py lands
    from pyro_lfbm.priors.energy import EnergyPrior
except ImportError:  # pragma: no cover
    pass
else:
    __all__.append("EnergyPrior")
