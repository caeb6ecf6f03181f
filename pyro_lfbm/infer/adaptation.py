"""Step-size adaptation toward a target acceptance probability, shared by the chains that adapt.

The scheme is Pyro's dual averaging (:class:`pyro.ops.dual_averaging.DualAveraging`, the step-size
half of HMC's warmup, :mod:`pyro.infer.mcmc.adaptation`), kept apart from any sampler so that a
guide adapting across calls (:class:`~pyro_lfbm.infer.guide.LangevinGuide`) and a chain adapting
across steps (:func:`~pyro_lfbm.metrics.anomaly.conditional_prior_draws`) use the same code.
:class:`~pyro_lfbm.infer.kernel.LangevinKernel` uses Pyro's own
:class:`~pyro.infer.mcmc.adaptation.WarmupAdapter`, as HMC does.
"""

from __future__ import annotations

import math
from typing import Optional

from pyro.ops.dual_averaging import DualAveraging

#: The default target of :class:`StepSizeAdaptation`: the mean acceptance probability a MALA test
#: would give an *unadjusted* chain's moves (nothing is rejected, so this measures the per-step
#: discretisation error, and the target is higher than MALA's optimum 0.574 for a chain that
#: rejects; Roberts & Rosenthal 1998). On the Bernoulli digits model of
#: ``experiments/guide_step_size.py`` (30 epochs, seeds 0 and 1; pixel accuracy of reconstructions,
#: prior draws about 0.76-0.79): target 0.574 froze s at 1.5 (0.824, 0.829), 0.8 at 0.42 / 0.38
#: (0.931, 0.916), 0.9 at 0.23 (0.868, 0.884); fixed s = 0.1 collapsed (0.793, 0.792), 0.5 gave 0.923, 0.925.
TARGET_ACCEPT_PROB = 0.8

#: The default dual-averaging gain. Pyro's HMC uses γ = 0.05 for the acceptance of one transition;
#: a guide's update sees the mean over R rows × K moves, a far less noisy statistic, and γ = 0.05
#: makes log s oscillate by ±1 between calls; γ = 0.2 settles within ~30 calls on the tests'
#: linear-Gaussian model.
ADAPT_GAMMA = 0.2


def window_ends(total: int, first: int = 10) -> set:
    """Update counts that end an adaptation window: windows of 10, 20, 40, ... updates, the last one
    stretched to ``total`` when the next would not fit (as Stan's slow warmup windows)."""
    ends, end, size = set(), first, first
    while end + 2 * size <= total:
        ends.add(end)
        size *= 2
        end += size
    return ends


class StepSizeAdaptation:
    r"""Adapt a step size s for ``num_updates`` updates, then freeze it.

    Each :meth:`update` takes the mean acceptance probability a Metropolis-Hastings test gives the
    chain's last moves and takes one dual-averaging step of log s toward ``target_accept_prob``
    (Hoffman & Gelman 2014, section 3.2; Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging`).
    With ``windowed=True`` the scheme restarts at the end of windows of doubling length (after
    updates 10, 30, 70, 150, ...; the last window runs to ``num_updates``), centred on the step size
    reached, as Stan's slow warmup windows do: a model that trains meanwhile moves its posterior (and
    the right s), and later windows only see recent updates. At the last update s freezes at the
    window's average.

    Pass one to :class:`~pyro_lfbm.infer.guide.LangevinGuide` as ``step_size=`` (``"auto"`` is
    ``StepSizeAdaptation()``), where an update is one guide call::

        guide = LangevinGuide(model, step_size=StepSizeAdaptation(target_accept_prob=0.7, num_updates=50))

    :param float target_accept_prob: the target mean acceptance probability, in (0, 1).
    :param int num_updates: how many updates adapt s; later ones are refused (:attr:`adapting` is False).
    :param float initial_step_size: s before the first update (and the first prox-centre).
    :param float gamma: the dual-averaging gain (:data:`ADAPT_GAMMA`; Pyro's HMC uses 0.05).
    :param bool windowed: restart in doubling windows (see above); False: one window.
    """

    def __init__(
        self,
        target_accept_prob: float = TARGET_ACCEPT_PROB,
        num_updates: int = 200,
        initial_step_size: float = 0.1,
        *,
        gamma: float = ADAPT_GAMMA,
        windowed: bool = True,
    ):
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 1:
            raise ValueError(f"num_updates must be a positive integer, got {num_updates!r}")
        if not initial_step_size > 0:
            raise ValueError(f"initial_step_size must be positive, got {initial_step_size!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.target_accept_prob = float(target_accept_prob)
        self.num_updates = num_updates
        self.initial_step_size = float(initial_step_size)
        self.windowed = windowed
        #: the current step size: adapting until :attr:`updates` reaches ``num_updates``, then frozen
        self.step_size = self.initial_step_size
        #: the updates taken so far
        self.updates = 0
        self._window_ends = window_ends(num_updates) if windowed else set()
        self._dual = DualAveraging(prox_center=math.log(self.step_size), gamma=gamma)

    @property
    def adapting(self) -> bool:
        """True until ``num_updates`` updates have been taken."""
        return self.updates < self.num_updates

    def update(self, accept_prob: float) -> float:
        """One update from the chain's mean acceptance probability; returns the new step size."""
        if not self.adapting:
            raise RuntimeError(f"the step size was frozen after {self.num_updates} updates; check .adapting before updating")
        self._dual.step(self.target_accept_prob - float(accept_prob))
        log_step, log_step_avg = self._dual.get_state()
        self.updates += 1
        if self.updates >= self.num_updates:
            self.step_size = math.exp(log_step_avg)
        elif self.updates in self._window_ends:
            self.step_size = math.exp(log_step_avg)
            self._dual.reset()
            self._dual.prox_center = math.log(self.step_size)
        else:
            self.step_size = math.exp(log_step)
        return self.step_size

    def state_dict(self) -> dict:
        """The step size, the updates taken and the dual-averaging state (plain floats)."""
        d = self._dual
        return {"step_size": self.step_size, "updates": self.updates, "prox_center": d.prox_center,
                "x_avg": d._x_avg, "g_avg": d._g_avg, "t": d._t, "x_t": getattr(d, "_x_t", None)}

    def load_state_dict(self, state: dict) -> None:
        d = self._dual
        self.step_size, self.updates = float(state["step_size"]), int(state["updates"])
        d.prox_center, d._x_avg, d._g_avg, d._t = state["prox_center"], state["x_avg"], state["g_avg"], state["t"]
        if state.get("x_t") is not None:
            d._x_t = state["x_t"]

    def __repr__(self) -> str:
        now = f"adapting, {self.updates}/{self.num_updates}" if self.adapting else "frozen"
        return (f"StepSizeAdaptation(target_accept_prob={self.target_accept_prob}, num_updates={self.num_updates}, "
                f"step_size={self.step_size:.4g}, {now})")


def as_adaptation(value) -> Optional[StepSizeAdaptation]:
    """``"auto"`` -> a fresh :class:`StepSizeAdaptation`; an instance -> itself; a number or None -> None."""
    if isinstance(value, StepSizeAdaptation):
        return value
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"step_size must be a positive number, 'auto' or a StepSizeAdaptation, got {value!r}")
        return StepSizeAdaptation()
    return None
