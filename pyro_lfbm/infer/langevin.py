"""Short-run Langevin dynamics as a pure step function over a state (blackjax style).

One step, for every latent tensor z in the state,

.. math:: z \\leftarrow z + \\tfrac{s^2}{2} \\nabla_z \\log p(x, z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

or, with ``noise=False``, plain gradient ascent on log p(x, z) (the paper's test-time inference).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch

from pyro_lfbm.infer.divergence import (
    check_on_divergence,
    describe_divergence,
    diverged_rows,
    divergence_error,
    first_nonfinite_site,
    nonfinite_rows,
)
from pyro_lfbm.infer.mala import broadcast_step_size, mala_log_ratio
from pyro_lfbm.infer.state import LangevinState, Latents, LogDensityFn, evaluate, value_and_grad  # noqa: F401  (re-exported)
from pyro_lfbm.ops.langevin import langevin_move  # noqa: F401  (the one Langevin update, re-exported here)

#: A suggested ``max_drop``: the energy error at which Pyro's HMC/NUTS call a trajectory divergent
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
    state = evaluate(state, log_density_fn)
    position = {
        name: langevin_move(z, state.grad[name], step_size, noise, generator) for name, z in state.position.items()
    }
    return LangevinState(position)


class ChainInfo(NamedTuple):
    """What a run of :func:`run_chain` did, per row (leading dimension of every site).

    :ivar divergences: (R,) int64, how many times each row diverged and was sent back (``"backoff"``).
    :ivar step_size: (R,) the step size each row ended with (halved once per divergence).
    :ivar acceptance_prob: (R,) the mean over the chain's moves of the Metropolis-Hastings acceptance
        probability a MALA test would have given each move, when ``track_acceptance``; else None.
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
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
    on_divergence: str = "raise",
    max_backoffs: int = 10,
    track_acceptance: bool = False,
    evaluate_final: bool = False,
    callback: Optional[Callable[[int, LangevinState], None]] = None,
    where: str = "Langevin chain",
    max_drop: Optional[float] = None,
) -> Tuple[LangevinState, ChainInfo]:
    """``num_steps`` Langevin moves (:func:`langevin_move`) from ``initial_position``, guarded against divergence.

    Rows are the leading dimension of every site (independent chains); ``log_density_fn`` returns
    (R,) (or a scalar for one chain). After every gradient evaluation the rows are checked
    (:func:`~pyro_lfbm.infer.divergence.diverged_rows`): a row diverges when its log density or
    gradient is not finite, or, when ``max_drop`` is set (None, the default: off), when one move
    lowered its log density by more than ``max_drop`` (e.g. :data:`MAX_LOG_DENSITY_DROP`, HMC's
    threshold: an unstable step size shows up there several moves before the values overflow,
    and ``"backoff"`` then returns rows to sane positions rather than huge finite ones). With
    ``on_divergence="raise"`` a divergence raises
    :class:`~pyro_lfbm.infer.divergence.LangevinDivergenceError` naming the site, the step, the
    step size and the number of rows; with ``"backoff"`` each diverged row returns to its last
    finite position and its step size halves (at most ``max_backoffs`` times per row, then it
    raises). The final position, which is not evaluated unless ``evaluate_final`` or
    ``track_acceptance``, is checked for finite values.

    Costs ``num_steps`` gradient evaluations (one more with ``evaluate_final`` or
    ``track_acceptance``). Without divergences the trajectory is exactly that of the plain loop
    of :func:`langevin_step`. ``callback(k, state)`` runs after move k with the unevaluated state.

    :param bool track_acceptance: also return the mean MALA acceptance probability of each row's
        moves (:func:`~pyro_lfbm.infer.mala.mala_log_ratio`), the statistic step-size adaptation follows.
    :returns: ``(state, info)``: the final :class:`LangevinState` (evaluated when the final
        position was) and a :class:`ChainInfo`.
    """
    check_on_divergence(on_divergence)
    backoff = on_divergence == "backoff"
    state = LangevinState(dict(initial_position))
    previous: Optional[LangevinState] = None
    first = next(iter(state.position.values()))
    steps = step_size  # a float until a row backs off, then a (R,) tensor
    divergences = None
    accept_sum = None
    evaluations = 0
    need_final = evaluate_final or track_acceptance

    def checked(state: LangevinState, k: int) -> LangevinState:
        """Evaluate ``state`` (reached by k moves) and handle its diverged rows."""
        nonlocal steps, divergences, evaluations, accept_sum
        log_density, grad = value_and_grad(log_density_fn, state.position)
        evaluations += 1
        state = LangevinState(state.position, log_density, grad)
        rows = log_density.numel() if log_density.dim() > 0 else 1
        if divergences is None:
            divergences = torch.zeros(rows, dtype=torch.long, device=log_density.device)
        before = previous.log_density if previous is not None else None
        bad = diverged_rows(log_density, grad, before, max_drop)
        diverged = bool(bad.any())
        if diverged:
            what = describe_divergence(log_density, grad, bad, before, max_drop)
            if k == 0 or not backoff:
                raise divergence_error(what, k, num_steps, steps, int(bad.sum()), rows, where)
            divergences = divergences + bad.long()
            if int(divergences.max()) > max_backoffs:
                raise divergence_error(what, k, num_steps, steps, int(bad.sum()), rows, where, backoff_exhausted=True)
            state = _take_rows(bad, previous, state)
        if track_acceptance and previous is not None:
            acc = mala_log_ratio(previous, state, steps).clamp(max=0.0).exp().reshape(-1)
            if diverged:
                acc = torch.where(bad, torch.zeros_like(acc), acc)
            accept_sum = acc if accept_sum is None else accept_sum + acc
        if diverged:
            if not torch.is_tensor(steps):
                steps = torch.full((rows,), float(step_size), dtype=log_density.dtype, device=log_density.device)
            steps = torch.where(bad, steps / 2, steps)
        return state

    for k in range(1, num_steps + 1):
        if state.grad is None or state.log_density is None:
            state = checked(state, k - 1)
        previous = state
        moved = {
            name: langevin_move(z, state.grad[name], broadcast_step_size(steps, z, 0 if z.dim() > 0 else None), noise, generator)
            for name, z in state.position.items()
        }
        state = LangevinState(moved)
        if callback is not None:
            callback(k, state)
    if num_steps > 0 and need_final:
        state = checked(state, num_steps)
    elif num_steps > 0:
        bad = nonfinite_rows(None, state.position)
        if bool(bad.any()):
            if not backoff:
                raise divergence_error("the position is not finite", num_steps, num_steps, steps, int(bad.sum()), bad.numel(), where)
            divergences = divergences + bad.long()
            state = LangevinState(_take_rows(bad, previous, state).position)
            if not torch.is_tensor(steps):
                steps = torch.full((bad.numel(),), float(step_size), dtype=first.dtype, device=first.device)
            steps = torch.where(bad, steps / 2, steps)
    elif need_final:
        state = checked(state, 0)
    if divergences is None:  # no evaluation at all (num_steps == 0)
        divergences = torch.zeros(first.shape[0] if first.dim() > 0 else 1, dtype=torch.long, device=first.device)
    if not torch.is_tensor(steps):
        steps = torch.full(divergences.shape, float(step_size), dtype=first.dtype, device=first.device)
    acceptance = accept_sum / num_steps if accept_sum is not None else None
    return state, ChainInfo(divergences, steps, acceptance, evaluations)


