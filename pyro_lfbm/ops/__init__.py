"""Numerical building blocks below every other layer of the package (pure tensor code)."""

from pyro_lfbm.ops.bernoulli import bernoulli_log_likelihood, bernoulli_pixel_log_prob
from pyro_lfbm.ops.gaussian import gaussian_log_likelihood
from pyro_lfbm.ops.langevin import langevin_move

__all__ = ["bernoulli_log_likelihood", "bernoulli_pixel_log_prob", "gaussian_log_likelihood", "langevin_move"]
