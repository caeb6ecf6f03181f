"""How reports name the priors and write a statistic over seeds, once for every table."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Optional

__all__ = ["PRIOR_MODELS", "PRIOR_ORDER", "PRIOR_WORDS", "mean_std", "prior_label"]

#: The order in which reports list the priors.
PRIOR_ORDER = ("flow", "ebm", "gaussian")
#: The model each prior makes: LFBM (flow), LEBM (energy-based), ABP (Gaussian).
PRIOR_MODELS = {"flow": "LFBM", "ebm": "LEBM", "gaussian": "ABP"}
#: The prior in words.
PRIOR_WORDS = {"flow": "flow", "ebm": "energy", "gaussian": "Gaussian"}


def prior_label(prior: str, model: bool = True) -> str:
    """``"flow (LFBM)"`` (``model=False``: ``"flow"``); unknown names are returned as they are."""
    word = PRIOR_WORDS.get(prior, prior)
    return f"{word} ({PRIOR_MODELS[prior]})" if model and prior in PRIOR_MODELS else word


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
