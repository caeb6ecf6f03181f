"""Short-run Langevin posterior inference packaged as a Pyro guide."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import pyro
import pyro.distributions as dist

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.langevin import LangevinState, short_run_langevin
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, per_example_log_joint

Latents = Dict[str, torch.Tensor]


class LangevinGuide:
    r"""A guide that infers the local latents of ``model`` by short-run Langevin dynamics.

    On each call with the model's arguments it starts from z₀ ~ N(0, I) (or ``init``), runs
    ``num_steps`` batched steps

    .. math:: z \leftarrow z + \tfrac{s^2}{2}\nabla_z \log p(x, z) + s\,\xi

    on every continuous latent site of the model, and emits the results as ``Delta`` sites in
    the model's data plate. With a Delta guide, ``Trace_ELBO`` is -log p(x, z_K), so::

        svi = SVI(model, LangevinGuide(model), pyro.optim.Adam({"lr": 4e-4}), Trace_ELBO())
        svi.step(x)

    is one iteration of LFBM's Algorithm 1 (Langevin inference, then one Adam step on every
    parameter). The chain uses the per-example, *unscaled* log joint, so plate subsampling does
    not change its temperature. When the model has a method
    ``log_joint(*args, **kwargs, **latents) -> (B,)`` (as :class:`~pyro_lfbm.models.LatentModel`
    does) it is used directly (fast path); otherwise the log joint comes from Pyro traces.

    :param model: a Pyro model whose latent sites are real-valued and share one data plate.
    :param int num_steps: K, the number of Langevin steps (paper: 20 in training).
    :param float step_size: s (paper: 0.1).
    :param bool noise: False turns the chain into gradient ascent on log p(x, z)
        (the paper's test-time inference).
    :param init: optional ``init(*args, **kwargs) -> {site: tensor}`` giving z₀ instead of
        N(0, I) (persistent chains, an encoder's mean, ...).
    :param bool use_fast_path: use ``model.log_joint`` when the model has one.

    After each call, :attr:`latents` holds the final latents ({site: (B, ...)}) and
    :attr:`last_state` the final :class:`~pyro_lfbm.infer.langevin.LangevinState`.
    """

    def __init__(
        self,
        model: Callable,
        num_steps: int = 20,
        step_size: float = 0.1,
        noise: bool = True,
        init: Optional[Callable[..., Latents]] = None,
        use_fast_path: bool = True,
    ):
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.model = model
        self.num_steps = num_steps
        self.step_size = float(step_size)
        self.noise = noise
        self.init = init
        self.use_fast_path = use_fast_path
        self.latents: Optional[Latents] = None
        self.last_state: Optional[LangevinState] = None

    @property
    def uses_fast_path(self) -> bool:
        return self.use_fast_path and callable(getattr(self.model, "log_joint", None))

    def log_density_fn(self, sites: LatentSites, args, kwargs) -> Callable[[Latents], torch.Tensor]:
        """The per-example log joint as a function of the latents, for these model arguments."""
        if self.uses_fast_path:
            log_joint = self.model.log_joint
            return lambda latents: log_joint(*args, **kwargs, **latents)
        model, plate = self.model, sites.plate
        return lambda latents: per_example_log_joint(model, latents, args, kwargs, plate)

    def infer(self, *args, **kwargs) -> Latents:
        """Run the chain without emitting Pyro sites; returns {site: final value} (detached)."""
        sites = find_latent_sites(self.model, args, kwargs)
        initial = dict(sites.initial)
        if self.init is not None:
            initial.update({k: v.detach() for k, v in self.init(*args, **kwargs).items()})
        with posterior_inference():
            state = short_run_langevin(
                self.log_density_fn(sites, args, kwargs), initial, self.num_steps, self.step_size, noise=self.noise
            )
        self.last_state, self.latents = state, state.position
        self._sites = sites
        return state.position

    def __call__(self, *args, **kwargs) -> Latents:
        latents = self.infer(*args, **kwargs)
        sites = self._sites
        plate = sites.plate
        if plate is None:
            return self._emit(latents, sites)
        with pyro.plate(plate.name, plate.size, subsample=plate.subsample, dim=plate.dim):
            return self._emit(latents, sites)

    @staticmethod
    def _emit(latents: Latents, sites: LatentSites) -> Latents:
        return {
            name: pyro.sample(name, dist.Delta(value, event_dim=sites.event_dims[name]))
            for name, value in latents.items()
        }
