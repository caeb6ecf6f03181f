"""Langevin (ULA) and Metropolis-adjusted Langevin (MALA) as a ``pyro.infer.mcmc`` kernel."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.langevin import LangevinState, evaluate, langevin_step
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, per_example_log_joint

Latents = Dict[str, torch.Tensor]


class LangevinKernel(MCMCKernel):
    r"""Batched Langevin kernel for :class:`pyro.infer.MCMC`, for long-run reference posteriors.

    Each iteration proposes, for every example b of the data plate,
    z'_b = z_b + (s²/2) ∇ log p(x_b, z_b) + s ξ_b. With ``adjust=False`` the proposal is always
    taken (unadjusted Langevin). With ``adjust=True`` (MALA) each example is accepted or rejected
    *on its own* with the Metropolis-Hastings ratio of its own log joint, so the acceptance
    rate does not collapse as the batch grows (one global test would couple all examples).

    :param model: a Pyro model with real-valued latent sites in one data plate.
    :param float step_size: s.
    :param bool adjust: apply the per-example Metropolis-Hastings correction (MALA).
    :param bool use_fast_path: use ``model.log_joint`` when available.

    Example::

        >>> mcmc = pyro.infer.MCMC(LangevinKernel(model, step_size=0.05, adjust=True),
        ...                        num_samples=500, warmup_steps=100)
        >>> mcmc.run(x)
        >>> mcmc.get_samples()["z"].shape      # (500, B, D)
    """

    def __init__(self, model: Callable, step_size: float = 0.01, adjust: bool = False, use_fast_path: bool = True):
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.model = model
        self.step_size = float(step_size)
        self.adjust = adjust
        self.use_fast_path = use_fast_path
        self.transforms: Dict = {}
        self._initial_params: Optional[Latents] = None
        self._reset_counters()

    def _reset_counters(self):
        self._num_proposals = 0
        self._accept_sum = 0.0  # sum over iterations of the fraction of examples accepted
        self._state: Optional[LangevinState] = None

    # -- MCMCKernel interface ---------------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        self._sites: LatentSites = find_latent_sites(self.model, args, kwargs)
        if self._initial_params is None:
            self._initial_params = dict(self._sites.initial)
        self._reset_counters()

    @property
    def initial_params(self) -> Optional[Latents]:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Latents):
        self._initial_params = params

    def log_density(self, latents: Latents) -> torch.Tensor:
        """Per-example log p(x, z), shape (B,)."""
        if self.use_fast_path and callable(getattr(self.model, "log_joint", None)):
            return self.model.log_joint(*self._args, **self._kwargs, **latents)
        return per_example_log_joint(self.model, latents, self._args, self._kwargs, self._sites.plate)

    def sample(self, params: Latents) -> Latents:
        with posterior_inference():
            state = self._state
            if state is None or any(state.position[k] is not params[k] for k in params):
                state = evaluate(LangevinState(dict(params)), self.log_density)
            proposal = evaluate(langevin_step(state, self.log_density, self.step_size), self.log_density)
        self._num_proposals += 1
        if not self.adjust:
            self._accept_sum += 1.0
            self._state = proposal
            return proposal.position
        log_ratio = (
            proposal.log_density
            - state.log_density
            + self._log_proposal(state, proposal)
            - self._log_proposal(proposal, state)
        )
        accept = torch.rand_like(log_ratio).log() < log_ratio  # (B,)
        self._accept_sum += accept.float().mean().item()
        position = {k: self._where(accept, proposal.position[k], state.position[k], k) for k in params}
        grad = {k: self._where(accept, proposal.grad[k], state.grad[k], k) for k in params}
        log_density = torch.where(accept, proposal.log_density, state.log_density)
        self._state = LangevinState(position, log_density, grad)
        return position

    def logging(self):
        return OrderedDict(step_size=f"{self.step_size:.3g}", acc_rate=f"{self.acceptance_rate:.3f}")

    def diagnostics(self):
        return {"acceptance rate": self.acceptance_rate}

    # -- helpers -----------------------------------------------------------------------------
    @property
    def acceptance_rate(self) -> float:
        """Mean over iterations of the fraction of examples whose proposal was accepted."""
        return self._accept_sum / max(self._num_proposals, 1)

    def _log_proposal(self, to: LangevinState, frm: LangevinState) -> torch.Tensor:
        """log q(to | frm) per example, up to a constant: -‖to - frm - (s²/2)∇(frm)‖² / (2 s²)."""
        s2 = self.step_size**2
        total = 0.0
        for name, z_to in to.position.items():
            diff = z_to - frm.position[name] - 0.5 * s2 * frm.grad[name]
            total = total + self._per_example_sum(-(diff * diff) / (2 * s2), name)
        return total

    def _per_example_sum(self, t: torch.Tensor, name: str) -> torch.Tensor:
        plate = self._sites.plate
        event_dim = self._sites.event_dims[name]
        if plate is None:
            return t.sum()
        keep = t.dim() - event_dim + plate.dim
        other = [d for d in range(t.dim()) if d != keep]
        return t.sum(other) if other else t

    def _where(self, accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor, name: str) -> torch.Tensor:
        plate = self._sites.plate
        if plate is None:
            return new if bool(accept) else old
        keep = new.dim() - self._sites.event_dims[name] + plate.dim
        shape = [1] * new.dim()
        shape[keep] = accept.numel()
        return torch.where(accept.reshape(shape), new, old)
