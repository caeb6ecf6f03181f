"""The standard normal latent prior (alternating back-propagation, ABP)."""

from __future__ import annotations

import pyro.distributions as dist

from pyro_lfbm.priors.base import LatentPrior


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
