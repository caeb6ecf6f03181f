"""Langevin samplers as plug-ins: one module each, the protocol in :mod:`~pyro_lfbm.infer.samplers.base`.

Every sampler runs under the one chain driver (:func:`pyro_lfbm.infer.chain.run_chain`, the
guide's chain) and under Pyro's MCMC (:class:`~pyro_lfbm.infer.kernel.LangevinKernel`)::

    LangevinGuide(model, sampler=MALA())
    LangevinKernel(model, sampler=ULA())
"""

from pyro_lfbm.infer.samplers.base import Sampler, StepInfo
from pyro_lfbm.infer.samplers.mala import MALA, MALA_OPTIMAL_ACCEPT_PROB
from pyro_lfbm.infer.samplers.ula import ULA

#: The training guide's samplers by name (``GuideConfig.sampler``, ``anomaly.py --sampler``): each
#: spends one gradient evaluation per step, so equal ``num_steps`` are equal costs.
SAMPLER_NAMES = ("ula", "preconditioned", "underdamped")


def sampler_by_name(name: str) -> Sampler:
    """A sampler with its default settings from its name in :data:`SAMPLER_NAMES`: ``ULA()``,
    ``PreconditionedLangevin()`` (pSGLD's adaptive diagonal), ``UnderdampedLangevin()`` (friction 1).

    :raises ValueError: for another name, in one line naming the choices."""
    if name == "ula":
        return ULA()
    if name == "preconditioned":
        from pyro_lfbm.infer.samplers.preconditioned import PreconditionedLangevin

        return PreconditionedLangevin()
    if name == "underdamped":
        from pyro_lfbm.infer.samplers.underdamped import UnderdampedLangevin

        return UnderdampedLangevin()
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")


__all__ = ["MALA", "MALA_OPTIMAL_ACCEPT_PROB", "SAMPLER_NAMES", "Sampler", "StepInfo", "ULA", "sampler_by_name"]
