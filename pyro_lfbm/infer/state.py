"""The state of a batch of Langevin chains and its evaluation (BlackJAX style).

Every kernel of :mod:`pyro_lfbm.infer` (the short-run chain in :mod:`~pyro_lfbm.infer.langevin`, MALA in
:mod:`~pyro_lfbm.infer.mala`) moves a :class:`LangevinState`; :func:`evaluate` fills in the log density and
gradient at its position.
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
        :func:`~pyro_lfbm.infer.langevin.short_run_langevin` with a ``tolerance`` (rows stop early there).

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
    A ``log_density_fn`` with a ``value_and_grad`` attribute (``position -> (log p, {name: grad})``,
    e.g. a compiled one, :class:`~pyro_lfbm.infer.accelerate.CompiledLangevin`) computes both itself.
    """
    own = getattr(log_density_fn, "value_and_grad", None)
    if own is not None:
        return own(position)
    with torch.enable_grad():
        leaves = {name: value.detach().requires_grad_(True) for name, value in position.items()}
        log_density = log_density_fn(leaves)
        grads = torch.autograd.grad(log_density.sum(), list(leaves.values()), allow_unused=True)
    grad = {name: (g if g is not None else torch.zeros_like(leaves[name])) for name, g in zip(leaves, grads)}
    return log_density.detach(), grad
