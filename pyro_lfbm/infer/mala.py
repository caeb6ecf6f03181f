"""The Metropolis-adjusted Langevin algorithm (MALA) as a pure step function (BlackJAX style).

One step proposes, for every latent tensor of the state, the Langevin move
(:func:`~pyro_lfbm.infer.langevin.langevin_move`)

.. math:: z' = z + \\tfrac{s^2}{2} \\nabla_z \\log p(z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

and accepts it with probability :math:`\\min(1, \\alpha)`,

.. math:: \\log \\alpha = \\log p(z') - \\log p(z) + \\log q(z \\mid z') - \\log q(z' \\mid z), \\qquad
   \\log q(a \\mid b) = -\\frac{\\lVert a - b - \\tfrac{s^2}{2} \\nabla \\log p(b) \\rVert^2}{2 s^2} + c.

The log density may return one value per *row* (shape (B,): B independent chains, each accepted or
rejected on its own, e.g. the local latents of B data points given the global ones) or a scalar
(one chain, one test, e.g. the global latents at the full-data log joint). A row whose proposal has
a non-finite log density or gradient is *divergent*: it is rejected and flagged in the info.

Reference: G. O. Roberts and R. L. Tweedie (1996), "Exponential convergence of Langevin distributions
and their discrete approximations", Bernoulli 2(4), 341-363. The (state, info) layout follows
BlackJAX's ``blackjax/mcmc/mala.py`` (https://github.com/blackjax-devs/blackjax).
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch

from pyro_lfbm.infer.state import LangevinState, evaluate, value_and_grad
from pyro_lfbm.ops.langevin import langevin_move

Latents = Dict[str, torch.Tensor]
LogDensityFn = Callable[[Latents], torch.Tensor]
RowDims = Union[int, Dict[str, int]]
StepSize = Union[float, torch.Tensor]

#: The acceptance rate that maximises MALA's efficiency in high dimension, 0.574
#: (G. O. Roberts and J. S. Rosenthal (1998), "Optimal scaling of discrete approximations to
#: Langevin diffusions", J. R. Stat. Soc. B 60(1), 255-268).
MALA_OPTIMAL_ACCEPT_PROB = 0.574


class MALAInfo(NamedTuple):
    """What one MALA step did, per row ((B,) tensors) or for the one chain (0-d tensors).

    :ivar acceptance_prob: min(1, α), the Metropolis-Hastings acceptance probability of the
        proposal; 0 for a divergent proposal. With ``adjust=False`` (no test) it is still the
        probability MALA would have used, the statistic that step-size adaptation follows.
    :ivar is_accepted: bool, the proposal was taken.
    :ivar is_divergent: bool, the proposal's log density or gradient was not finite (rejected).
    :ivar proposal: the proposed :class:`LangevinState` (evaluated), as in BlackJAX's info.
    """

    acceptance_prob: torch.Tensor
    is_accepted: torch.Tensor
    is_divergent: torch.Tensor
    proposal: LangevinState


def mala_step(
    state: LangevinState,
    log_density_fn: LogDensityFn,
    step_size: StepSize,
    *,
    row_dims: RowDims = 0,
    adjust: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tuple[LangevinState, MALAInfo]:
    """One MALA transition; returns ``(new_state, info)`` and changes nothing in place.

    :param state: the current :class:`~pyro_lfbm.infer.langevin.LangevinState`; its log density and
        gradient are computed when missing (so a chain of steps costs one gradient evaluation each).
    :param log_density_fn: latents -> log density, shape (B,) (rows, one test each) or () (one test).
    :param step_size: s > 0: a float, or a (B,) tensor of one step size per row (a (B,) log density).
    :param row_dims: for a (B,) log density, the dimension of each site's tensor that indexes the B
        rows: one int for every site, or ``{site: dim}`` (non-negative, counted from the left).
        Every other dimension of that site belongs to the row. Ignored for a scalar log density.
    :param bool adjust: apply the Metropolis-Hastings test (MALA); with False every finite proposal
        is taken (unadjusted Langevin, ULA) and only divergent rows are rejected.
    :param generator: optional ``torch.Generator`` for the proposal noise and the uniform draws.
    :returns: ``(state, info)``: the new state (evaluated: its log density and gradient are those of
        the kept positions) and a :class:`MALAInfo`.
    """
    if not bool(torch.all(torch.as_tensor(step_size) > 0)):
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    state = evaluate(state, log_density_fn)
    current = state.log_density
    rows = current.dim() == 1
    if current.dim() > 1:
        raise ValueError(
            f"the log density must have shape (B,) (one value per row) or () (one chain), got {tuple(current.shape)}"
        )
    dims = _row_dims(state.position, row_dims, current.shape[0] if rows else None)
    if torch.is_tensor(step_size) and step_size.dim() > 0 and (not rows or step_size.shape != current.shape):
        raise ValueError(
            f"a tensor step_size must have one entry per row, shape {tuple(current.shape)}; got {tuple(step_size.shape)}"
        )

    position = {
        name: langevin_move(z, state.grad[name], broadcast_step_size(step_size, z, dims[name]), noise=True, generator=generator)
        for name, z in state.position.items()
    }
    log_density, grad = value_and_grad(log_density_fn, position)
    if log_density.shape != current.shape:
        raise ValueError(
            f"the log density changed shape from {tuple(current.shape)} to {tuple(log_density.shape)} between calls"
        )
    proposal = LangevinState(position, log_density, grad)

    finite = torch.isfinite(log_density)
    for name, g in grad.items():
        finite = finite & _reduce(torch.isfinite(g), dims.get(name), torch.all)
    divergent = ~finite

    log_ratio = mala_log_ratio(state, proposal, step_size, row_dims=dims)
    log_ratio = torch.where(divergent, torch.full_like(log_ratio, -float("inf")), log_ratio)
    acceptance_prob = log_ratio.clamp(max=0.0).exp()
    if adjust:
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
        accepted = uniform.log() < log_ratio
    else:
        accepted = finite.clone()

    new_position = {name: _select(accepted, position[name], state.position[name], dims.get(name)) for name in position}
    new_grad = {name: _select(accepted, grad[name], state.grad[name], dims.get(name)) for name in grad}
    new_log_density = torch.where(accepted, log_density, current)
    info = MALAInfo(acceptance_prob, accepted, divergent, proposal)
    return LangevinState(new_position, new_log_density, new_grad), info


def _row_dims(position: Latents, row_dims: RowDims, batch: Optional[int]) -> Dict[str, Optional[int]]:
    """{site: row dim} for a (B,) log density, {site: None} for a scalar one; checks the sizes."""
    if batch is None:
        return {name: None for name in position}
    dims = {}
    for name, z in position.items():
        dim = row_dims.get(name) if isinstance(row_dims, dict) else row_dims
        if dim is None:
            raise ValueError(f"row_dims names no row dimension for site '{name}'")
        if not 0 <= dim < z.dim() or z.shape[dim] != batch:
            raise ValueError(
                f"site '{name}' of shape {tuple(z.shape)} has no row dimension {dim} of size {batch} "
                f"(the log density has {batch} rows); pass row_dims={{'{name}': d}} with z.shape[d] == {batch}"
            )
        dims[name] = dim
    return dims


def _reduce(t: torch.Tensor, dim: Optional[int], op=torch.sum) -> torch.Tensor:
    """Reduce ``t`` over every dimension but ``dim`` (rows), or over all of it when ``dim`` is None."""
    if dim is None:
        return op(t)
    rows = t.movedim(dim, 0)
    return op(rows.reshape(rows.shape[0], -1), 1)


def mala_log_ratio(frm: LangevinState, to: LangevinState, step_size: StepSize, *, row_dims: RowDims = 0) -> torch.Tensor:
    r"""log α of the Langevin move ``frm -> to`` (both evaluated: log density and gradient present),
    per row ((B,)) or for the one chain (()), as in :func:`mala_step`; NaN becomes -inf (never accepted):

    .. math:: \log\alpha = \log p(z') - \log p(z) + \log q(z \mid z') - \log q(z' \mid z),
       \quad \log q(a \mid b) = -\lVert a - b - \tfrac{s^2}{2}\nabla\log p(b)\rVert^2 / (2 s^2).

    :param step_size: a float, or a (B,) tensor of one step size per row.
    :param row_dims: as in :func:`mala_step`.
    """
    current = frm.log_density
    dims = _row_dims(frm.position, row_dims, current.shape[0] if current.dim() == 1 else None)
    log_ratio = to.log_density - current
    for name, z_to in to.position.items():
        dim = dims[name]
        s = broadcast_step_size(step_size, z_to, dim)
        forward = z_to - frm.position[name] - (0.5 * s**2) * frm.grad[name]  # z' given z
        backward = frm.position[name] - z_to - (0.5 * s**2) * to.grad[name]  # z given z'
        log_ratio = log_ratio + _reduce((forward * forward - backward * backward) / (2 * s**2), dim)
    return torch.nan_to_num(log_ratio, nan=-float("inf"))


def broadcast_step_size(step_size: StepSize, z: torch.Tensor, dim: Optional[int]) -> StepSize:
    """A float (or 0-d) step size as is; a (B,) tensor shaped to broadcast along ``z``'s row dim ``dim``."""
    if not torch.is_tensor(step_size) or step_size.dim() == 0:
        return step_size
    shape = [1] * z.dim()
    shape[dim] = step_size.shape[0]
    return step_size.to(dtype=z.dtype, device=z.device).reshape(shape)


def _select(accepted: torch.Tensor, new: torch.Tensor, old: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    """``new`` in the accepted rows, ``old`` elsewhere (``accepted`` is (B,) or 0-d)."""
    if dim is None:
        return torch.where(accepted, new, old)
    shape = [1] * new.dim()
    shape[dim] = accepted.shape[0]
    return torch.where(accepted.reshape(shape), new, old)
