"""The sampler protocol of every Langevin chain of the package (BlackJAX's shape), and the row helpers
the samplers share.

A *sampler* is an object with two pure methods (nothing is changed in place):

- ``init(position, log_density_fn, *, row_dims=0, generator=None) -> state``: the sampler's state at
  ``position`` ({site: tensor}), evaluated (log density and gradient filled in: one gradient
  evaluation), with whatever else the sampler carries (a momentum, a preconditioner);
- ``step(state, log_density_fn, step_size, *, row_dims=0, generator=None, evaluate=True) -> (state, info)``:
  one transition from an evaluated state; ``info`` is a :class:`StepInfo`. A proposal whose log density
  or gradient is not finite is rejected (its rows keep their state) and flagged ``is_divergent``.
  ``evaluate=False`` (unadjusted samplers only: ``adjusted`` is False) moves the position without
  evaluating the log density there (the state's ``log_density`` and ``grad`` are None and the info
  holds only the proposal): the last move of a chain whose final log density is not wanted.
  ``acceptance=False`` lets an unadjusted sampler skip the info's acceptance probability (None),
  which only step-size adaptation reads (the driver asks for it only then).

Every state is a ``NamedTuple`` whose first three fields are ``position``, ``log_density`` and
``grad`` (as :class:`~pyro_lfbm.infer.state.LangevinState`); its other fields are tensors or
{site: tensor} dicts with rows in the same place as the position's (or None).

The loop around the steps (divergence handling and backoff, early stopping, acceptance tracking
for step-size adaptation, the cost count) is written once, in :func:`pyro_lfbm.infer.chain.run_chain`;
Pyro's MCMC loop drives the same samplers through :class:`~pyro_lfbm.infer.kernel.LangevinKernel`.
A new Langevin variant is one new module of this package implementing the two methods.

**Rows.** The log density returns one value per *row* (shape (B,): B independent chains, each
tested on its own) or a scalar (one chain). ``row_dims`` names, for a (B,) log density, the
dimension of each site's tensor that indexes the rows: one int for every site, or ``{site: dim}``.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch

from pyro_lfbm.infer.state import LangevinState, Latents, LogDensityFn, evaluate, value_and_grad  # noqa: F401

RowDims = Union[int, Dict[str, int]]
StepSize = Union[float, torch.Tensor]


class StepInfo(NamedTuple):
    """What one step did, per row ((B,) tensors) or for the one chain (0-d tensors).

    :ivar acceptance_prob: min(1, α), the Metropolis-Hastings acceptance probability of the
        proposal (0 for a divergent one). An unadjusted sampler reports the probability its
        adjusted form would have used: the statistic step-size adaptation follows.
    :ivar is_accepted: bool, the proposal was taken.
    :ivar is_divergent: bool, the proposal's log density or gradient was not finite (rejected).
    :ivar proposal: the proposed state (evaluated), as in BlackJAX's info.
    """

    acceptance_prob: Optional[torch.Tensor]
    is_accepted: Optional[torch.Tensor]
    is_divergent: Optional[torch.Tensor]
    proposal: NamedTuple


class Sampler:
    """Base class of the samplers: the protocol (see the module docstring) and its checks.

    :cvar bool adjusted: the step applies a Metropolis-Hastings test (its ``step`` must evaluate).
    :cvar str name: a short name for messages.
    """

    adjusted = False
    name = "sampler"

    def init(self, position: Latents, log_density_fn: LogDensityFn, *, row_dims: RowDims = 0,
             generator: Optional[torch.Generator] = None):
        raise NotImplementedError

    def step(self, state, log_density_fn: LogDensityFn, step_size: StepSize, *, row_dims: RowDims = 0,
             generator: Optional[torch.Generator] = None, evaluate: bool = True,
             acceptance: bool = True) -> Tuple[NamedTuple, StepInfo]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_step_size(step_size: StepSize, log_density: torch.Tensor, allow_zero: bool = False) -> None:
    """A positive float, or a tensor of one positive step size per row of a (B,) log density."""
    if not torch.is_tensor(step_size):
        if not (step_size >= 0 if allow_zero else step_size > 0):
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        return
    if not bool(torch.all(step_size >= 0 if allow_zero else step_size > 0)):
        raise ValueError(f"step_size must be positive, got {step_size!r}")
    if torch.is_tensor(step_size) and step_size.dim() > 0 and (log_density.dim() != 1 or step_size.shape != log_density.shape):
        raise ValueError(
            f"a tensor step_size must have one entry per row, shape {tuple(log_density.shape)}; got {tuple(step_size.shape)}"
        )


def row_dims_of(position: Latents, row_dims: RowDims, log_density: torch.Tensor) -> Dict[str, Optional[int]]:
    """{site: row dim} for a (B,) log density, {site: None} for a scalar one; checks the sizes."""
    if log_density.dim() > 1:
        raise ValueError(
            f"the log density must have shape (B,) (one value per row) or () (one chain), got {tuple(log_density.shape)}"
        )
    if log_density.dim() == 0:
        return {name: None for name in position}
    batch = log_density.shape[0]
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


def reduce_rows(t: torch.Tensor, dim: Optional[int], op: Callable = torch.sum) -> torch.Tensor:
    """Reduce ``t`` over every dimension but ``dim`` (rows), or over all of it when ``dim`` is None."""
    if dim is None:
        return op(t)
    rows = t.movedim(dim, 0)
    return op(rows.reshape(rows.shape[0], -1), 1)


def broadcast_step_size(step_size: StepSize, z: torch.Tensor, dim: Optional[int]) -> StepSize:
    """A float (or 0-d) step size as is; a (B,) tensor shaped to broadcast along ``z``'s row dim ``dim``."""
    if not torch.is_tensor(step_size) or step_size.dim() == 0:
        return step_size
    shape = [1] * z.dim()
    shape[dim] = step_size.shape[0]
    return step_size.to(dtype=z.dtype, device=z.device).reshape(shape)


