"""Langevin (ULA) and Metropolis-adjusted Langevin (MALA) as a ``pyro.infer.mcmc`` kernel."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import pyro
import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.divergence import divergence_error
from pyro_lfbm.infer.langevin import LangevinState
from pyro_lfbm.infer.modes import outside_inference_mode
from pyro_lfbm.infer.samplers import MALA, MALA_OPTIMAL_ACCEPT_PROB, ULA, Sampler, StepInfo
from pyro_lfbm.infer.trace_log_joint import LatentSites, find_latent_sites, log_joint_terms
from pyro_lfbm.infer.traced import traced_log_density

Latents = Dict[str, torch.Tensor]

_BLOCKS = ("local", "global")

#: The default ``target_accept_prob`` of ULA (``adjust=False``): the mean acceptance probability a
#: MALA test would give its moves. Nothing is rejected, so the step sets the bias: on a Gaussian
#: target N(m, v) the move u + (s²/2)∇log p + s ξ has stationary variance v / (1 - s²/(4v))
#: (the AR(1) map u ↦ (1 - s²/(2v)) u + s ξ). MALA's 0.574 gives s² ≈ 3.5 v there, a variance 20x
#: too large (measured: 20.3x, formula 20.6x). In one dimension, the worst case (at a given
#: acceptance more dimensions force a smaller step), the adapted step gave s² ≈ 0.2 v at 0.995, a
#: variance 5 % too large (measured 5.0 %, formula 5.4 %), s² ≈ 0.3 v at 0.99 (7.5-8 %), and 0.9
#: allows s² ≈ 1.2 v (43 %).
ULA_TARGET_ACCEPT_PROB = 0.995


class LangevinKernel(MCMCKernel):
    r"""Langevin kernel for :class:`pyro.infer.MCMC`: unadjusted Langevin (ULA) or MALA, for long-run
    reference posteriors of any Pyro model with continuous latents.

    **Sites.** Every unobserved sample site is moved, as NUTS would, in *unconstrained* space: a
    site with a constrained support (``HalfNormal``, ``Gamma``, ``Beta``, ``LogNormal``, ``Dirichlet``,
    ...) is moved as u with z = T(u), ``T = biject_to(support)``, at the log density
    log p(x, T(u)) + log|det ∂T/∂u|. As for Pyro's HMC, :attr:`transforms` maps each site to
    unconstrained space, the kernel's ``params`` (and ``initial_params``) are unconstrained, and
    ``MCMC.get_samples()`` returns constrained values.

    **Two blocks per iteration** (Metropolis-within-Gibbs). *Local* sites (inside the data plate,
    one value per example b) move first, given the global sites: for every b,
    u'_b = u_b + (s²/2) ∇ log p(x_b, u_b | globals) + s ξ_b, accepted (MALA) or rejected *on its own*
    with the Metropolis-Hastings ratio of its own log joint, so the acceptance rate does not
    collapse as the batch grows (one test for all rows would couple them). *Global* sites (outside
    the data plate) then move together with their own step size s_g at the full-data log joint
    given the new local values, with one test. A model without a data plate has only global sites.

    **Step-size adaptation** (``adapt_step_size=True``, as Pyro's HMC): during warmup each block's
    step size follows Nesterov dual averaging (``pyro.infer.mcmc.adaptation.WarmupAdapter``, the
    scheme of Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithm 5) toward
    ``target_accept_prob`` of the mean MALA acceptance probability (mean over rows for the local
    block), after a doubling/halving search for a reasonable start. The step size is frozen at its
    averaged value at the end of warmup. The default target, 0.574, is MALA's optimal acceptance
    rate (Roberts & Rosenthal (1998), "Optimal scaling of discrete approximations to Langevin
    diffusions", J. R. Stat. Soc. B 60(1)); HMC's 0.8 would give needlessly small steps. For ULA
    (``adjust=False``) the same statistic (the acceptance MALA would have had) is followed, with a
    default target of 0.995 (:data:`ULA_TARGET_ACCEPT_PROB`): ULA rejects nothing, and at 0.574 its
    stationary variance on a Gaussian is 20x the exact one, at 0.995 about 5 % above it (one
    dimension, the worst case: the mean acceptance over more dimensions forces a smaller step).
    Without warmup steps the given step sizes are used as they are.

    **Divergences.** A proposal whose log density or gradient is not finite (in a row, or for the
    global block) is rejected (the row stays at its last finite position) and counted:
    ``MCMC.diagnostics()["divergences"]`` lists, per chain, the post-warmup iteration of every
    divergent transition (one entry per diverged row), as NUTS does; ``"warmup divergences"``
    counts those of warmup. A non-finite log density at the initial position raises
    :class:`~pyro_lfbm.infer.divergence.LangevinDivergenceError`.

    **Data.** The data are bound at setup (``MCMC.run(*args)``), as for NUTS. A plate with
    ``subsample_size`` draws its minibatch once at setup and the chain targets the posterior of
    that minibatch's local latents (``kernel.sites.plate.subsample`` holds its indices); with
    global sites a subsampled data plate is refused (their update needs the full-data log joint).
    The log joint is unscaled by subsampling.

    dtype and device follow the model (its parameters, else its data): a float64 model runs in
    float64 end to end.

    :param model: a Pyro model whose unobserved sample sites are continuous.
    :param float step_size: the local block's step size s (its initial value when adapting).
    :param bool adjust: apply the Metropolis-Hastings test (MALA); with False every finite proposal
        is taken (ULA: on a Gaussian N(m, v) its stationary variance is v / (1 - s²/(4v))).
    :param bool adapt_step_size: adapt the step sizes during warmup (dual averaging).
    :param float target_accept_prob: the target mean acceptance probability of the adaptation;
        default 0.574 for MALA, 0.995 for ULA (see above).
    :param float global_step_size: the global block's (initial) step size; default ``step_size``.
    :param str data_plate: the name of the data plate, when the model's plates are ambiguous.
    :param bool use_fast_path: use ``model.log_joint(*args, **kwargs, **latents) -> (B,)`` when the
        model has one and every latent site is local and real-valued.
    :param float min_stepsize: lower bound of the adapted step sizes.
    :param float max_stepsize: upper bound of the adapted step sizes.
    :param sampler: the sampler of both blocks (:mod:`pyro_lfbm.infer.samplers`); default
        ``MALA()`` (``ULA()`` with ``adjust=False``). Its state (a momentum, ...) is kept between
        iterations and started afresh when MCMC passes other values.
    :param bool compile: evaluate each block's log density from a graph traced at its first
        evaluation after setup (:func:`~pyro_lfbm.infer.traced.traced_log_density`, as Pyro's HMC
        with ``jit_compile=True``): a pure tensor function of every latent site (the other block's
        values are inputs, not constants), traced once per ``MCMC.run``; the same numbers as
        ``compile=False``. For models whose control flow does not depend on latent values.

    Example::

        >>> mcmc = pyro.infer.MCMC(LangevinKernel(model), num_samples=500, warmup_steps=200)
        >>> mcmc.run(x)
        >>> mcmc.get_samples()["z"].shape      # (500, B, D), constrained values
        >>> mcmc.diagnostics()["divergences"]  # {"chain 0": [...]}
    """

    def __init__(
        self,
        model: Callable,
        step_size: float = 0.1,
        adjust: bool = True,
        adapt_step_size: bool = True,
        target_accept_prob: Optional[float] = None,
        global_step_size: Optional[float] = None,
        data_plate: Optional[str] = None,
        use_fast_path: bool = True,
        *,
        min_stepsize: float = 1e-10,
        max_stepsize: float = 1e10,
        sampler: Optional[Sampler] = None,
        compile: bool = False,
    ):
        for label, value in (("step_size", step_size), ("global_step_size", global_step_size)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive finite number, got {value!r}")
        if not 0 < min_stepsize < max_stepsize:
            raise ValueError(f"need 0 < min_stepsize < max_stepsize, got {min_stepsize!r} and {max_stepsize!r}")
        if sampler is not None and not adjust:
            raise ValueError("adjust=False chooses the default sampler (ULA); pass sampler=ULA() instead of both")
        self.model = model
        #: the sampler of both blocks (:mod:`pyro_lfbm.infer.samplers`)
        self.sampler = sampler if sampler is not None else (MALA() if adjust else ULA())
        self.adjust = self.sampler.adjusted
        if target_accept_prob is None:  # an unadjusted sampler rejects nothing: adapt toward a tiny bias
            target_accept_prob = MALA_OPTIMAL_ACCEPT_PROB if self.adjust else ULA_TARGET_ACCEPT_PROB
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
        self.data_plate = data_plate
        self.use_fast_path = use_fast_path
        self.compile = bool(compile)
        self._traced: Dict[str, Callable] = {}
        self.target_accept_prob = float(target_accept_prob)
        self._min_stepsize, self._max_stepsize = min_stepsize, max_stepsize
        initial = {"local": float(step_size), "global": float(global_step_size or step_size)}
        self._adapters = {
            block: WarmupAdapter(
                initial[block], adapt_step_size=adapt_step_size, target_accept_prob=target_accept_prob,
                adapt_mass_matrix=False,
            )
            for block in _BLOCKS
        }
        self.transforms: Optional[Dict] = None
        self.sites: Optional[LatentSites] = None
        self._initial_params: Optional[Latents] = None
        self._reset()

    # -- state --------------------------------------------------------------------------------
    def _reset(self):
        self._t = 0
        self._warmup_steps = 0
        self._states: Dict[str, Optional[LangevinState]] = {block: None for block in _BLOCKS}
        self._position: Optional[Latents] = None
        self._accept_sum = {block: 0.0 for block in _BLOCKS}  # post-warmup, fraction of rows accepted
        self._mean_accept_prob = {block: 0.0 for block in _BLOCKS}  # of the current phase
        self._divergences: List[int] = []
        self._warmup_divergences = 0
        self._last_info: Dict[str, Optional[StepInfo]] = {block: None for block in _BLOCKS}
        #: evaluations of a log density and its gradient since setup (each covers every row),
        #: the initial checks and the step-size search included
        self.num_evaluations = 0

    @property
    def step_size(self) -> float:
        """The local block's step size (the global block's when the model has no local site)."""
        block = "local" if self.sites is None or self._names("local") else "global"
        return self._adapters[block].step_size

    @property
    def global_step_size(self) -> float:
        """The global block's step size."""
        return self._adapters["global"].step_size

    @property
    def initial_params(self) -> Optional[Latents]:
        """Initial values in unconstrained space (``{site: u}``); default u ~ N(0, I)."""
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Latents):
        self._initial_params = params

    # -- MCMCKernel interface -----------------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        # under torch.inference_mode() the kernel runs as under torch.no_grad() (the moves need gradients)
        with outside_inference_mode(args, kwargs, self._initial_params) as (args, kwargs, self._initial_params):
            self._setup(warmup_steps, args, kwargs)

    def _setup(self, warmup_steps, args, kwargs):
        self._args, self._kwargs = args, kwargs
        self._traced = {}  # traced log densities belong to one setup's data
        self._reset()
        self._warmup_steps = warmup_steps
        sites = find_latent_sites(self.model, args, kwargs, data_plate=self.data_plate, batch_plates=())
        self.sites = sites
        plate = sites.plate
        if plate is not None and plate.subsample_size < plate.size and sites.global_names:
            raise ValueError(
                f"LangevinKernel: the data plate '{plate.name}' is subsampled ({plate.subsample_size} of {plate.size}) "
                f"and the model has global latent sites {sites.global_names}, whose update needs the full-data log "
                "joint; run MCMC on the full data (no subsample_size / subsample), as for NUTS"
            )
        # constrained -> unconstrained, as initialize_model returns them; MCMC maps samples back with .inv
        self.transforms = {name: site.transform.inv for name, site in sites.sites.items()}
        self._fast = (
            self.use_fast_path
            and callable(getattr(self.model, "log_joint", None))
            and not sites.global_names
            and all(site.is_identity for site in sites.sites.values())
        )
        self._row_dims = {
            name: len(site.unconstrained_shape) - site.unconstrained_event_dim + plate.dim
            for name, site in sites.sites.items()
            if site.local
        }
        initial = self._initial_params
        if initial is None:
            initial = dict(sites.initial)
        else:
            missing = sorted(set(sites.sites) - set(initial))
            if missing:
                raise ValueError(f"initial_params lacks the latent sites {missing} (give every site, unconstrained)")
            initial = {
                name: torch.as_tensor(initial[name]).to(dtype=sites.initial[name].dtype, device=sites.initial[name].device)
                for name in sites.sites
            }
            for name, value in initial.items():
                if value.shape != sites.sites[name].unconstrained_shape:
                    raise ValueError(
                        f"initial_params['{name}'] has shape {tuple(value.shape)}; the site's unconstrained value has "
                        f"shape {tuple(sites.sites[name].unconstrained_shape)}"
                    )
        self._initial_params = initial
        self._check_initial(initial)
        for block in _BLOCKS:
            if not self._names(block):
                continue
            adapter = self._adapters[block]
            adapter.configure(
                warmup_steps,
                mass_matrix_shape={},
                find_reasonable_step_size_fn=lambda z, block=block: self._find_reasonable_step_size(block, z),
                options={"dtype": next(iter(initial.values())).dtype},
            )
            if adapter.adapt_step_size and warmup_steps > 0:
                with posterior_inference():
                    adapter.reset_step_size_adaptation(initial)

    def __getstate__(self) -> dict:
        """Pickling (MCMC's parallel chains) leaves out the traced graphs; the next setup traces afresh."""
        state = dict(self.__dict__)
        state["_traced"] = {}
        return state

    def sample(self, params: Latents) -> Latents:
        with outside_inference_mode(params) as (params,):
            return self._sample(params)

    def _sample(self, params: Latents) -> Latents:
        if self._position is None or any(self._position[k] is not params[k] for k in params):
            self._states = {block: None for block in _BLOCKS}  # params not from the last call
        position = dict(params)
        warmup = self._t < self._warmup_steps
        with posterior_inference(), pyro.validation_enabled(False) if warmup else contextlib.nullcontext():
            for block in _BLOCKS:
                if self._names(block):
                    position = self._move(block, position, warmup)
        self._t += 1
        self._position = position
        return position.copy()

    def end_warmup(self):
        """Freeze the step sizes at their dual-averaging values (done by the schedule at the last warmup step)."""
        for adapter in self._adapters.values():
            if adapter.adapt_step_size and self._warmup_steps > 0 and self._t < self._warmup_steps:
                adapter._end_adaptation()

    def cleanup(self):
        self._states = {block: None for block in _BLOCKS}
        self._position = None

    def logging(self):
        items = [("step size", f"{self.step_size:.2e}")]
        if self.sites is not None and self._names("local") and self._names("global"):
            items.append(("global step", f"{self.global_step_size:.2e}"))
        block = "local" if self.sites is None or self._names("local") else "global"
        items.append(("acc. prob", f"{self._mean_accept_prob[block]:.3f}"))
        items.append(("divergences", str(self._warmup_divergences + len(self._divergences))))
        return OrderedDict(items)

    def diagnostics(self):
        out = {
            "divergences": list(self._divergences),
            "warmup divergences": self._warmup_divergences,
            "acceptance rate": self.acceptance_rate,
            "step size": self.step_size,
        }
        if self.sites is not None and self._names("local") and self._names("global"):
            out["global acceptance rate"] = self.acceptance_rate_of("global")
            out["global step size"] = self.global_step_size
        return out

    # -- results ------------------------------------------------------------------------------
    @property
    def acceptance_rate(self) -> float:
        """Post-warmup fraction of proposals accepted (mean over rows and iterations) of the local
        block, or of the global block when the model has no local site (over warmup too when
        there has been no post-warmup iteration)."""
        block = "local" if self.sites is None or self._names("local") else "global"
        return self.acceptance_rate_of(block)

    def acceptance_rate_of(self, block: str) -> float:
        """:attr:`acceptance_rate` of ``"local"`` or ``"global"``."""
        n = self._t - self._warmup_steps
        return self._accept_sum[block] / n if n > 0 else self._mean_accept_prob[block]

    @property
    def num_divergences(self) -> int:
        """Divergent transitions so far, warmup included."""
        return self._warmup_divergences + len(self._divergences)

    # -- the two blocks -----------------------------------------------------------------------
    def _names(self, block: str) -> List[str]:
        return self.sites.local_names if block == "local" else self.sites.global_names

    def _log_density_fn(self, block: str, position: Latents):
        """The block's log density as a function of its own sites, the other block held at ``position``."""
        fixed = {name: position[name] for name in self._names("global" if block == "local" else "local")}
        full = self._block_log_density(block)

        def log_density(latents: Latents) -> torch.Tensor:
            self.num_evaluations += 1
            return full({**fixed, **latents})

        return log_density

    def _block_log_density(self, block: str) -> Callable[[Latents], torch.Tensor]:
        """The block's log density as a function of every latent site ({site: unconstrained value});
        with ``compile=True`` traced once per setup (the other block's values are inputs)."""
        if block in self._traced:
            return self._traced[block]
        if block == "local" and self._fast:
            log_joint = self.model.log_joint

            def fn(latents: Latents) -> torch.Tensor:
                return log_joint(*self._args, **self._kwargs, **latents)

        else:

            def fn(latents: Latents) -> torch.Tensor:
                local, global_ = log_joint_terms(self.model, latents, self._args, self._kwargs, self.sites)
                if block == "local":
                    return local
                return global_ if local is None else global_ + local.sum()

        if self.compile:
            fn = traced_log_density(fn)
            self._traced[block] = fn
        return fn

    def _move(self, block: str, position: Latents, warmup: bool) -> Latents:
        names = self._names(block)
        fn = self._log_density_fn(block, position)
        row_dims = self._row_dims if block == "local" else 0
        state = self._states[block] or self.sampler.init({name: position[name] for name in names}, fn, row_dims=row_dims)
        adapter = self._adapters[block]
        state, info = self.sampler.step(state, fn, adapter.step_size, row_dims=row_dims)
        self._states[block] = state
        other = "global" if block == "local" else "local"
        if bool(info.is_accepted.any()) and self._states[other] is not None:
            # its cached log density was conditioned on this block's old values (a momentum is kept)
            self._states[other] = self._states[other]._replace(log_density=None, grad=None)
        self._record(block, info, warmup)
        return {**position, **state.position}

    def _record(self, block: str, info: StepInfo, warmup: bool):
        self._last_info[block] = info
        accept_prob = info.acceptance_prob.mean()
        divergent = int(info.is_divergent.sum())
        if warmup:
            n = self._t + 1
            self._warmup_divergences += divergent
            if self._adapters[block].adapt_step_size:
                # Pyro's HMC idiom: the adapter sees iterations t = 1..warmup_steps
                self._adapters[block].step(self._t + 1, {}, accept_prob)
        else:
            n = self._t + 1 - self._warmup_steps
            self._accept_sum[block] += info.is_accepted.to(accept_prob.dtype).mean().item()
            self._divergences.extend([self._t - self._warmup_steps] * divergent)
        if n == 1:
            self._mean_accept_prob[block] = 0.0
        self._mean_accept_prob[block] += (accept_prob.item() - self._mean_accept_prob[block]) / n

    def _find_reasonable_step_size(self, block: str, params: Latents) -> float:
        """Double (or halve) the step size until one MALA proposal's mean acceptance probability
        crosses ``target_accept_prob`` (as HMC's search crosses its energy threshold)."""
        names = self._names(block)
        fn = self._log_density_fn(block, params)
        row_dims = self._row_dims if block == "local" else 0
        state = self.sampler.init({name: params[name] for name in names}, fn, row_dims=row_dims)
        # ULA's proposals and acceptance probabilities are MALA's: search with MALA's test (as before)
        search = MALA() if isinstance(self.sampler, ULA) else self.sampler

        def direction(step: float) -> int:
            _, info = search.step(state, fn, step, row_dims=row_dims)
            return 1 if info.acceptance_prob.mean().item() > self.target_accept_prob else -1

        step = self._adapters[block].step_size
        first = direction(step)
        while self._min_stepsize < step < self._max_stepsize:
            step = step * 2.0**first
            if direction(step) != first:
                break
        return min(max(step, self._min_stepsize), self._max_stepsize)

    def _check_initial(self, initial: Latents):
        with posterior_inference():
            for block in _BLOCKS:
                names = self._names(block)
                if not names:
                    continue
                fn = self._log_density_fn(block, initial)
                state = self.sampler.init({name: initial[name] for name in names}, fn,
                                          row_dims=self._row_dims if block == "local" else 0)
                bad = ~torch.isfinite(state.log_density.reshape(-1))
                what = "the log density"
                for name, g in state.grad.items():
                    if block == "local":
                        g_bad = ~torch.isfinite(g.movedim(self._row_dims[name], 0).reshape(bad.shape[0], -1)).all(1)
                    else:
                        g_bad = ~torch.isfinite(g).all().reshape(1)
                    if bool(g_bad.any()) and not bool(bad.any()):
                        what = f"the gradient of site '{name}'"
                    bad = bad | g_bad
                if bool(bad.any()):
                    raise divergence_error(
                        what, 0, 0, self._adapters[block].step_size, int(bad.sum()), bad.numel(),
                        where=f"LangevinKernel ({block} sites {names})",
                    )
                self._states[block] = state if block == "local" else None
            if self._names("local"):
                self._check_rows_independent(initial)
        self._position = initial

    def _check_rows_independent(self, initial: Latents):
        """Per-row tests are valid only when row b's log density depends on row b's local latents
        alone and no out-of-plate site depends on local latents: check both at the initial point
        (one extra evaluation of row 0's gradient)."""
        names = self._names("local")
        with torch.enable_grad():
            leaves = {name: initial[name].detach().requires_grad_(True) for name in names}
            if self._fast:
                local, global_ = self.model.log_joint(*self._args, **self._kwargs, **leaves), None
            else:
                others = {name: initial[name] for name in self._names("global")}
                local, global_ = log_joint_terms(self.model, {**others, **leaves}, self._args, self._kwargs, self.sites)
            if global_ is not None and global_.requires_grad:
                grads = torch.autograd.grad(global_, list(leaves.values()), allow_unused=True, retain_graph=True)
                for name, g in zip(leaves, grads):
                    if g is not None and bool((g != 0).any()):
                        raise ValueError(
                            f"LangevinKernel: a sample site outside the data plate depends on the local site '{name}'; "
                            "local sites are moved row by row, so every site that depends on them must be inside the "
                            "data plate (or make the site global)"
                        )
            if local.shape[0] < 2:
                return
            grads = torch.autograd.grad(local[0], list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads):
            if g is None:
                continue
            others = g.movedim(self._row_dims[name], 0)[1:]
            if bool((others != 0).any()):
                raise ValueError(
                    f"LangevinKernel: the log density of row 0 depends on other rows' values of the local site '{name}', "
                    "so rows cannot be accepted one by one (a BatchNorm in train mode couples rows: call model.eval(); "
                    "otherwise make the coupling variable a global site)"
                )