def _take_rows(rows: torch.Tensor, source: LangevinState, target: LangevinState) -> LangevinState:
    """``target`` with the rows flagged in ``rows`` (R,) bool replaced by ``source``'s."""

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() == 0:
            return torch.where(rows.reshape(()), a, b)
        return torch.where(rows.reshape(rows.shape + (1,) * (a.dim() - 1)), a, b)

    position = {name: pick(source.position[name], z) for name, z in target.position.items()}
    log_density = grad = None
    if target.log_density is not None and source.log_density is not None:
        log_density = pick(source.log_density, target.log_density)
    if target.grad is not None and source.grad is not None:
        grad = {name: pick(source.grad[name], g) for name, g in target.grad.items()}
    return LangevinState(position, log_density, grad)


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
    on_divergence: str = "raise",
) -> LangevinState:
    """Run ``num_steps`` Langevin steps from ``initial_position``; returns the final state.

    Costs ``num_steps`` gradient evaluations, plus one when ``evaluate_final`` asks for the
    log density and gradient at the final position. ``callback(k, state)`` runs after step k
    (k = 1..num_steps) with the state *before* its evaluation. Every evaluation is checked for
    divergence (see :func:`run_chain`, which this calls, for ``on_divergence``).

    Early stopping (``tolerance`` set; meant for ``noise=False``, the test-time gradient ascent):
    the leading dimension of every site indexes independent rows (chains); a row stops for good
    at the first step where its gradient norm (over all sites) is below ``tolerance`` and keeps
    its position; the loop ends when every row has stopped. With ``restrict(rows) -> fn``, a
    log density of only those rows (``rows``: int64 indices into the batch), each step evaluates
    the still-moving rows only, so stopped rows cost nothing; without it, every row is evaluated
    until all have stopped. The returned state's ``steps`` (B,) counts the gradient evaluations
    spent on each row (``callback`` is not called in this mode; a divergence always raises). With
    ``tolerance=None`` the trajectory is exactly that of the plain loop.
    """
    if tolerance is not None:
        return _run_with_tolerance(
            log_density_fn, initial_position, num_steps, step_size, noise, generator, tolerance, restrict, evaluate_final
        )
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
    )
    return state