def select_rows(accepted: torch.Tensor, new: torch.Tensor, old: torch.Tensor, dim: Optional[int]) -> torch.Tensor:
    """``new`` in the accepted rows, ``old`` elsewhere (``accepted`` is (B,) or 0-d)."""
    if new.dim() == 0:
        return torch.where(accepted.reshape(()), new, old)
    if dim is None:
        return torch.where(accepted, new, old)
    shape = [1] * new.dim()
    shape[dim] = accepted.shape[0]
    return torch.where(accepted.reshape(shape), new, old)


def select_state(accepted: torch.Tensor, new: NamedTuple, old: NamedTuple, dims: Dict[str, Optional[int]]) -> NamedTuple:
    """The state with ``new``'s rows where ``accepted`` and ``old``'s elsewhere, field by field:
    {site: tensor} fields along each site's row dim, (B,) tensors along their only dim; a field
    missing (None) in either state is None."""
    fields = {}
    for field, a in zip(new._fields, new):
        b = getattr(old, field)
        if a is None or b is None:
            fields[field] = None
        elif isinstance(a, dict):
            fields[field] = {name: select_rows(accepted, a[name], b[name], dims.get(name)) for name in a}
        else:
            fields[field] = select_rows(accepted, a, b, 0 if a.dim() > 0 else None)
    return type(new)(**fields)


def finite_rows(log_density: torch.Tensor, grad: Latents, dims: Dict[str, Optional[int]]) -> torch.Tensor:
    """(B,) or 0-d bool: the rows whose log density and gradient (every site) are finite."""
    finite = torch.isfinite(log_density)
    for name, g in grad.items():
        finite = finite & reduce_rows(torch.isfinite(g), dims.get(name), torch.all)
    return finite


def accept_or_reject(log_ratio: Optional[torch.Tensor], divergent: torch.Tensor, adjust: bool,
                     generator: Optional[torch.Generator]) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """(acceptance probability min(1, α), accepted): NaN and divergent rows get α = 0; with
    ``adjust`` a uniform draw per row decides, else every finite proposal is taken (and a
    ``log_ratio`` of None, not computed, gives a probability of None)."""
    if log_ratio is None and not adjust:
        return None, ~divergent
    log_ratio = torch.nan_to_num(log_ratio, nan=-float("inf"))
    log_ratio = torch.where(divergent, torch.full_like(log_ratio, -float("inf")), log_ratio)
    acceptance_prob = log_ratio.clamp(max=0.0).exp()
    if adjust:
        uniform = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
        return acceptance_prob, uniform.log() < log_ratio
    return acceptance_prob, ~divergent


def evaluated(state, log_density_fn: LogDensityFn):
    """``state`` (any sampler's) with its log density and gradient, computed when missing."""
    if state.log_density is not None and state.grad is not None:
        return state
    log_density, grad = value_and_grad(log_density_fn, state.position)
    return state._replace(log_density=log_density, grad=grad)


def evaluate_proposal(log_density_fn: LogDensityFn, position: Latents, current: torch.Tensor):
    """(log density, grad) at ``position``, checked to keep the shape of ``current``."""
    log_density, grad = value_and_grad(log_density_fn, position)
    if log_density.shape != current.shape:
        raise ValueError(
            f"the log density changed shape from {tuple(current.shape)} to {tuple(log_density.shape)} between calls"
        )
    return log_density, grad
