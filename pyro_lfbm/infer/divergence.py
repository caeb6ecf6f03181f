"""The divergence check of every Langevin chain, written once.

A chain *diverges* when the log density or its gradient stops being finite (a step size too large
for the posterior's curvature sends z to a region where the model overflows), or, as Pyro's HMC
defines it, when one move lowers the log density by more than 1000 (an unstable step size shows up
there several moves before the values overflow). The one chain driver
(:func:`~pyro_lfbm.infer.chain.run_chain`, which the guide, the early-stopping loop and the compiled
and CUDA-graph chains all run) calls :func:`diverged_rows` after each gradient evaluation and, on a
divergence, either raises
:class:`LangevinDivergenceError` (``on_divergence="raise"``) or, with ``"backoff"``, returns the
diverged rows to their last finite position and halves their step size. Those choices, with how
often a row may back off and the drop that counts as a divergence, are one
:class:`DivergencePolicy`.

Rows are the leading dimension of every site's tensor (one independent chain each), as in
:class:`~pyro_lfbm.infer.langevin.LangevinState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

Latents = Dict[str, torch.Tensor]

#: The accepted values of ``on_divergence``.
ON_DIVERGENCE = ("raise", "backoff")


class LangevinDivergenceError(FloatingPointError):
    """A Langevin chain reached a non-finite log density or gradient."""


@dataclass(frozen=True)
class DivergencePolicy:
    """What a chain does when a move diverges (the ``on_divergence`` argument of
    :func:`~pyro_lfbm.infer.chain.run_chain` and :class:`~pyro_lfbm.infer.guide.LangevinGuide`, where
    the strings ``"raise"`` and ``"backoff"`` stand for this class with that ``action``).

    :param str action: ``"raise"`` (default): raise :class:`LangevinDivergenceError` naming the site,
        the step, the step size and the number of rows; ``"backoff"``: return each diverged row to its
        last finite position and halve its step size for the rest of the chain.
    :param int max_backoffs: how often one row may back off before the chain raises after all.
    :param float max_log_density_drop: also call a move divergent when it lowers a row's log density
        by more than this (Pyro's HMC uses 1000, :data:`~pyro_lfbm.infer.langevin.MAX_LOG_DENSITY_DROP`);
        None (default): only non-finite values diverge (a short-run chain from N(0, I) on an image
        likelihood may legitimately lose more than 1000 in its first moves).
    """

    action: str = "raise"
    max_backoffs: int = 10
    max_log_density_drop: Optional[float] = None

    def __post_init__(self):
        if self.action not in ON_DIVERGENCE:
            raise ValueError(f"on_divergence must be one of {ON_DIVERGENCE} or a DivergencePolicy, got {self.action!r}")
        if isinstance(self.max_backoffs, bool) or not isinstance(self.max_backoffs, int) or self.max_backoffs < 0:
            raise ValueError(f"max_backoffs must be a non-negative integer, got {self.max_backoffs!r}")
        drop = self.max_log_density_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or not drop > 0):
            raise ValueError(f"max_log_density_drop must be positive or None, got {drop!r}")

    @property
    def backoff(self) -> bool:
        """True when a diverged row backs off instead of raising."""
        return self.action == "backoff"


def divergence_policy(on_divergence: Union[str, DivergencePolicy]) -> DivergencePolicy:
    """The :class:`DivergencePolicy` of an ``on_divergence`` argument: a policy as it is, ``"raise"`` or
    ``"backoff"`` as a policy with that action and the other fields' defaults."""
    return on_divergence if isinstance(on_divergence, DivergencePolicy) else DivergencePolicy(on_divergence)


def nonfinite_rows(log_density: Optional[torch.Tensor], grad: Latents) -> torch.Tensor:
    """(R,) bool: the rows whose log density (R,) (when given) or gradient (any site, (R, ...)) is
    not finite. With a scalar log density (one chain) the result has shape (1,)."""
    bad = None
    if log_density is not None:
        bad = ~torch.isfinite(log_density.reshape(-1))
    for g in grad.values():
        rows = bad.shape[0] if bad is not None else (g.shape[0] if g.dim() > 0 else 1)
        site_bad = ~torch.isfinite(g.reshape(rows, -1)).all(1)
        bad = site_bad if bad is None else bad | site_bad
    return bad


def diverged_rows(
    log_density: torch.Tensor,
    grad: Latents,
    previous_log_density: Optional[torch.Tensor] = None,
    max_drop: Optional[float] = None,
    nonfinite: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(R,) bool: :func:`nonfinite_rows` (or ``nonfinite``, those rows when already known, e.g. a
    sampler's ``is_divergent``), and, given the log density before the move and ``max_drop``, the
    rows whose log density fell by more than ``max_drop``."""
    bad = nonfinite_rows(log_density, grad) if nonfinite is None else nonfinite.reshape(-1)
    if previous_log_density is not None and max_drop is not None:
        bad = bad | ((previous_log_density - log_density).reshape(-1) > max_drop)
    return bad


def describe_divergence(
    log_density: torch.Tensor,
    grad: Latents,
    rows: torch.Tensor,
    previous_log_density: Optional[torch.Tensor] = None,
    max_drop: Optional[float] = None,
) -> str:
    """What went wrong in the diverged ``rows``: a non-finite gradient or log density, else the drop."""
    if bool(nonfinite_rows(log_density, grad)[rows].any()):
        return first_nonfinite_site(log_density, grad, rows & nonfinite_rows(log_density, grad))
    return f"the log density fell by more than {max_drop:g} in one move (an unstable step size)"


def first_nonfinite_site(log_density: Optional[torch.Tensor], grad: Latents, rows: torch.Tensor) -> str:
    """A short description of what is not finite in ``rows``: the gradient of a site (the first
    such site), else the log density."""
    count = rows.shape[0]
    for name, g in grad.items():
        if not torch.isfinite(g.reshape(count, -1)[rows]).all():
            return f"the gradient of site '{name}' is not finite"
    if log_density is not None and not torch.isfinite(log_density.reshape(-1)[rows]).all():
        return "the log density is not finite"
    return "the position is not finite"


def divergence_error(
    what: str,
    step: int,
    num_steps: int,
    step_size: Union[float, torch.Tensor],
    num_bad: int,
    num_rows: int,
    where: str = "Langevin chain",
    backoff_exhausted: bool = False,
) -> LangevinDivergenceError:
    """The one error message of a divergence: what went non-finite, at which step, with which step size, in how many rows."""
    if torch.is_tensor(step_size):
        step_size = float(step_size.min()) if step_size.numel() else float("nan")
    num_bad = int(num_bad)
    at = "at the initial position" if step == 0 else f"at step {step} of {num_steps}"
    if backoff_exhausted:
        fix = "the step size was already halved the maximum number of times; lower step_size or check the model"
    elif step == 0:
        fix = "the model's log density is not finite at the chain's start; check the data and the initial latents"
    else:
        fix = (
            "lower step_size, or pass on_divergence='backoff' to return diverged rows to their last finite "
            "position and halve their step size"
        )
    return LangevinDivergenceError(
        f"{where} diverged {at} (step size {step_size:.4g}): {what} in {num_bad} of {num_rows} rows; {fix}"
    )
