"""Latent priors p(z): the common interface and its implementations."""

from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.priors.energy import EnergyPrior
from pyro_lfbm.priors.flow import FlowPrior
from pyro_lfbm.priors.gaussian import GaussianPrior
from pyro_lfbm.priors.top_down import TopDownPrior

__all__ = ["EnergyPrior", "FlowPrior", "GaussianPrior", "LatentPrior", "TopDownPrior"]
