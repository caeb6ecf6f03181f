"""The common interface of every latent prior."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import pyro.distributions as dist
from pyro.nn import PyroModule


class LatentPrior(PyroModule):
    """Base class of the latent priors p(z) over a ``latent_dim`` vector.

    Subclasses implement :meth:`dist`, a Pyro distribution with ``event_shape == (latent_dim,)``
    whose ``log_prob`` is differentiable in ``z`` and in the prior's parameters.

    :param int latent_dim: size D of the latent vector.

    ``normalised_density`` says whether ``log_prob`` is the normalised log density (True here; a prior
    whose ``log_prob`` is known only up to a constant, such as the energy prior, sets it False, and what
    needs a true likelihood, e.g. :func:`~pyro_lfbm.train.refit.refit_prior`, refuses it).
    """

    normalised_density: bool = True

    def __init__(self, latent_dim: int):
        super().__init__()
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = latent_dim
        # Buffers so that the base N(0, I) follows the module across devices.
        self.register_buffer("base_loc", torch.zeros(latent_dim))
        self.register_buffer("base_scale", torch.ones(latent_dim))

    def base_dist(self) -> dist.Distribution:
        """The standard normal N(0, I) over R^D, event shape (D,)."""
        return dist.Normal(self.base_loc, self.base_scale).to_event(1)

    def dist(self) -> dist.Distribution:
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for ``z`` of shape (..., D); returns shape (...)."""
        return self.dist().log_prob(z)

    def tensor_log_prob_fn(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """log p(z) as plain tensor code, z (B, D) -> (B,), with the prior's modules captured
        (no distribution or transform objects, no Pyro module machinery: what
        ``torch.compile`` can put into one graph), the density as inside posterior inference
        (an unnormalised one is fine: the chain needs its gradient). The fused chain of
        :mod:`pyro_lfbm.infer.accelerate` uses it. ``None`` (this default): the prior has none,
        and the fused chain calls :meth:`log_prob` (the same numbers; it may not compile into
        one graph). Override it in a prior of your own."""
        return None

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Draw z of shape ``sample_shape + (D,)`` (no gradient)."""
        with torch.no_grad():
            return self.dist().sample(torch.Size(sample_shape))

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"
