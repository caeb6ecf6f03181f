"""The one chain driver: ``num_steps`` steps of any sampler (:mod:`pyro_lfbm.infer.samplers`),
with the divergence check, the backoff, early stopping and the acceptance statistic of step-size
adaptation written once.

The samplers are pure (``init``, ``step``: BlackJAX's shape); everything around the steps is here:

- after every gradient evaluation the rows are checked
  (:func:`~pyro_lfbm.infer.divergence.diverged_rows`) and a divergence raises or backs off
  (the row returns to its last finite state and its step size halves);
- early stopping (``tolerance``): a row stops for good at the first evaluation where its gradient
  norm is below ``tolerance``; stopped rows are no longer moved, and, given ``restrict``, no
  longer evaluated;
- the mean acceptance probability of each row's moves, the statistic of step-size adaptation;
- the cost: K steps from a fresh position cost K gradient evaluations (the last move of an
  unadjusted sampler is not evaluated unless its log density is wanted).

Eager, compiled and CUDA-graph chains all run this loop; a compiled chain gives a log density
with its own ``value_and_grad`` (:func:`~pyro_lfbm.infer.state.value_and_grad`).

Rows are the leading dimension of every site (independent chains); the log density returns (R,)
(or a scalar for one chain).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch

from pyro_lfbm.infer.divergence import (
    DivergencePolicy,
    describe_divergence,
    diverged_rows,
    divergence_error,
    divergence_policy,
    nonfinite_rows,
)
from pyro_lfbm.infer.samplers.base import Sampler, evaluated, select_state
from pyro_lfbm.infer.samplers.ula import ULA
from pyro_lfbm.infer.state import LangevinState, Latents, LogDensityFn


class ChainInfo(NamedTuple):
    """What a run of :func:`run_chain` did, per row (leading dimension of every site).

    :ivar divergences: (R,) int64, how many times each row diverged and was sent back (``"backoff"``).
    :ivar step_size: (R,) the step size each row ended with (halved once per divergence).
    :ivar acceptance_prob: (R,) the mean over the chain's moves of the sampler's acceptance
        probability (for an unadjusted sampler: that of its adjusted form), when
        ``track_acceptance``; else None.
    :ivar gradient_evaluations: evaluations of the log density and its gradient spent (per row).
    """

    divergences: torch.Tensor
    step_size: torch.Tensor
    acceptance_prob: Optional[torch.Tensor]
    gradient_evaluations: int


def run_chain(
    log_density_fn: LogDensityFn,
    initial_position: Latents,
    num_steps: int,
    step_size: float,
    *,
    sampler: Optional[Sampler] = None,
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
    on_divergence: Union[str, DivergencePolicy] = "raise",
    track_acceptance: bool = False,
    evaluate_final: bool = False,
    callback: Optional[Callable[[int, NamedTuple], None]] = None,
    where: str = "Langevin chain",
    tolerance: Optional[float] = None,
    restrict: Optional[Callable[[torch.Tensor], LogDensityFn]] = None,
) -> Tuple[NamedTuple, ChainInfo]:
    """``num_steps`` steps of ``sampler`` (default ``ULA(noise)``) from ``initial_position``, guarded against divergence.

    **Divergence** (``on_divergence``, a :class:`~pyro_lfbm.infer.divergence.DivergencePolicy` or its
    action, ``"raise"`` or ``"backoff"``). After every gradient evaluation a row diverges when its log
    density or gradient is not finite, or, when the policy's ``max_log_density_drop`` is set, when one
    move lowered its log density by more than that. With ``"raise"`` a divergence raises
    :class:`~pyro_lfbm.infer.divergence.LangevinDivergenceError` naming the site, the step, the
    step size and the number of rows; with ``"backoff"`` each diverged row returns to its last
    finite state and its step size halves (at most the policy's ``max_backoffs`` times per row, then
    it raises). A final position that is not evaluated is checked for finite values.

    **Cost.** ``num_steps`` gradient evaluations (one more with ``evaluate_final``,
    ``track_acceptance`` or an adjusted sampler, whose last step evaluates). ``callback(k, state)``
    runs after step k with the state it reached (the last one unevaluated unless asked).

    **Early stopping** (``tolerance`` set; meant for ``ULA(noise=False)``, the test-time gradient
    ascent; ``on_divergence="raise"`` only): a row stops for good at the first evaluation where its
    gradient norm (over all sites) is below ``tolerance``. Stopped rows are held where they are;
    ``restrict(rows)`` (optional) gives the log density of the rows ``rows`` (int64) only, so that
    stopped rows are no longer evaluated (only valid when rows do not interact); without it every
    row is evaluated, stopped rows at their final positions. The state's ``steps`` (when it has
    that field) holds the gradient evaluations spent on each row; with ``tolerance=0`` the
    trajectory is that of the plain loop (with noise, stopped rows draw noise they do not use).

    :param sampler: a :class:`~pyro_lfbm.infer.samplers.base.Sampler`; ``noise=False`` configures
        the default one only.
    :param bool track_acceptance: also return the mean acceptance probability of each row's moves.
    :returns: ``(state, info)``: the sampler's final state (evaluated when the final position
        was) and a :class:`ChainInfo`.
    """
    policy = divergence_policy(on_divergence)
    max_drop = policy.max_log_density_drop
    if sampler is None:
        sampler = ULA(noise=noise)
    elif not noise:
        raise ValueError("noise=False configures the default sampler; pass sampler=ULA(noise=False) instead")
    if tolerance is not None and (policy.backoff or track_acceptance):
        raise ValueError("early stopping (tolerance) supports on_divergence='raise' without track_acceptance only")
    position = dict(initial_position)
    first = next(iter(position.values()))
    rows = first.shape[0] if first.dim() > 0 else 1
    need_final = evaluate_final or track_acceptance
    divergences = torch.zeros(rows, dtype=torch.long, device=first.device)
    count = torch.zeros(rows, dtype=torch.long, device=first.device) if tolerance is not None else None
    if num_steps == 0 and not need_final:
        state = LangevinState(position, steps=count)
        return state, ChainInfo(divergences, _per_row(step_size, rows, first), None, 0)

    state = sampler.init(position, log_density_fn, generator=generator)
    evaluations = 1
    bad = diverged_rows(state.log_density, state.grad)
    if bool(bad.any()):
        what = describe_divergence(state.log_density, state.grad, bad)
        raise divergence_error(what, 0, num_steps, step_size, int(bad.sum()), rows, where)
    steps = step_size  # a float until a row backs off, then a tensor of one step size per row
    accept_sum = None
    moving = None
    if tolerance is not None:
        count = count + int(num_steps > 0)  # the loop's first evaluation (a final one is not counted)
        moving = _row_norms(state.grad) >= tolerance
    for k in range(1, num_steps + 1):
        evaluate = k < num_steps or (need_final and tolerance is None) or sampler.adjusted
        previous = state
        if tolerance is not None:
            if not bool(moving.any()):
                break
            state, info, moved = _step_moving_rows(sampler, state, moving, log_density_fn, restrict, steps,
                                                   generator, evaluate)
        else:
            state, info = sampler.step(state, log_density_fn, steps, generator=generator, evaluate=evaluate,
                                       acceptance=track_acceptance)
        if evaluate:
            evaluations += 1
            proposal = info.proposal
            bad = diverged_rows(proposal.log_density, proposal.grad, previous.log_density, max_drop, info.is_divergent)
        else:
            bad = nonfinite_rows(None, state.position)
        diverged = bool(bad.any())
        if diverged:
            what = (describe_divergence(proposal.log_density, proposal.grad, bad, previous.log_density, max_drop)
                    if evaluate else "the position is not finite")
            if not policy.backoff:
                raise divergence_error(what, k, num_steps, steps, int(bad.sum()), bad.numel(), where)
            divergences = divergences + bad.long()
            if evaluate and int(divergences.max()) > policy.max_backoffs:
                raise divergence_error(what, k, num_steps, steps, int(bad.sum()), rows, where, backoff_exhausted=True)
            state = _take_rows(bad, previous, state)
        if track_acceptance and evaluate:
            acc = info.acceptance_prob.reshape(-1)
            if diverged:
                acc = torch.where(bad, torch.zeros_like(acc), acc)
            accept_sum = acc if accept_sum is None else accept_sum + acc
        if diverged:
            steps = _halve(steps, bad, state.log_density if state.log_density is not None else previous.log_density)
        if tolerance is not None and evaluate:
            count = count + moved.long()
            moving = moved & (_row_norms(state.grad) >= tolerance)
        if callback is not None:
            callback(k, state)
    if tolerance is not None:
        if evaluate_final:  # a fresh evaluation of every row, as the plain loop's
            state = evaluated(state._replace(log_density=None, grad=None), log_density_fn)
        if "steps" in state._fields:
            state = state._replace(steps=count)
    acceptance = accept_sum / num_steps if accept_sum is not None else None
    return state, ChainInfo(divergences, _per_row(steps, rows, first), acceptance, evaluations)


def _per_row(steps, rows: int, like: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(steps):
        return steps.reshape(-1).expand(rows) if steps.numel() == 1 else steps
    return torch.full((rows,), float(steps), dtype=like.dtype, device=like.device)


def _halve(steps, bad: torch.Tensor, log_density: torch.Tensor):
    """The step sizes with those of the ``bad`` rows halved (a float becomes one per row)."""
    if not torch.is_tensor(steps):
        shape = log_density.shape
        steps = torch.full(shape, float(steps), dtype=log_density.dtype, device=log_density.device)
    return torch.where(bad.reshape(steps.shape), steps / 2, steps)


def _take_rows(rows: torch.Tensor, source: NamedTuple, target: NamedTuple) -> NamedTuple:
    """``target`` with the rows flagged in ``rows`` (R,) bool replaced by ``source``'s (rows lead)."""
    dims = {name: 0 for name in target.position}
    return select_state(rows, source, target, dims)


