"""The unadjusted Langevin algorithm (ULA) as a sampler (:mod:`~pyro_lfbm.infer.samplers.base`).

One step moves every latent tensor of the state with the package's one Langevin move
(:func:`~pyro_lfbm.ops.langevin.langevin_move`),

.. math:: z' = z + \\tfrac{s^2}{2} \\nabla_z \\log p(z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

and takes it unless its log density or gradient is not finite (a divergent row keeps its state).
With ``noise=False`` it is gradient ascent on log p (the paper's test-time inference).

**Bias.** On a 1-d Gaussian N(0, σ²) the move is z' = (1 - h/(2σ²)) z + s ξ with h = s², a linear
autoregression whose stationary variance is exactly

.. math:: v = \\frac{h}{1 - (1 - h/(2\\sigma^2))^2} = \\frac{\\sigma^2}{1 - h/(4\\sigma^2)}
   \\qquad (0 < h < 4\\sigma^2),

larger than σ² by the factor 1/(1 - s²/(4σ²)) (:func:`stationary_variance`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from pyro_lfbm.infer.samplers.base import (
    LangevinState,
    LogDensityFn,
    RowDims,
    Sampler,
    StepInfo,
    StepSize,
    accept_or_reject,
    broadcast_step_size,
    check_step_size,
    evaluate,
    evaluate_proposal,
    evaluated,
    finite_rows,
    reduce_rows,
    row_dims_of,
    select_state,
)
from pyro_lfbm.ops.langevin import langevin_move


class ULA(Sampler):
    """Unadjusted Langevin: the chain of the guide by default (``LangevinGuide(model)`` is
    ``LangevinGuide(model, sampler=ULA())``).

    :param bool noise: False gives gradient ascent (no noise; the acceptance probability of the
        info is then meaningless).
    """

    name = "ULA"

    def __init__(self, noise: bool = True):
        self.noise = bool(noise)

    def __repr__(self) -> str:
        return f"ULA(noise={self.noise})"

    def init(self, position, log_density_fn: LogDensityFn, *, row_dims: RowDims = 0,
             generator: Optional[torch.Generator] = None) -> LangevinState:
        return evaluate(LangevinState(dict(position)), log_density_fn)

    def step(self, state: LangevinState, log_density_fn: LogDensityFn, step_size: StepSize, *,
             row_dims: RowDims = 0, generator: Optional[torch.Generator] = None,
             evaluate: bool = True, acceptance: bool = True) -> Tuple[LangevinState, StepInfo]:
        state = evaluated(state, log_density_fn)
        dims = row_dims_of(state.position, row_dims, state.log_density)
        proposal = self.propose(state, step_size, dims, generator)
        if not evaluate:
            return proposal, StepInfo(None, None, None, proposal)
        return self.test(state, proposal, log_density_fn, step_size, dims, adjust=False, generator=generator,
                         acceptance=acceptance)

    def propose(self, state: LangevinState, step_size: StepSize, dims, generator) -> LangevinState:
        """The moved position (unevaluated) from an evaluated ``state``."""
        check_step_size(step_size, state.log_density)
        position = {
            name: langevin_move(z, state.grad[name], broadcast_step_size(step_size, z, dims[name]), self.noise, generator)
            for name, z in state.position.items()
        }
        return LangevinState(position)

    def test(self, state: LangevinState, proposal: LangevinState, log_density_fn: LogDensityFn, step_size: StepSize,
             dims, adjust: bool, generator, acceptance: bool = True) -> Tuple[LangevinState, StepInfo]:
        """Evaluate ``proposal`` and keep it in the rows that pass (every finite row unless ``adjust``,
        then the Metropolis-Hastings test of :func:`langevin_log_ratio`, computed when ``adjust`` or
        ``acceptance``)."""
        proposal = LangevinState(proposal.position, *evaluate_proposal(log_density_fn, proposal.position, state.log_density))
        divergent = ~finite_rows(proposal.log_density, proposal.grad, dims)
        log_ratio = langevin_log_ratio(state, proposal, step_size, dims) if adjust or acceptance else None
        acceptance_prob, accepted = accept_or_reject(log_ratio, divergent, adjust, generator)
        info = StepInfo(acceptance_prob, accepted, divergent, proposal)
        if not adjust and not bool(divergent.any()):  # every row moves: the proposal is the new state
            return proposal._replace(**{f: None for f, v in zip(state._fields, state) if v is None}), info
        return select_state(accepted, proposal, state, dims), info


def langevin_log_ratio(frm, to, step_size: StepSize, dims) -> torch.Tensor:
    r"""log α of the Langevin move ``frm -> to`` (both evaluated), per row ((B,)) or for the one chain (()):

    .. math:: \log\alpha = \log p(z') - \log p(z) + \log q(z \mid z') - \log q(z' \mid z),
       \quad \log q(a \mid b) = -\lVert a - b - \tfrac{s^2}{2}\nabla\log p(b)\rVert^2 / (2 s^2).

    :param step_size: a float, or a (B,) tensor of one step size per row.
    :param dims: {site: row dim or None} (:func:`~pyro_lfbm.infer.samplers.base.row_dims_of`).
    """
    log_ratio = to.log_density - frm.log_density
    for name, z_to in to.position.items():
        dim = dims[name]
        s = broadcast_step_size(step_size, z_to, dim)
        forward = z_to - frm.position[name] - (0.5 * s**2) * frm.grad[name]  # z' given z
        backward = frm.position[name] - z_to - (0.5 * s**2) * to.grad[name]  # z given z'
        log_ratio = log_ratio + reduce_rows((forward * forward - backward * backward) / (2 * s**2), dim)
    return torch.nan_to_num(log_ratio, nan=-float("inf"))


def stationary_variance(sigma2: float, step_size: float) -> float:
    """The exact stationary variance of ULA on N(0, σ²): σ² / (1 - s²/(4σ²)) (module docstring)."""
    h = step_size**2
    if not 0 < h < 4 * sigma2:
        raise ValueError(f"ULA on N(0, {sigma2:g}) is stable for 0 < s² < 4σ² = {4 * sigma2:g}, got s = {step_size!r}")
    return sigma2 / (1 - h / (4 * sigma2))
