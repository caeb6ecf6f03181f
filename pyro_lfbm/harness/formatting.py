"""How reports name the priors and write a statistic over seeds, once for every table."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Optional, Tuple

from pyro_lfbm.train.presets import PRIOR_KINDS, prior_names

__all__ = ["mean_std", "other_priors", "prior_label"]


def other_priors() -> Tuple[str, ...]:
    """The priors the flow (LFBM) is compared with: every other registered one, in report order
    (:func:`~pyro_lfbm.train.presets.prior_names`)."""
    return tuple(p for p in prior_names() if p != "flow")


def prior_label(prior: str, model: bool = True) -> str:
    """``"flow (LFBM)"`` (``model=False``: ``"flow"``), from the prior's
    :class:`~pyro_lfbm.train.presets.PriorKind`; unknown names are returned as they are."""
    kind = PRIOR_KINDS.get(prior)
    if kind is None:
        return prior
    return f"{kind.word} ({kind.model})" if model and kind.model else kind.word


def _number(value: float, spec: str) -> str:
    text = format(value, spec)
    return format(float(text), "g") if spec.endswith("g") else text  # "g" specs: no exponent notation


def mean_std(values: Iterable[float], fmt: str = ".3f", std_fmt: Optional[str] = None) -> str:
    """``"mean ± std (n)"`` of the finite ``values`` (sample standard deviation, as pandas), ``"mean (1)"``
    for one value and ``"–"`` for none; ``fmt`` formats the mean (and the std unless ``std_fmt``)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return "–"
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return f"{_number(mean, fmt)} ({len(finite)})"
    return f"{_number(mean, fmt)} ± {_number(statistics.stdev(finite), std_fmt or fmt)} ({len(finite)})"
