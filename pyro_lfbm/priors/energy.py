"""The latent energy-based prior of LEBM (Pang et al., 2020)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import pyro.distributions as dist
from torch.distributions import constraints

from pyro_lfbm._context import in_posterior_inference
from pyro_lfbm.nets.mlp import MLP
from pyro_lfbm.ops.langevin import langevin_move, standard_normal
from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.priors.gaussian import standard_normal_log_prob


class EnergyDistribution(dist.TorchDistribution):
    r"""p(z) ∝ exp(-E(z)) N(z; 0, I), event shape (D,).

    ``log_prob`` returns the *unnormalised* log density -E(z) + log N(z; 0, I). When
    ``contrastive=True`` it also adds the zero-valued term
    ``mean_j E(z⁻_j) - stop_gradient(mean_j E(z⁻_j))`` over negative samples z⁻ drawn by
    short-run prior Langevin, so that the gradient of ``log_prob`` with respect to the
    energy parameters is the maximum-likelihood gradient -∇E(z) + E_p[∇E(z⁻)]. The
    negatives are drawn lazily, once per distribution object, at the first ``log_prob``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, prior: "EnergyPrior", contrastive: bool = False, validate_args=None):
        self.prior = prior
        self.contrastive = contrastive
        self._normaliser_term: Optional[torch.Tensor] = None
        super().__init__(torch.Size(), torch.Size([prior.latent_dim]), validate_args=validate_args)

    def unnormalised_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """-E(z) + log N(z; 0, I) for z of shape (..., D); returns (...)."""
        return -self.prior.energy(z) + self.prior.base_dist().log_prob(z)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = self.unnormalised_log_prob(value)
        if self.contrastive:
            if self._normaliser_term is None:
                num = max(1, value.shape[:-1].numel())
                negatives = self.prior.sample_negatives(num, device=value.device)
                mean_energy = self.prior.energy(negatives).mean()
                self._normaliser_term = mean_energy - mean_energy.detach()
            log_p = log_p + self._normaliser_term
        return log_p

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        z = self.prior.sample_negatives(max(1, shape.numel()), device=self.prior.base_loc.device)
        return z.reshape(shape + self.event_shape)

    def expand(self, batch_shape, _instance=None):
        # Broadcasting by plates only changes shapes, never the density.
        new = EnergyDistribution.__new__(EnergyDistribution)
        new.prior, new.contrastive, new._normaliser_term = self.prior, self.contrastive, None
        super(EnergyDistribution, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new


class EnergyPrior(LatentPrior):
    r"""Latent energy-based prior p_α(z) ∝ exp(-E_α(z)) N(z; 0, I) (LEBM).

    :param int latent_dim: D.
    :param hidden_dims: widths of the energy MLP (LEBM: (200, 200)).
    :param str activation: activation of the MLP (LEBM default: GELU).
    :param int num_prior_steps: short-run prior Langevin steps for negatives and samples (60).
    :param float prior_step_size: their step size s (0.4): z ← z + (s²/2) ∇log p(z) + s ε.

    While the module is in training mode and not inside posterior inference,
    ``dist().log_prob`` carries the contrastive term described in :class:`EnergyDistribution`,
    so ``SVI(model, LangevinGuide(model), ...)`` takes the correct LEBM learning step.
    """

    normalised_density = False  # log_prob is -E(z) + log N(z; 0, I), without log Z

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int] = (200, 200),
        activation: str = "gelu",
        num_prior_steps: int = 60,
        prior_step_size: float = 0.4,
    ):
        super().__init__(latent_dim)
        if num_prior_steps < 1 or prior_step_size <= 0:
            raise ValueError("num_prior_steps must be >= 1 and prior_step_size > 0")
        self.energy_net = MLP(latent_dim, list(hidden_dims), 1, activation=activation)
        self.num_prior_steps = num_prior_steps
        self.prior_step_size = prior_step_size

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """E_α(z) for z of shape (..., D); returns (...)."""
        return self.energy_net(z).squeeze(-1)

    def tensor_log_prob_fn(self):
        """z (B, D) -> -E(z) + log N(z; 0, I) (B,), the unnormalised density posterior inference
        uses (no contrastive term; see :meth:`~pyro_lfbm.priors.base.LatentPrior.tensor_log_prob_fn`)."""
        energy_net = self.energy_net

        def energy_log_prob(z: torch.Tensor) -> torch.Tensor:
            return -energy_net(z).squeeze(-1) + standard_normal_log_prob(z)

        return energy_log_prob

    def dist(self) -> EnergyDistribution:
        # Touching self.energy_net here (inside the model's PyroModule context) registers its
        # parameters with Pyro, so that SVI optimises them.
        _ = self.energy_net
        return EnergyDistribution(self, contrastive=self.training and not in_posterior_inference())

    def sample_negatives(self, num: int, device=None) -> torch.Tensor:
        """Short-run prior Langevin from N(0, I): (num, D) samples, detached, in the dtype of the
        prior's buffers (float64 after ``.double()``), on ``device`` (default: the prior's).

        Each step is :func:`~pyro_lfbm.ops.langevin.langevin_move` on log p(z) = -E(z) - ‖z‖²/2."""
        step = self.prior_step_size
        device = self.base_loc.device if device is None else device
        z = standard_normal((num, self.latent_dim), device=device, dtype=self.base_loc.dtype)
        with torch.enable_grad():
            for _ in range(self.num_prior_steps):
                z = z.detach().requires_grad_(True)
                log_p = -self.energy(z) - 0.5 * (z * z).sum(-1)
                (grad,) = torch.autograd.grad(log_p.sum(), z)
                z = langevin_move(z.detach(), grad, step)
        return z.detach()

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_prior_steps={self.num_prior_steps}, prior_step_size={self.prior_step_size}"
