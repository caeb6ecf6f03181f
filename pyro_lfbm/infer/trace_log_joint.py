"""Per-example log joints of arbitrary Pyro models, computed from traces.

These are the generic path of the Langevin guide and kernel: they work on any Pyro model whose
local latent sites are real-valued and live in one data plate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

Latents = Dict[str, torch.Tensor]


class _InitLatents(Messenger):
    """Give every unobserved sample site a value from ``init_fn(site_fn)`` instead of sampling."""

    def __init__(self, init_fn: Callable[[torch.distributions.Distribution], torch.Tensor]):
        super().__init__()
        self.init_fn = init_fn

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        msg["value"] = self.init_fn(msg["fn"])


class _ParamsUnrecorded(Messenger):
    """Let ``pyro.param`` sites (``pyro.module`` registers one per parameter on every model call)
    bypass the handlers outside this one: the parameter store still answers them, but they are
    not recorded in the trace nor seen by ``block``. Only the sample sites' log probabilities
    are read from the per-step trace, and parameters are constants within a Langevin chain."""

    def _pyro_param(self, msg):
        msg["stop"] = True


def standard_normal_init(fn) -> torch.Tensor:
    """z₀ ~ N(0, I) with the shape of the site (batch and event dimensions).

    The prior is never sampled: that may be expensive (energy priors need their own Langevin).
    """
    shape = fn.batch_shape + fn.event_shape
    device = _device_of(fn)
    return torch.randn(shape, device=device)


def _device_of(fn) -> torch.device:
    for value in vars(fn).values():
        if torch.is_tensor(value):
            return value.device
    base = getattr(fn, "base_dist", None)
    return _device_of(base) if base is not None else torch.device("cpu")


@dataclass(frozen=True)
class PlateInfo:
    """The data plate of a model: name, full size, subsample indices and broadcast dim."""

    name: str
    size: int
    subsample: Optional[torch.Tensor]
    dim: int


@dataclass(frozen=True)
class LatentSites:
    """The local latent sites of a model run: initial values, event dims, and their plate."""

    initial: Latents
    event_dims: Dict[str, int]
    plate: Optional[PlateInfo]
    params: Tuple[torch.Tensor, ...] = ()  # the unconstrained leaf tensors of the model's param sites


def find_latent_sites(model, args: Tuple, kwargs: Dict, init_fn=standard_normal_init) -> LatentSites:
    """Run ``model`` once (no gradients, hidden from outer handlers) to find its latent sites.

    Every unobserved sample site must be real-valued (support ``real`` or ``real_vector``) and all
    of them must share one plate (the data plate) or none. Raises ``ValueError`` otherwise.
    """
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(_InitLatents(init_fn)(model)).get_trace(*args, **kwargs)
    initial, event_dims, frames = {}, {}, None
    plate = None
    params = []
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            unconstrained = getattr(site["value"], "unconstrained", None)
            leaf = unconstrained() if callable(unconstrained) else site["value"]
            if torch.is_tensor(leaf) and leaf.is_leaf:
                params.append(leaf)
            continue
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        support = site["fn"].support
        if getattr(support, "is_discrete", False) or not _is_real(support):
            raise ValueError(
                f"latent site '{name}' has support {support}; Langevin inference needs real-valued "
                "latents (reparametrise it, or observe it)"
            )
        initial[name] = site["value"].detach()
        event_dims[name] = len(site["fn"].event_shape)
        site_frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        frames = set(site_frames) if frames is None else frames & set(site_frames)
    if not initial:
        raise ValueError("the model has no latent sample sites for Langevin inference to move")
    if frames:
        if len(frames) > 1:
            names = sorted(f.name for f in frames)
            raise ValueError(f"latent sites share several plates {names}; nest only one data plate around them")
        frame = frames.pop()
        subsample = trace.nodes[frame.name]["value"] if frame.name in trace.nodes else None
        full_size = frame.full_size if frame.full_size is not None else frame.size
        plate = PlateInfo(frame.name, full_size, subsample, frame.dim)
    return LatentSites(initial, event_dims, plate, tuple(params))


def _is_real(support) -> bool:
    base = support
    while isinstance(base, (constraints.independent,)):
        base = base.base_constraint
    return base is constraints.real


def per_example_log_joint(model, latents: Latents, args: Tuple, kwargs: Dict, plate: Optional[PlateInfo]):
    """log p(x, z) per example, shape (B,) (or () without a data plate), unscaled by subsampling.

    The sum of every sample site's masked, *unscaled* log probability, reduced over all dims but
    the data plate's. Sites outside the data plate (global ones) do not depend on the local
    latents and are left out; they do not affect Langevin moves.
    """
    with poutine.block():
        conditioned = _ParamsUnrecorded()(poutine.condition(model, data=latents))
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
    total = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        log_prob = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])  # poutine.mask, no scale
        if plate is None:
            term = log_prob.sum()
        else:
            in_plate = any(f.name == plate.name for f in site["cond_indep_stack"])
            if not in_plate:
                continue
            term = _sum_except(log_prob, plate.dim)
        total = term if total is None else total + term
    return total


def _sum_except(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a batch-shaped log prob over every dim but ``dim`` (a negative plate dim)."""
    if log_prob.dim() < -dim:
        return log_prob.sum()  # broadcast over the plate: same for every example
    keep = log_prob.dim() + dim
    other = [d for d in range(log_prob.dim()) if d != keep]
    return log_prob.sum(other) if other else log_prob
