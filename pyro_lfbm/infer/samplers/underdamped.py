"""Underdamped (kinetic) Langevin dynamics, OBABO splitting, with its exact Metropolis-adjusted form
(a sampler, :mod:`~pyro_lfbm.infer.samplers.base`).

The state carries a momentum p (same shapes as the position, stationary law N(0, I)); with time
step h = ``step_size`` and friction γ, c = exp(-γh/2), one step is

- O: p ← c p + √(1 - c²) ξ₁ (half a step of the Ornstein-Uhlenbeck part, exact);
- B, A, B: p ← p + (h/2) ∇log p(z); z ← z + h p; p ← p + (h/2) ∇log p(z) (velocity Verlet: one
  gradient evaluation per step, the one at the start being the previous step's);
- O: p ← c p + √(1 - c²) ξ₂.

``adjust=True`` tests the BAB part with Metropolis-Hastings, α = exp(H(z, p) - H(z', p')) with
H = -log p(z) + ``|p|²/2``, and on rejection flips the momentum (p ← -p, then the last O): Horowitz's
generalised HMC (A. M. Horowitz (1991), "A generalized guided Monte Carlo algorithm", Phys. Lett. B
268(2), 247-252), exact for p(z) N(p; 0, I) for every h and γ. Unadjusted, every finite proposal
is taken (a divergent row keeps its position, its momentum flipped), and the info reports the
adjusted form's acceptance probability. γ → ∞ (c = 0) is ULA with s = h.

**Bias** (unadjusted). On a 1-d Gaussian N(0, σ²) Verlet conserves exactly the modified energy
H̃ = p²/2 + (1 - h²/(4σ²)) z²/(2σ²) and preserves volume, and the O steps preserve p ~ N(0, 1)
independent of z, so the stationary law is exactly z ~ N(0, σ² / (1 - h²/(4σ²))), p ~ N(0, 1)
(:func:`stationary_variance`; stable for h < 2σ): the same inflation as ULA with s = h, for every γ.

The layout follows BlackJAX's ``blackjax/mcmc/underdamped_langevin.py`` and ``integrators.py``.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch

from pyro_lfbm.infer.samplers import ula
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
from pyro_lfbm.ops.langevin import standard_normal

Latents = Dict[str, torch.Tensor]


class UnderdampedState(NamedTuple):
    """:ivar momentum: {site: p}, same shapes as the position."""

    position: Latents
    log_density: Optional[torch.Tensor] = None
    grad: Optional[Latents] = None
    momentum: Optional[Latents] = None


class UnderdampedLangevin(Sampler):
    """Underdamped Langevin, OBABO (module docstring).

    :param float friction: γ > 0 (per unit time; with h = ``step_size`` the momentum keeps
        c = exp(-γh/2) of itself per half step).
    :param bool adjust: the Metropolis-Hastings test of the BAB part (generalised HMC, exact).
    """

    name = "underdamped Langevin"

    def __init__(self, friction: float = 1.0, adjust: bool = False):
        if not friction > 0:
            raise ValueError(f"friction must be positive, got {friction!r}")
        self.friction, self.adjust = float(friction), bool(adjust)

    @property
    def adjusted(self) -> bool:
        return self.adjust

    def __repr__(self) -> str:
        return f"UnderdampedLangevin(friction={self.friction:g}, adjust={self.adjust})"

    def init(self, position, log_density_fn: LogDensityFn, *, row_dims: RowDims = 0,
             generator: Optional[torch.Generator] = None) -> UnderdampedState:
        """The state at ``position`` with a momentum drawn from N(0, I)."""
        position = dict(position)
        log_density, grad = value_and_grad(log_density_fn, position)
        momentum = {name: _normal_like(z, generator) for name, z in position.items()}
        return UnderdampedState(position, log_density, grad, momentum)

    def _refresh(self, momentum: Latents, step_size: StepSize, dims, generator) -> Latents:
        """The O half step: p ← c p + √(1 - c²) ξ."""
        out = {}
        for name, p in momentum.items():
            h = broadcast_step_size(step_size, p, dims[name])
            c = torch.exp(-self.friction * torch.as_tensor(h, dtype=p.dtype, device=p.device) / 2)
            out[name] = c * p + torch.sqrt(1 - c * c) * _normal_like(p, generator)
        return out

    def step(self, state: UnderdampedState, log_density_fn: LogDensityFn, step_size: StepSize, *,
             row_dims: RowDims = 0, generator: Optional[torch.Generator] = None,
             evaluate: bool = True, acceptance: bool = True) -> Tuple[UnderdampedState, StepInfo]:
        if state.momentum is None:
            raise ValueError("the state has no momentum: start the chain with UnderdampedLangevin.init")
        if self.adjust and not evaluate:
            raise ValueError("the adjusted form's test needs the proposal's log density: step with evaluate=True")
        state = evaluated(state, log_density_fn)
        check_step_size(step_size, state.log_density)
        dims = row_dims_of(state.position, row_dims, state.log_density)
        refreshed = self._refresh(state.momentum, step_size, dims, generator)  # O
        half, position = {}, {}
        for name, z in state.position.items():
            h = broadcast_step_size(step_size, z, dims[name])
            half[name] = refreshed[name] + (0.5 * h) * state.grad[name]  # B
            position[name] = z + h * half[name]  # A
        if not evaluate:
            proposal = UnderdampedState(position, None, None, half)
            return proposal, StepInfo(None, None, None, proposal)
        log_density, grad = evaluate_proposal(log_density_fn, position, state.log_density)
        momentum = {name: half[name] + (0.5 * broadcast_step_size(step_size, half[name], dims[name])) * grad[name]
                    for name in half}  # B
        proposal = UnderdampedState(position, log_density, grad, momentum)
        divergent = ~finite_rows(log_density, grad, dims)
        test = self.adjust or acceptance
        log_ratio = log_density - state.log_density if test else None
        for name in momentum if test else ():
            kinetic = momentum[name] * momentum[name] - refreshed[name] * refreshed[name]
            log_ratio = log_ratio - 0.5 * reduce_rows(kinetic, dims[name])
        acceptance_prob, accepted = accept_or_reject(log_ratio, divergent, self.adjust, generator)
        flipped = state._replace(momentum={name: -p for name, p in refreshed.items()})
        kept = select_state(accepted, proposal, flipped, dims)
        new = kept._replace(momentum=self._refresh(kept.momentum, step_size, dims, generator))  # O
        return new, StepInfo(acceptance_prob, accepted, divergent, proposal)


def _normal_like(z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return standard_normal(z.shape, dtype=z.dtype, device=z.device, generator=generator)


def stationary_variance(sigma2: float, step_size: float) -> float:
    """The exact stationary variance of z for unadjusted OBABO on N(0, σ²), every γ:
    σ² / (1 - h²/(4σ²)) (module docstring), ULA's with s = h."""
    return ula.stationary_variance(sigma2, step_size)
