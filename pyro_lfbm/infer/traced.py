"""A model's log density traced once into a graph (``torch.jit.trace``), as Pyro's HMC with
``jit_compile=True`` traces its potential function: ``LangevinGuide(model, compile=True)`` and
``LangevinKernel(model, compile=True)`` run their chains from it."""

from __future__ import annotations

import warnings
from typing import Callable, Dict

import torch

Latents = Dict[str, torch.Tensor]


def traced_log_density(log_density_fn: Callable[[Latents], torch.Tensor]) -> Callable[[Latents], torch.Tensor]:
    """``log_density_fn`` (latents {site: tensor} -> log density) traced with ``torch.jit.trace`` at
    its first call for each set of latent names, shapes, dtypes and devices, and run from the
    traced graph afterwards (gradients by autograd through that graph, as Pyro's HMC with
    ``jit_compile=True``): no Pyro handler and no distribution object runs after the first call.

    Everything else the function reads (the data, the model's parameters, plate subsample indices,
    Python control flow) is recorded as it was at that first call: use one traced function per
    chain (fixed data, frozen parameters) and only for models whose control flow does not depend
    on latent values."""
    traced: Dict[tuple, Callable] = {}

    def run(latents: Latents) -> torch.Tensor:
        names = tuple(latents)
        key = tuple((name, tuple(v.shape), v.dtype, v.device) for name, v in latents.items())
        if key not in traced:

            def pure(*values):
                return log_density_fn(dict(zip(names, values)))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=FutureWarning)
                traced[key] = torch.jit.trace(pure, tuple(latents.values()), check_trace=False)
        return traced[key](*latents.values())

    return run
