"""The standard normal latent prior (alternating back-propagation, ABP)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from pyro_lfbm.priors.base import LatentPrior

_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))  # the constant of Normal.log_prob, computed the same way


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) over the last dimension: ``x`` (..., D) -> (...).

    The value of ``Normal(0, 1).to_event(1).log_prob(x)`` (the same element-wise expression,
    -(x - 0)²/(2·1) - log 1 - log √(2π), in the same order, then the same sum), without building
    distribution objects or broadcasting the unit scale over ``x``: cheap enough for every
    Langevin step, and plain tensor code for ``torch.compile``.
    """
    return (-(x * x) / 2 - _HALF_LOG_2PI).sum(-1)


class GaussianPrior(LatentPrior):
    """
    Fixed prior :math:`p(z) = \\mathcal{N}(0, I_D)`, the ABP baseline; it has no parameters.

    Example::

        >>> import torch
        >>> prior = GaussianPrior(8)
        >>> prior.log_prob(torch.zeros(3, 8)).shape
        torch.Size([3])

    :param int latent_dim: size D of the latent vector.
    """

    def dist(self) -> dist.Distribution:
        """:returns: ``Normal(0, 1).to_event(1)`` with event shape ``(latent_dim,)``."""
        return self.base_dist()

    def tensor_log_prob_fn(self):
        """:func:`standard_normal_log_prob` (see :meth:`LatentPrior.tensor_log_prob_fn`)."""
        return standard_normal_log_prob

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) for ``z`` of shape (..., D); returns (...). The value of
        ``self.dist().log_prob(z)`` (:func:`standard_normal_log_prob`; the support check of the
        distribution runs when Pyro's validation is on)."""
        _check_latent(z, self.latent_dim)
        if torch.distributions.Distribution._validate_args:
            self.base_dist()._validate_sample(z)
        return standard_normal_log_prob(z)


def _check_latent(z: torch.Tensor, latent_dim: int) -> None:
    if z.dim() < 1 or z.shape[-1] != latent_dim:
        raise ValueError(f"expected z of shape (..., {latent_dim}), got {tuple(z.shape)}")
