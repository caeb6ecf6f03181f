"""MALA's step function (BlackJAX style), kept under its old names: :class:`~pyro_lfbm.infer.samplers.MALA`
(``adjust=True``) or :class:`~pyro_lfbm.infer.samplers.ULA` (``adjust=False``) for one step."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from pyro_lfbm.infer.samplers.base import (  # noqa: F401  (re-exported)
    RowDims,
    StepInfo,
    StepSize,
    broadcast_step_size,
    row_dims_of,
)
from pyro_lfbm.infer.samplers.mala import MALA, MALA_OPTIMAL_ACCEPT_PROB  # noqa: F401  (re-exported)
from pyro_lfbm.infer.samplers.ula import ULA, langevin_log_ratio
from pyro_lfbm.infer.state import LangevinState, LogDensityFn

#: The info of one step (the same for every sampler).
MALAInfo = StepInfo


def mala_step(
    state: LangevinState,
    log_density_fn: LogDensityFn,
    step_size: StepSize,
    *,
    row_dims: RowDims = 0,
    adjust: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tuple[LangevinState, StepInfo]:
    """One MALA transition (``adjust=False``: one ULA step, every finite proposal taken); returns
    ``(new_state, info)`` and changes nothing in place. The state is evaluated first when needed;
    ``row_dims`` and ``step_size`` as in :mod:`pyro_lfbm.infer.samplers.base`."""
    sampler = MALA() if adjust else ULA()
    return sampler.step(state, log_density_fn, step_size, row_dims=row_dims, generator=generator)


def mala_log_ratio(frm: LangevinState, to: LangevinState, step_size: StepSize, *, row_dims: RowDims = 0) -> torch.Tensor:
    """log α of the Langevin move ``frm -> to`` (both evaluated) (:func:`~pyro_lfbm.infer.samplers.ula.langevin_log_ratio`)."""
    return langevin_log_ratio(frm, to, step_size, row_dims_of(frm.position, row_dims, frm.log_density))
