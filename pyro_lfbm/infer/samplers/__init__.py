"""Langevin samplers as plug-ins: one module each, the protocol in :mod:`~pyro_lfbm.infer.samplers.base`.

Every sampler runs under the one chain driver (:func:`pyro_lfbm.infer.chain.run_chain`, the
guide's chain) and under Pyro's MCMC (:class:`~pyro_lfbm.infer.kernel.LangevinKernel`)::

    LangevinGuide(model, sampler=MALA())
    LangevinKernel(model, sampler=ULA())
"""

from pyro_lfbm.infer.samplers.base import Sampler, StepInfo
from pyro_lfbm.infer.samplers.mala import MALA, MALA_OPTIMAL_ACCEPT_PROB
from pyro_lfbm.infer.samplers.ula import ULA

__all__ = ["MALA", "MALA_OPTIMAL_ACCEPT_PROB", "Sampler", "StepInfo", "ULA"]
