"""Short-run Langevin dynamics: the ULA chain run by the one driver (:mod:`pyro_lfbm.infer.chain`).

One step, for every latent tensor z in the state,

.. math:: z \\leftarrow z + \\tfrac{s^2}{2} \\nabla_z \\log p(x, z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

or, with ``noise=False``, plain gradient ascent on log p(x, z) (the paper's test-time inference).
The move is :func:`~pyro_lfbm.ops.langevin.langevin_move`, the sampler
:class:`~pyro_lfbm.infer.samplers.ULA`; this module keeps the short names of the chain.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from pyro_lfbm.infer.chain import ChainInfo, run_chain  # noqa: F401  (re-exported)
from pyro_lfbm.infer.divergence import DivergencePolicy
from pyro_lfbm.infer.samplers.ula import ULA
from pyro_lfbm.infer.state import LangevinState, Latents, LogDensityFn, evaluate, value_and_grad  # noqa: F401  (re-exported)
from pyro_lfbm.ops.langevin import langevin_move  # noqa: F401  (the one Langevin update, re-exported here)

#: A suggested ``DivergencePolicy.max_log_density_drop``: the energy error at which Pyro's HMC/NUTS call a trajectory divergent
#: (``_max_sliced_energy``). Off by default: a short-run chain started from N(0, I) on an image
#: likelihood legitimately loses more than this in its first moves (the paper's MNIST chain at
#: s = 0.1 does), so only non-finite values are divergences unless a caller opts in.
MAX_LOG_DENSITY_DROP = 1000.0


def langevin_step(
    state: LangevinState,
    log_density_fn: LogDensityFn,
    step_size: float,
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
) -> LangevinState:
    """One unadjusted Langevin step (or gradient-ascent step when ``noise=False``).

    Returns the moved state, whose log density and gradient are left unevaluated.
    """
    moved, _ = ULA(noise).step(state, log_density_fn, step_size, generator=generator, evaluate=False)
    return moved


def short_run_langevin(
    log_density_fn: LogDensityFn,
    initial_position: Latents,
    num_steps: int,
    step_size: float,
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[int, LangevinState], None]] = None,
    evaluate_final: bool = False,
    tolerance: Optional[float] = None,
    restrict: Optional[Callable[[torch.Tensor], LogDensityFn]] = None,
    on_divergence: Union[str, DivergencePolicy] = "raise",
) -> LangevinState:
    """Run ``num_steps`` Langevin steps from ``initial_position``; returns the final state:
    :func:`~pyro_lfbm.infer.chain.run_chain` with the ULA sampler, which see for the cost,
    ``callback``, ``on_divergence`` and early stopping (``tolerance``, ``restrict``; the state's
    ``steps`` (B,) then counts the gradient evaluations spent on each row)."""
    state, _ = run_chain(
        log_density_fn,
        initial_position,
        num_steps,
        step_size,
        noise=noise,
        generator=generator,
        on_divergence=on_divergence,
        evaluate_final=evaluate_final,
        callback=callback,
        tolerance=tolerance,
        restrict=restrict,
    )
    return state