def _row_norms(grad: Latents) -> torch.Tensor:
    """(R,) Euclidean norm of each row's gradient over every site (leading dim = rows)."""
    total = None
    for g in grad.values():
        sq = g.reshape(g.shape[0], -1).pow(2).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


def _step_moving_rows(sampler, state, moving, log_density_fn, restrict, step_size, generator, evaluate):
    """One step of the rows ``moving`` (R,) bool, the others held: returns (state, info, moved),
    ``info`` over the stepped rows and ``moved`` the rows that stepped."""
    index = moving.nonzero().squeeze(1)
    if restrict is not None and index.numel() < moving.numel():  # step the moving rows alone
        sub = _map_fields(lambda t: t[index], state)
        new, info = sampler.step(sub, restrict(index), step_size, generator=generator, evaluate=evaluate,
                                 acceptance=False)
        merged = _map_fields(lambda full, part: full.index_copy(0, index, part), state, new)
        info = info._replace(proposal=_map_fields(lambda full, part: full.index_copy(0, index, part), state, info.proposal),
                             is_divergent=None)  # (over the stepped rows only; the driver checks the merged proposal)
        return merged, info, moving
    if index.numel() == moving.numel():
        new, info = sampler.step(state, log_density_fn, step_size, generator=generator, evaluate=evaluate,
                                 acceptance=False)
        return new, info, moving
    held = state.position

    def pinned(latents: Latents) -> torch.Tensor:  # every row evaluated, held rows where they are
        return log_density_fn({name: _where_rows(moving, z, held[name]) for name, z in latents.items()})

    new, info = sampler.step(state, pinned, step_size, generator=generator, evaluate=evaluate,
                             acceptance=False)
    return _take_rows(~moving, state, new), info, moving


def _where_rows(rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(rows.reshape(rows.shape + (1,) * (a.dim() - 1)), a, b)


def _map_fields(fn, state: NamedTuple, *others: NamedTuple) -> NamedTuple:
    """``fn`` applied to every tensor of a state (dict fields site by site); a None field stays None."""
    fields = {}
    for field, value in zip(state._fields, state):
        parts = [getattr(o, field) for o in others]
        if value is None or any(p is None for p in parts):
            fields[field] = None
        elif isinstance(value, dict):
            fields[field] = {name: fn(v, *(p[name] for p in parts)) for name, v in value.items()}
        else:
            fields[field] = fn(value, *parts)
    return type(state)(**fields)
