"""Preconditioned Langevin with a diagonal preconditioner G (a sampler, :mod:`~pyro_lfbm.infer.samplers.base`).

One step, element-wise for every latent tensor,

.. math:: z' = z + \\tfrac{s^2}{2} G \\nabla_z \\log p(z) + s \\sqrt{G}\\,\\xi, \\qquad \\xi \\sim N(0, I),

with either

- a fixed diagonal preconditioner (an inverse mass matrix, ``inverse_mass``: a float or
  {site: tensor} broadcastable to the site), or
- pSGLD's adaptive one (C. Li, C. Chen, D. Carlson and L. Carin (2016), "Preconditioned stochastic
  gradient Langevin dynamics for deep neural networks", AAAI): an RMSprop running second moment of
  the gradient, V ← α V + (1 - α) g ⊙ g, and G = 1 / (λ + √V), carried in the state
  (V starts at g ⊙ g at the chain's start). As in the paper's practical algorithm the drift
  correction Γ (the divergence of G, small when V changes slowly) is dropped.

Divergent proposals are rejected (their rows keep their state). The info's acceptance probability
is that of a Metropolis-Hastings test of the move with G held fixed (exact for a fixed G).

**Bias.** With a fixed G on a 1-d Gaussian N(0, σ²) the scheme is ULA with step s²G, so its
stationary variance is exactly σ² / (1 - s²G / (4σ²)) (:func:`stationary_variance`).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch

from pyro_lfbm.infer.samplers.base import (
    LogDensityFn,
    RowDims,
    Sampler,
    StepInfo,
    StepSize,
    accept_or_reject,
    broadcast_step_size,
    check_step_size,
    evaluate_proposal,
    evaluated,
    finite_rows,
    reduce_rows,
    row_dims_of,
    select_state,
    value_and_grad,
)
from pyro_lfbm.infer.samplers import ula
from pyro_lfbm.ops.langevin import standard_normal

Latents = Dict[str, torch.Tensor]


class PreconditionedState(NamedTuple):
    """The chain state of :class:`PreconditionedLangevin`.

    :ivar second_moment: {site: V}, the running second moment of the gradient (same shapes as the
        sites); None with a fixed preconditioner.
    """

    position: Latents
    log_density: Optional[torch.Tensor] = None
    grad: Optional[Latents] = None
    second_moment: Optional[Latents] = None


class PreconditionedLangevin(Sampler):
    """Unadjusted Langevin with a diagonal preconditioner (module docstring).

    :param inverse_mass: a fixed preconditioner G (> 0): a float, or {site: tensor} broadcastable
        to each site. None (default): pSGLD's adaptive G.
    :param float alpha: the decay α of the running second moment (pSGLD: 0.99).
    :param float eps: λ, the damping of G = 1 / (λ + √V) (pSGLD: 1e-5).
    """

    name = "preconditioned Langevin"

    def __init__(self, inverse_mass: Optional[Union[float, Latents]] = None, alpha: float = 0.99, eps: float = 1e-5):
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        values = inverse_mass.values() if isinstance(inverse_mass, dict) else [inverse_mass]
        if inverse_mass is not None and not all(bool(torch.all(torch.as_tensor(v) > 0)) for v in values):
            raise ValueError("inverse_mass must be positive")
        self.inverse_mass, self.alpha, self.eps = inverse_mass, float(alpha), float(eps)

    def __repr__(self) -> str:
        if self.inverse_mass is not None:
            return "PreconditionedLangevin(inverse_mass=...)"
        return f"PreconditionedLangevin(alpha={self.alpha:g}, eps={self.eps:g})"

    def init(self, position, log_density_fn: LogDensityFn, *, row_dims: RowDims = 0,
             generator: Optional[torch.Generator] = None) -> PreconditionedState:
        position = dict(position)
        log_density, grad = value_and_grad(log_density_fn, position)
        moment = None if self.inverse_mass is not None else {name: g * g for name, g in grad.items()}
        return PreconditionedState(position, log_density, grad, moment)

    def preconditioner(self, name: str, z: torch.Tensor, second_moment: Optional[Latents]) -> torch.Tensor:
        """G of site ``name`` (broadcastable to ``z``)."""
        if second_moment is None:
            g = self.inverse_mass[name] if isinstance(self.inverse_mass, dict) else self.inverse_mass
            return torch.as_tensor(g, dtype=z.dtype, device=z.device)
        return 1.0 / (self.eps + second_moment[name].sqrt())

    def step(self, state: PreconditionedState, log_density_fn: LogDensityFn, step_size: StepSize, *,
             row_dims: RowDims = 0, generator: Optional[torch.Generator] = None,
             evaluate: bool = True, acceptance: bool = True) -> Tuple[PreconditionedState, StepInfo]:
        if state.second_moment is None and self.inverse_mass is None:
            raise ValueError("the state has no second moment: start the chain with this sampler's init")
        state = evaluated(state, log_density_fn)
        check_step_size(step_size, state.log_density)
        dims = row_dims_of(state.position, row_dims, state.log_density)
        moment = None
        if state.second_moment is not None:
            moment = {name: self.alpha * v + (1 - self.alpha) * state.grad[name] ** 2
                      for name, v in state.second_moment.items()}
        precond, position = {}, {}
        for name, z in state.position.items():
            s = broadcast_step_size(step_size, z, dims[name])
            g = precond[name] = self.preconditioner(name, z, moment)
            xi = standard_normal(z.shape, dtype=z.dtype, device=z.device, generator=generator)
            position[name] = z + (0.5 * s**2) * g * state.grad[name] + s * g.sqrt() * xi
        if not evaluate:
            proposal = PreconditionedState(position, None, None, moment)
            return proposal, StepInfo(None, None, None, proposal)
        proposal = PreconditionedState(position, *evaluate_proposal(log_density_fn, position, state.log_density), moment)
        divergent = ~finite_rows(proposal.log_density, proposal.grad, dims)
        log_ratio = proposal.log_density - state.log_density if acceptance else None
        for name, z in position.items() if acceptance else ():
            s, g = broadcast_step_size(step_size, z, dims[name]), precond[name]
            forward = z - state.position[name] - (0.5 * s**2) * g * state.grad[name]
            backward = state.position[name] - z - (0.5 * s**2) * g * proposal.grad[name]
            log_ratio = log_ratio + reduce_rows((forward * forward - backward * backward) / (2 * s**2 * g), dims[name])
        acceptance_prob, accepted = accept_or_reject(log_ratio, divergent, adjust=False, generator=generator)
        return select_state(accepted, proposal, state, dims), StepInfo(acceptance_prob, accepted, divergent, proposal)


def stationary_variance(sigma2: float, step_size: float, inverse_mass: float) -> float:
    """The exact stationary variance on N(0, σ²) with a fixed G: ULA's with step s√G, σ² / (1 - s²G / (4σ²))."""
    return ula.stationary_variance(sigma2, step_size * inverse_mass**0.5)
