"""The Metropolis-adjusted Langevin algorithm (MALA) as a sampler (:mod:`~pyro_lfbm.infer.samplers.base`).

One step proposes the ULA move (:class:`~pyro_lfbm.infer.samplers.ula.ULA`)

.. math:: z' = z + \\tfrac{s^2}{2} \\nabla_z \\log p(z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

and accepts it with probability :math:`\\min(1, \\alpha)`,

.. math:: \\log \\alpha = \\log p(z') - \\log p(z) + \\log q(z \\mid z') - \\log q(z' \\mid z), \\qquad
   \\log q(a \\mid b) = -\\frac{\\lVert a - b - \\tfrac{s^2}{2} \\nabla \\log p(b) \\rVert^2}{2 s^2} + c,

row by row for a (B,) log density, once for a scalar one. Exact: p is its stationary distribution.

Reference: G. O. Roberts and R. L. Tweedie (1996), "Exponential convergence of Langevin distributions
and their discrete approximations", Bernoulli 2(4), 341-363. The (state, info) layout follows
BlackJAX's ``blackjax/mcmc/mala.py`` (https://github.com/blackjax-devs/blackjax).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from pyro_lfbm.infer.samplers.base import (
    LangevinState,
    LogDensityFn,
    RowDims,
    StepInfo,
    StepSize,
    evaluated,
    row_dims_of,
)
from pyro_lfbm.infer.samplers.ula import ULA, langevin_log_ratio  # noqa: F401  (re-exported as mala_log_ratio)

#: The acceptance rate that maximises MALA's efficiency in high dimension, 0.574
#: (G. O. Roberts and J. S. Rosenthal (1998), "Optimal scaling of discrete approximations to
#: Langevin diffusions", J. R. Stat. Soc. B 60(1), 255-268).
MALA_OPTIMAL_ACCEPT_PROB = 0.574


class MALA(ULA):
    """MALA: the ULA proposal and a Metropolis-Hastings test (its ``info.proposal`` is ULA's move)."""

    adjusted = True
    name = "MALA"

    def __init__(self):
        super().__init__(noise=True)

    def __repr__(self) -> str:
        return "MALA()"

    def step(self, state: LangevinState, log_density_fn: LogDensityFn, step_size: StepSize, *,
             row_dims: RowDims = 0, generator: Optional[torch.Generator] = None,
             evaluate: bool = True, acceptance: bool = True) -> Tuple[LangevinState, StepInfo]:
        if not evaluate:
            raise ValueError("MALA's test needs the proposal's log density: step with evaluate=True")
        state = evaluated(state, log_density_fn)
        dims = row_dims_of(state.position, row_dims, state.log_density)
        proposal = self.propose(state, step_size, dims, generator)
        return self.test(state, proposal, log_density_fn, step_size, dims, adjust=True, generator=generator)
