"""Short-run Langevin dynamics as a pure step function over a state (blackjax style).

One step, for every latent tensor z in the state,

.. math:: z \\leftarrow z + \\tfrac{s^2}{2} \\nabla_z \\log p(x, z) + s\\,\\xi, \\qquad \\xi \\sim N(0, I),

or, with ``noise=False``, plain gradient ascent on log p(x, z) (the paper's test-time inference).
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import torch

Latents = Dict[str, torch.Tensor]
LogDensityFn = Callable[[Latents], torch.Tensor]


class LangevinState(NamedTuple):
    """Position of a batch of chains, with its per-example log density and gradient.

    :ivar dict position: site name -> tensor (B, ...), detached.
    :ivar log_density: (B,) log p(x, z) at ``position``, or None while not yet evaluated.
    :ivar grad: site name -> ∇ log p at ``position`` (same shapes), or None while not yet evaluated.

    :ivar steps: (B,) int64, the gradient evaluations spent on each row, set only by
        :func:`short_run_langevin` with a ``tolerance`` (rows stop early there).

    A step evaluates the gradient only where it is missing, so K steps from a fresh state cost
    exactly K gradient evaluations; :func:`evaluate` fills in the final values when wanted.
    """

    position: Latents
    log_density: Optional[torch.Tensor] = None
    grad: Optional[Latents] = None
    steps: Optional[torch.Tensor] = None


def evaluate(state: LangevinState, log_density_fn: LogDensityFn) -> LangevinState:
    """Fill in the log density and gradient at ``state.position`` (no-op when present)."""
    if state.grad is not None and state.log_density is not None:
        return state
    log_density, grad = value_and_grad(log_density_fn, state.position)
    return LangevinState(state.position, log_density, grad)


def value_and_grad(log_density_fn: LogDensityFn, position: Latents):
    """(log p (B,), {name: ∇_name Σ_b log p_b}) with every input detached and outputs detached.

    Rows are independent chains, so the gradient of the batch sum is each row's own gradient.
    """
    with torch.enable_grad():
        leaves = {name: value.detach().requires_grad_(True) for name, value in position.items()}
        log_density = log_density_fn(leaves)
        grads = torch.autograd.grad(log_density.sum(), list(leaves.values()), allow_unused=True)
    grad = {name: (g if g is not None else torch.zeros_like(leaves[name])) for name, g in zip(leaves, grads)}
    return log_density.detach(), grad


def langevin_move(
    z: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The Langevin move, written once: z + (s²/2) ∇log p + s ξ, with ξ ~ N(0, I) drawn like ``z``
    (its dtype and device; from ``generator`` when given), or z + (s²/2) ∇log p when ``noise`` is False.

    :param z: current position, any shape.
    :param grad: ∇ log p at ``z``, same shape.
    :returns: the moved position, same shape, dtype and device as ``z``.
    """
    moved = z + (0.5 * step_size**2) * grad
    if noise:
        moved = moved + step_size * _randn_like(z, generator)
    return moved


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


def _randn_like(z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


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
) -> LangevinState:
    """Run ``num_steps`` Langevin steps from ``initial_position``; returns the final state.

    Costs ``num_steps`` gradient evaluations, plus one when ``evaluate_final`` asks for the
    log density and gradient at the final position. ``callback(k, state)`` runs after step k
    (k = 1..num_steps) with the state *before* its evaluation.

    Early stopping (``tolerance`` set; meant for ``noise=False``, the test-time gradient ascent):
    the leading dimension of every site indexes independent rows (chains); a row stops for good
    at the first step where its gradient norm (over all sites) is below ``tolerance`` and keeps
    its position; the loop ends when every row has stopped. With ``restrict(rows) -> fn``, a
    log density of only those rows (``rows``: int64 indices into the batch), each step evaluates
    the still-moving rows only, so stopped rows cost nothing; without it, every row is evaluated
    until all have stopped. The returned state's ``steps`` (B,) counts the gradient evaluations
    spent on each row (``callback`` is not called in this mode). With ``tolerance=None`` the
    trajectory is exactly that of the plain loop.
    """
    if tolerance is not None:
        return _run_with_tolerance(
            log_density_fn, initial_position, num_steps, step_size, noise, generator, tolerance, restrict, evaluate_final
        )
    state = LangevinState(dict(initial_position))
    for k in range(1, num_steps + 1):
        state = langevin_step(state, log_density_fn, step_size, noise=noise, generator=generator)
        if callback is not None:
            callback(k, state)
    return evaluate(state, log_density_fn) if evaluate_final else state


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
        _, grad = value_and_grad(fn, sub)
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
