"""Short-run Langevin posterior inference packaged as a Pyro guide."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterable, Iterator, Optional

import torch
import pyro
import pyro.distributions as dist

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.langevin import LangevinState, short_run_langevin
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, per_example_log_joint

Latents = Dict[str, torch.Tensor]


@contextlib.contextmanager
def frozen_parameters(model, extra: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """While a chain runs, set ``requires_grad=False`` on the parameters of ``model`` (when it is
    an ``nn.Module``) and on the leaf tensors ``extra`` (a model's Pyro param sites) that require
    grad, and restore them afterwards.

    Only gradients with respect to the latents are wanted inside the chain; with frozen
    parameters autograd neither records nor keeps anything for parameter gradients, and
    parameter-only computations (the flow's assembled LU weight) are computed once per chain.
    """
    candidates = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    params, seen = [], set()
    for p in [*candidates, *extra]:
        if p.requires_grad and p.is_leaf and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    for p in params:
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            # pyro.module skips (and, in train mode, warns about) frozen parameters: expected here
            warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


def validate_first_call_only(fn: Callable[[Latents], torch.Tensor]) -> Callable[[Latents], torch.Tensor]:
    """Wrap a log density so that Pyro's/torch's argument validation runs on its first call only.

    Within one chain every call sees the same data and the same shapes; the first call catches
    what validation can catch (a bad observation, a wrong shape), and later calls skip the
    support checks on every pixel (``pyro.validation_enabled(False)``).
    """
    calls = [0]

    def wrapped(latents: Latents) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return fn(latents)
        with pyro.validation_enabled(False):
            return fn(latents)

    return wrapped


def _couples_rows(model) -> bool:
    """True when the model's examples interact within a batch (BatchNorm in train mode uses
    batch statistics): then stopped rows cannot be dropped from the evaluation."""
    if not isinstance(model, torch.nn.Module):
        return False
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


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
    :param float tolerance: optional early stopping (for ``noise=False``): a row (example) stops
        at the first step where its gradient norm is below ``tolerance``, and on the fast path
        stopped rows are no longer evaluated unless the model couples rows (BatchNorm in train
        mode: then every row is evaluated until all have stopped) (see
        :func:`~pyro_lfbm.infer.langevin.short_run_langevin`). ``last_state.steps`` then holds
        the gradient evaluations spent per example. ``None`` (default): exactly ``num_steps``.

    Inside the chain the model's parameters are frozen (``requires_grad=False``, restored
    afterwards) and Pyro's argument validation runs on the first evaluation only; neither
    changes the trajectory.

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
        tolerance: Optional[float] = None,
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
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be non-negative, got {tolerance!r}")
        self.tolerance = tolerance
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

    def _restricted_log_density(self, initial: Latents, args, kwargs):
        """rows -> the fast-path log density of those rows only: every tensor argument whose
        leading size is the batch size is indexed by ``rows``; validation stays off."""
        batch = next(iter(initial.values())).shape[0]
        log_joint = self.model.log_joint

        def take(value, rows):
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
                return value[rows]
            return value

        def restrict(rows: torch.Tensor) -> Callable[[Latents], torch.Tensor]:
            sub_args = tuple(take(a, rows) for a in args)
            sub_kwargs = {k: take(v, rows) for k, v in kwargs.items()}

            def fn(latents: Latents) -> torch.Tensor:
                with pyro.validation_enabled(False):
                    return log_joint(*sub_args, **sub_kwargs, **latents)

            return fn

        return restrict

    def infer(self, *args, **kwargs) -> Latents:
        """Run the chain without emitting Pyro sites; returns {site: final value} (detached)."""
        sites = find_latent_sites(self.model, args, kwargs)
        initial = dict(sites.initial)
        if self.init is not None:
            initial.update({k: v.detach() for k, v in self.init(*args, **kwargs).items()})
        log_density_fn = validate_first_call_only(self.log_density_fn(sites, args, kwargs))
        restrict = None
        if self.tolerance is not None and self.uses_fast_path and not _couples_rows(self.model):
            restrict = self._restricted_log_density(initial, args, kwargs)
        with posterior_inference(), frozen_parameters(self.model, sites.params):
            state = short_run_langevin(
                log_density_fn,
                initial,
                self.num_steps,
                self.step_size,
                noise=self.noise,
                tolerance=self.tolerance,
                restrict=restrict,
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