def _row_norms(grad: Latents) -> torch.Tensor:
    """(B,) Euclidean norm of each row's gradient over every site (leading dim = rows)."""
    total = None
    for g in grad.values():
        sq = g.reshape(g.shape[0], -1).pow(2).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


def _run_with_tolerance(
    log_density_fn: LogDensityFn,
    initial_position: Latents,
    num_steps: int,
    step_size: float,
    noise: bool,
    generator: Optional[torch.Generator],
    tolerance: float,
    restrict: Optional[Callable[[torch.Tensor], LogDensityFn]],
    evaluate_final: bool,
) -> LangevinState:
    position = {name: value.detach() for name, value in initial_position.items()}
    first = next(iter(position.values()))
    batch, device = first.shape[0], first.device
    active = torch.arange(batch, device=device)  # rows still moving
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    for _ in range(num_steps):
        if active.numel() == 0:
            break
        whole = restrict is None or active.numel() == batch
        fn = log_density_fn if restrict is None else (log_density_fn if whole else restrict(active))
        if whole:
            sub = position
        else:
            sub = {name: value[active] for name, value in position.items()}
        log_density, grad = value_and_grad(fn, sub)
        bad = nonfinite_rows(log_density, grad)
        if bool(bad.any()):
            what = first_nonfinite_site(log_density, grad, bad)
            raise divergence_error(what, int(steps.max()), num_steps, step_size, int(bad.sum()), bad.numel())
        if restrict is None and active.numel() < batch:
            grad = {name: g[active] for name, g in grad.items()}
            sub = {name: value[active] for name, value in position.items()}
        steps[active] += 1
        moving = _row_norms(grad) >= tolerance  # (len(active),)
        rows = active[moving]
        if rows.numel() > 0:
            new = {}
            for name, z in sub.items():
                moved = langevin_move(z[moving], grad[name][moving], step_size, noise, generator)
                updated = position[name].clone()
                updated[rows] = moved
                new[name] = updated
            position = new
        active = rows
    state = LangevinState(position, steps=steps)
    if evaluate_final:
        log_density, grad = value_and_grad(log_density_fn, position)
        state = LangevinState(position, log_density, grad, steps)
    return state
