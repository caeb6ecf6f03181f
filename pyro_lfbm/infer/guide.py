"""Short-run Langevin posterior inference packaged as a Pyro guide."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.adaptation import StepSizeAdaptation, as_adaptation
from pyro_lfbm.infer.divergence import DivergencePolicy, divergence_policy
from pyro_lfbm.infer.modes import frozen_parameters, outside_inference_mode, refuse_jit_tracing
from pyro_lfbm.infer.chain import ChainInfo, run_chain
from pyro_lfbm.infer.langevin import LangevinState
from pyro_lfbm.infer.persistent import PersistentChains
from pyro_lfbm.infer.traced import CompiledLogDensity, flatten_call
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, log_joint_terms

Latents = Dict[str, torch.Tensor]

#: The step size of gradient ascent (``noise=False``, or ``tolerance``) when none is given: the
#: paper's test-time step. Without noise there is no acceptance rate to adapt to.
ASCENT_STEP_SIZE = 0.1


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


def _sites_key(sites: LatentSites) -> tuple:
    """What a compiled graph of the chain's target depends on in a call's site description: the
    sites, their shapes and transforms (with small tensor arguments, e.g. an interval's bounds, by
    value), the data plate and the particle plates."""

    def transform_key(transform) -> tuple:
        parts = getattr(transform, "parts", None)
        if parts is not None:
            return tuple(transform_key(t) for t in parts)
        tensors = tuple((k, tuple(v.reshape(-1).tolist()) if v.numel() <= 64 else id(v))
                        for k, v in sorted(vars(transform).items()) if torch.is_tensor(v))
        return (type(transform).__name__, tensors)

    site_keys = tuple((name, s.local, s.event_dim, tuple(s.shape), transform_key(s.transform))
                      for name, s in sites.sites.items())
    plates = tuple((p.name, p.size, p.subsample_size, p.dim) for p in (sites.plate, *sites.batch_plates) if p is not None)
    return site_keys, plates


def _couples_rows(model) -> bool:
    """True when the model's examples interact within a batch (BatchNorm in train mode uses
    batch statistics): then stopped rows cannot be dropped from the evaluation."""
    if not isinstance(model, torch.nn.Module):
        return False
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


class LangevinGuide(torch.nn.Module):
    r"""A guide that infers the local latents of ``model`` by short-run Langevin dynamics.

    On each call with the model's arguments it starts from u₀ ~ N(0, I) (or ``init``, or the
    example's persistent chain), runs ``num_steps`` batched steps

    .. math:: u \leftarrow u + \tfrac{s^2}{2}\nabla_u \log p(x, T(u)) + s\,\xi

    on every continuous latent site of the model, in the unconstrained space of
    ``T = biject_to(support)`` (with the log|det J| term; constrained latents such as HalfNormal,
    Gamma, Beta, Dirichlet are handled as Pyro's HMC does), and emits the constrained results
    ``T(u_K)`` as ``Delta`` sites in the model's data plate. With a Delta guide, ``Trace_ELBO`` is
    -log p(x, z_K), so::

        svi = SVI(model, LangevinGuide(model, step_size=0.1), pyro.optim.Adam({"lr": 4e-4}), Trace_ELBO())
        svi.step(x)

    is one iteration of LFBM's Algorithm 1 (Langevin inference, then one Adam step on every
    parameter). When the model has a method ``log_joint(*args, **kwargs, **latents) -> (B,)``
    (as :class:`~pyro_lfbm.models.LatentModel` does) it is used directly (fast path); otherwise
    the log joint comes from Pyro traces (:func:`~pyro_lfbm.infer.trace_log_joint.log_joint_terms`).

    What it supports (see the user guide, "Using your own Pyro model", ``docs/guide/own_model.md``):

    - **Subsampling.** A plate with ``subsample_size`` draws its minibatch once per guide call;
      every step of the chain sees those indices, and the guide emits the plate with
      ``subsample=`` them, so the model's trace of the same SVI step uses the same minibatch.
      The chain's per-example log joint leaves out the plates' subsampling factor N/B (its
      temperature does not depend on the minibatch size); the SVI loss keeps Pyro's scaling.
    - **Scales.** Any other scale stays: ``poutine.scale(scale=β)`` around the latent sites
      (KL annealing) makes the chain target p(x | z) p(z)^β.
    - **Vectorised particles.** Under Pyro's particle plate (``Predictive(parallel=True)``,
      ``Trace_ELBO(vectorize_particles=True)``) every particle runs its own chains, and the
      Delta sites carry the particle dimension.
    - **Global latents** (sites outside the data plate) are not moved by the chain: give them
      their own guide with ``global_guide=`` (e.g. ``AutoNormal(poutine.block(model,
      expose=[...]))``). It is called first; the chain then targets p(z_local | x, globals).
      Without one, a model with global latents raises ``ValueError`` naming this pattern. A
      model with no plate at all is one chain over all its latents.

    :param model: a Pyro model whose latent sites are continuous.
    :param int num_steps: K, the number of Langevin steps (paper: 20 in training).
    :param step_size: s (paper: 0.1, which the presets of :mod:`pyro_lfbm.train.presets` pass), or
        a :class:`~pyro_lfbm.infer.adaptation.StepSizeAdaptation` that adapts s over the first calls
        (each call is one update, from the mean Metropolis-Hastings acceptance probability a MALA
        test would give the chain's moves, computed along the chain: one extra gradient evaluation
        per call while adapting; a diverged move counts as acceptance 0 and its row backs off), then
        freezes it; ``"auto"`` is ``StepSizeAdaptation()`` (target 0.8 over 200 calls from s = 0.1).
        ``None`` (default): ``"auto"`` for the noisy chain, :data:`ASCENT_STEP_SIZE` = 0.1 for
        ``noise=False`` or with ``tolerance``. A fixed s suited to one likelihood is not suited to
        another: on a Bernoulli model of 8x8 digits s = 0.1 learned nothing (see the README). The
        current s is :attr:`step_size`, saved in :meth:`state_dict` with the adaptation's state.
    :param bool noise: False turns the chain into gradient ascent on log p(x, z)
        (the paper's test-time inference).
    :param init: optional ``init(*args, **kwargs) -> {site: tensor}`` giving constrained
        starting values of local sites instead of N(0, I) (an encoder's mean, ...).
    :param bool use_fast_path: use ``model.log_joint`` when the model has one.
    :param float tolerance: optional early stopping (for ``noise=False``): a row (example) stops
        at the first step where its gradient norm is below ``tolerance``, and on the fast path
        stopped rows are no longer evaluated unless the model couples rows (BatchNorm in train
        mode: then every row is evaluated until all have stopped) (see
        :func:`~pyro_lfbm.infer.langevin.short_run_langevin`). ``last_state.steps`` then holds
        the gradient evaluations spent per example. ``None`` (default): exactly ``num_steps``.
    :param on_divergence: what a divergence does (a non-finite log density or gradient): ``"raise"``
        (default) raises :class:`~pyro_lfbm.infer.divergence.LangevinDivergenceError` naming the site,
        the step, the step size and the number of rows; ``"backoff"`` returns a diverged row to its last
        finite position and halves its step size for the rest of that chain, counted in
        :attr:`divergences`; a :class:`~pyro_lfbm.infer.divergence.DivergencePolicy` also sets how often
        a row may back off and a drop in log density that counts as a divergence (HMC's 1000).
    :param global_guide: a guide for the model's global latents (see above).
    :param str data_plate: the name of the data plate when the model has several outermost plates.
    :param sampler: the chain's sampler (:mod:`pyro_lfbm.infer.samplers`: ``ULA()``, ``MALA()``,
        ...); None (default): ``ULA(noise)``, the paper's chain.
    :param bool compile: run the chain from one compiled graph of the model's log density and
        its gradient (:class:`~pyro_lfbm.infer.traced.CompiledLogDensity`): the model is run once
        on tracing tensors (Pyro handlers, distribution objects and all) to record the tensor
        operations of the log joint and of its backward pass to the latents, with the call's
        tensors (data, plate subsample indices) as graph inputs; inductor compiles that graph
        once per input signature (shapes, dtypes, non-tensor arguments, parameter tensors,
        train/eval mode), and every later step and call of that signature runs it. The first
        signature costs seconds of compiling; the same numbers as ``compile=False`` up to float
        rounding. As Pyro's HMC with ``jit_compile=True``: for models whose control flow depends
        neither on latent values nor on data values. With a ``global_guide`` (whose values change
        every call) the chain runs eagerly.
    :param int persistent: the number N of training examples: keep one persistent chain per
        example (ABP, Han et al. 2017): each call starts an example's chain from its latents of
        the previous call. Examples are identified by their dataset positions: the subsample
        indices of a data plate of full size N, or :meth:`set_positions` before the call
        (:func:`~pyro_lfbm.train.svi.fit` does this). Saved in :meth:`state_dict`.

    Inside the chain the model's parameters are frozen (``requires_grad=False``, restored
    afterwards) and Pyro's argument validation runs on the first evaluation only; neither
    changes the trajectory. z₀, the noise and every buffer follow the dtype and device of the
    model's distributions (or parameters, or data): a float64 model runs in float64.

    After each call, :attr:`latents` holds the final constrained local latents ({site: value}),
    :attr:`last_state` the chain's final :class:`~pyro_lfbm.infer.langevin.LangevinState`
    (unconstrained, rows flattened in front) and :attr:`last_info` its
    :class:`~pyro_lfbm.infer.langevin.ChainInfo`.
    """

    def __init__(
        self,
        model: Callable,
        num_steps: int = 20,
        step_size: Union[float, str, StepSizeAdaptation, None] = None,
        noise: bool = True,
        init: Optional[Callable[..., Latents]] = None,
        use_fast_path: bool = True,
        tolerance: Optional[float] = None,
        *,
        on_divergence: Union[str, DivergencePolicy] = "raise",
        global_guide: Optional[Callable] = None,
        data_plate: Optional[str] = None,
        persistent: Optional[int] = None,
        sampler=None,
        compile: bool = False,
    ):
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        if step_size is None:
            step_size = "auto" if noise and tolerance is None else ASCENT_STEP_SIZE
        #: the step-size adaptation (None: a fixed step size)
        self.adaptation = as_adaptation(step_size)
        if self.adaptation is None and (isinstance(step_size, bool) or not isinstance(step_size, numbers.Real)
                                        or not step_size > 0):
            raise ValueError(f"step_size must be a positive number, 'auto' or a StepSizeAdaptation, got {step_size!r}")
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be non-negative, got {tolerance!r}")
        on_divergence = divergence_policy(on_divergence)
        if self.adaptation is not None:
            if not noise:
                raise ValueError("an adapted step size targets the noisy chain's acceptance rate; it needs noise=True")
            if tolerance is not None:
                raise ValueError("an adapted step size and tolerance cannot be combined (tolerance is for noise=False)")
        if tolerance is not None and on_divergence.backoff:
            raise ValueError("tolerance (early stopping) supports on_divergence='raise' only")
        if persistent is not None and (isinstance(persistent, bool) or not isinstance(persistent, int) or persistent < 1):
            raise ValueError(f"persistent must be the number of training examples (a positive integer), got {persistent!r}")
        if sampler is not None and not noise:
            raise ValueError("noise=False configures the default sampler; pass sampler=ULA(noise=False) instead")
        # the model is not a child module: its parameters belong to the model, not to the guide
        object.__setattr__(self, "model", model)
        self.global_guide = global_guide
        self.num_steps = num_steps
        self.noise = noise
        #: the chain's sampler (:mod:`pyro_lfbm.infer.samplers`); None: ``ULA(noise)``
        self.sampler = sampler
        self.compile = bool(compile)
        self.init = init
        self.use_fast_path = use_fast_path
        self.tolerance = tolerance
        #: the :class:`~pyro_lfbm.infer.divergence.DivergencePolicy`
        self.on_divergence = on_divergence
        self.data_plate = data_plate
        self.step_size = float(self.adaptation.step_size if self.adaptation is not None else step_size)
        self.chains = PersistentChains(persistent) if persistent is not None else None
        self._positions: Optional[torch.Tensor] = None
        self.divergences = 0
        self.latents: Optional[Latents] = None
        self.last_state: Optional[LangevinState] = None
        self.last_info: Optional[ChainInfo] = None
        self.last_acceptance_prob: Optional[float] = None
        self._sites: Optional[LatentSites] = None

    # -- public helpers ----------------------------------------------------------------------
    @property
    def uses_fast_path(self) -> bool:
        return self.use_fast_path and self.global_guide is None and callable(getattr(self.model, "log_joint", None))

    @property
    def auto(self) -> bool:
        """True when the step size is adapted (``step_size="auto"`` or a ``StepSizeAdaptation``)."""
        return self.adaptation is not None

    @property
    def adapting(self) -> bool:
        """True while the step size is still adapting (the adaptation's first ``num_updates`` calls)."""
        return self.adaptation is not None and self.adaptation.adapting

    def set_positions(self, positions: Optional[torch.Tensor]) -> None:
        """Dataset positions (B,) int64 of the examples of the next calls (persistent chains); None clears them."""
        if positions is not None:
            positions = torch.as_tensor(positions)
            if positions.dim() != 1 or positions.is_floating_point():
                raise ValueError(f"positions must be a 1-d integer tensor, got {tuple(positions.shape)} {positions.dtype}")
        self._positions = positions

    def log_density_fn(self, sites: LatentSites, args, kwargs, model=None) -> Callable[[Latents], torch.Tensor]:
        """The chain's target as a function of unconstrained latents {site: value} (model layout):
        returns the per-row log joint, shape ``sites.rows_shape`` (local latents), or the global
        log joint, shape ``sites.batch_shape``, for a model without a data plate."""
        model = self.model if model is None else model
        if self.uses_fast_path and model is self.model and not sites.batch_plates:
            log_joint = self.model.log_joint
            identity = all(s.is_identity for s in sites.sites.values())
            if identity:
                return lambda latents: log_joint(*args, **kwargs, **latents)

            def fast(latents: Latents) -> torch.Tensor:
                values = sites.constrain(latents)
                total = log_joint(*args, **kwargs, **values)
                for name, u in latents.items():
                    site = sites.sites[name]
                    if not site.is_identity:
                        total = total + sites.reduce_to_rows(site.log_abs_det_jacobian(u, values[name]))
                return total

            return fast

        def traced(latents: Latents) -> torch.Tensor:
            local, global_ = log_joint_terms(model, latents, args, kwargs, sites)
            return global_ if sites.plate is None else local

        return traced

    # -- the chain -----------------------------------------------------------------------------
    def _globals(self, args, kwargs, emit: bool) -> Tuple[Callable, Latents, Latents]:
        """Run the global guide (emitting its sites when ``emit``); returns the model conditioned
        on its (detached) values, those values, and the subsample indices of the plates it entered
        ({plate name: indices}). The conditioned model replays those indices, so that the chain's
        locals belong to the same elements of a subsampled outer plate as the globals."""
        if self.global_guide is None:
            return self.model, {}, {}
        # the trace is taken inside the block (a trace outside it would see nothing)
        with poutine.block(hide_fn=lambda msg: not emit):
            trace = poutine.trace(self.global_guide).get_trace(*args, **kwargs)
        values, subsamples = {}, {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            (subsamples if site_is_subsample(site) else values)[name] = site["value"]
        data = {**{k: v.detach() for k, v in values.items()}, **subsamples}
        return poutine.condition(self.model, data=data), values, subsamples

    def _find_sites(self, model, args, kwargs) -> LatentSites:
        sites = find_latent_sites(model, args, kwargs, data_plate=self.data_plate)
        if sites.plate is not None and sites.global_names:
            names = sites.global_names
            raise ValueError(
                f"latent site(s) {names} are outside the data plate '{sites.plate.name}' (global latents); "
                "LangevinGuide moves local latents only. Give the globals their own guide: "
                f"LangevinGuide(model, global_guide=AutoNormal(poutine.block(model, expose={names}))) "
                "(see docs/guide/own_model.md), or use LangevinKernel with MCMC"
            )
        return sites

    def _initial(self, sites: LatentSites, args, kwargs) -> Tuple[Latents, Optional[torch.Tensor]]:
        """Packed unconstrained starting values {site: (R, ...)}, and the persistent positions."""
        names = list(sites.sites)
        initial = {name: sites.pack(name, sites.initial[name]) for name in names}
        if self.init is not None:
            given = self.init(*args, **kwargs)
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise ValueError(f"init returned values for {unknown}, which are not latent sites of the chain ({names})")
            for name, value in given.items():
                u = sites.sites[name].transform.inv(value.detach())
                initial[name] = sites.pack(name, u.to(initial[name].dtype)).reshape(initial[name].shape)
        positions = None
        if self.chains is not None:
            positions = self._persistent_positions(sites)
            initial = self.chains.initial(positions, initial)
        return initial, positions

    def _persistent_positions(self, sites: LatentSites) -> torch.Tensor:
        if sites.batch_plates or sites.plate is None:
            raise ValueError(
                "persistent chains need one chain per example of a data plate, without vectorised particles "
                f"(found data plate {None if sites.plate is None else sites.plate.name!r}, "
                f"particle plates {[p.name for p in sites.batch_plates]})"
            )
        rows = sites.plate.subsample_size
        if self._positions is not None:
            positions = self._positions
        elif sites.plate.size == self.chains.num_examples and sites.plate.subsample is not None:
            positions = sites.plate.subsample
        else:
            raise ValueError(
                f"persistent chains ({self.chains.num_examples} examples) need the dataset positions of this batch "
                f"of {rows}: call guide.set_positions(idx) before the step (fit() does), or subsample a data plate "
                f"of full size {self.chains.num_examples} (pyro.plate(name, {self.chains.num_examples}, subsample=idx))"
            )
        if positions.shape[0] != rows:
            raise ValueError(f"{positions.shape[0]} positions were set for a batch of {rows} examples; call set_positions with this batch's indices")
        if int(positions.min()) < 0 or int(positions.max()) >= self.chains.num_examples:
            raise ValueError(f"positions must lie in [0, {self.chains.num_examples}), got [{int(positions.min())}, {int(positions.max())}]")
        return positions

    def _run(self, model, args, kwargs) -> Latents:
        sites = self._find_sites(model, args, kwargs)
        initial, positions = self._initial(sites, args, kwargs)
        log_density_fn = None
        if getattr(self, "compile", False) and self.global_guide is None:  # (a guide pickled before the flag: none)
            log_density_fn = self._compiled_log_density(sites, args, kwargs, model, initial)
        if log_density_fn is None:
            log_density_fn = validate_first_call_only(self._packed_log_density(sites, args, kwargs, model))
        with posterior_inference(), frozen_parameters(self.model, sites.params):
            restrict = None
            if self.tolerance is not None and self.uses_fast_path and not _couples_rows(self.model) and not sites.batch_plates:
                restrict = self._restricted_log_density(initial, args, kwargs)
            adapting = self.adapting
            state, info = run_chain(
                log_density_fn,
                initial,
                self.num_steps,
                self.step_size,
                sampler=self.sampler,
                noise=self.noise,
                # while adapting, a diverged move counts as rejected (acceptance 0) and its row goes back
                on_divergence=dataclasses.replace(self.on_divergence, action="backoff") if adapting else self.on_divergence,
                track_acceptance=adapting,
                where=f"LangevinGuide chain over site(s) {list(sites.sites)}",
                tolerance=self.tolerance,
                restrict=restrict,
            )
            self.divergences += int(info.divergences.sum())
            if adapting and info.acceptance_prob is not None:
                self.last_acceptance_prob = float(info.acceptance_prob.mean())
                self.step_size = self.adaptation.update(self.last_acceptance_prob)
        if self.chains is not None:
            self.chains.store(positions, state.position)
        self.last_state, self.last_info, self._sites = state, info, sites
        unconstrained = {name: sites.unpack(name, u) for name, u in state.position.items()}
        self.latents = {name: value.detach() for name, value in sites.constrain(unconstrained).items()}
        return self.latents

    def _packed_log_density(self, sites: LatentSites, args, kwargs, model) -> Callable[[Latents], torch.Tensor]:
        """The chain's target on packed latents {site: (R, ...)} -> (R,)."""
        model_layout = self.log_density_fn(sites, args, kwargs, model)

        def packed(latents: Latents) -> torch.Tensor:
            unpacked = {name: sites.unpack(name, u) for name, u in latents.items()}
            return model_layout(unpacked).reshape(-1)

        return packed

    def _compiled_log_density(self, sites: LatentSites, args, kwargs, model, initial: Latents):
        """The packed target with a compiled ``value_and_grad`` (``compile=True``), the call's tensors
        and subsample indices as graph inputs; None when the call's other arguments are not hashable."""
        try:
            tensors, rebuild, call_key = flatten_call(args, kwargs)
        except TypeError:
            return None
        subsample_names = tuple(sites.subsamples)
        inputs = list(tensors) + [sites.subsamples[name] for name in subsample_names]

        def build(values):
            call_args, call_kwargs = rebuild(values[: len(tensors)])
            replayed = dataclasses.replace(sites, subsamples=dict(zip(subsample_names, values[len(tensors):])))
            return self._packed_log_density(replayed, call_args, call_kwargs, model)

        modules = model.modules() if isinstance(model, torch.nn.Module) else ()
        key = (call_key, subsample_names, _sites_key(sites), tuple(id(p) for p in sites.params),
               tuple(m.training for m in modules), id(model), self.uses_fast_path)
        if getattr(self, "_compiled", None) is None:
            self._compiled = CompiledLogDensity("LangevinGuide")
        return self._compiled.target(build, inputs, initial, key)

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
        """Run the chain without emitting Pyro sites; returns {site: final constrained value} (detached).

        With a ``global_guide``, the globals are drawn from it (hidden from outer handlers) first.
        Under ``torch.inference_mode()`` the chain runs as under ``torch.no_grad()``
        (:func:`~pyro_lfbm.infer.modes.outside_inference_mode`). ``torch.jit.trace`` (``JitTrace_ELBO``)
        is refused with ``RuntimeError`` (:func:`~pyro_lfbm.infer.modes.refuse_jit_tracing`)."""
        refuse_jit_tracing(type(self).__name__)
        with outside_inference_mode(args, kwargs) as (args, kwargs):
            model, _, _ = self._globals(args, kwargs, emit=False)
            return self._run(model, args, kwargs)

    def forward(self, *args, **kwargs) -> Latents:
        refuse_jit_tracing(type(self).__name__)
        with outside_inference_mode(args, kwargs) as (args, kwargs):
            model, global_values, entered = self._globals(args, kwargs, emit=True)
            latents = self._run(model, args, kwargs)
            sites = self._sites
            plate = sites.plate
            if plate is None:
                emitted = self._emit(latents, sites)
            else:
                # a plate the global guide entered already has its index site in this trace (a second
                # one would be "Multiple sample sites named ..."): enter it without recording another
                with poutine.block(hide_fn=lambda msg: msg["name"] in entered):
                    data_plate = pyro.plate(plate.name, plate.size, subsample=plate.subsample, dim=plate.dim)
                with data_plate:
                    emitted = self._emit(latents, sites)
            return {**global_values, **emitted}

    @staticmethod
    def _emit(latents: Latents, sites: LatentSites) -> Latents:
        return {
            name: pyro.sample(name, dist.Delta(value, event_dim=sites.event_dims[name]))
            for name, value in latents.items()
        }

    # -- checkpointing -------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """Pickling (``pickle``, ``torch.save(guide)``, ``copy.deepcopy``) leaves out the last call's
        site description, which holds the model's parameter tensors (Pyro's param-store tensors
        carry weak references, which cannot be pickled); the next call finds the sites again."""
        state = dict(super().__getstate__())
        state["_sites"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("on_divergence"), str):  # pickled before DivergencePolicy held the three settings
            state["on_divergence"] = DivergencePolicy(state["on_divergence"], state.pop("max_backoffs", 10),
                                                      state.pop("max_log_density_drop", None))
        super().__setstate__(state)

    def get_extra_state(self) -> dict:
        return {
            "step_size": self.step_size,
            "adaptation": self.adaptation.state_dict() if self.adaptation is not None else None,
            "divergences": self.divergences,
            "chains": self.chains.state() if self.chains is not None else None,
        }

    def set_extra_state(self, state: dict) -> None:
        self.step_size = float(state["step_size"])
        self.divergences = int(state["divergences"])
        saved = state.get("adaptation")
        if saved is None and state.get("adapter") is not None:  # the layout before StepSizeAdaptation
            saved = {**state["adapter"], "step_size": state["step_size"], "updates": state["adapted_calls"]}
        if saved is not None and self.adaptation is not None:
            self.adaptation.load_state_dict(saved)
        if (state.get("chains") is None) != (self.chains is None):
            raise ValueError("the saved guide and this one differ in persistent chains (persistent=N on one only)")
        if self.chains is not None:
            self.chains.load(state["chains"])

    def extra_repr(self) -> str:
        step = f"'auto' (now {self.step_size:.4g})" if self.auto else f"{self.step_size:.4g}"
        return f"num_steps={self.num_steps}, step_size={step}, noise={self.noise}" + (", compile=True" if self.compile else "")
