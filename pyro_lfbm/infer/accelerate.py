"""Fused and compiled Langevin chains for the fast path (a :class:`~pyro_lfbm.models.LatentModel`).

The library's reference chain (:class:`~pyro_lfbm.infer.LangevinGuide` on ``model.log_joint``)
builds Pyro distribution objects at every step and lets autograd record every small operation.
This module computes the same numbers with fewer, larger kernels:

- :func:`fused_log_joint` is ``model.log_joint`` as plain tensor code: the prior's log density
  without transform or distribution objects (each prior's own
  :meth:`~pyro_lfbm.priors.base.LatentPrior.tensor_log_prob_fn`), the generator, and the Gaussian
  pixel likelihood written out with the same element-wise expression as
  ``Normal(g(z), σ).mask(m).to_event(3).log_prob(x)``;
- :class:`CompiledLangevin` compiles the value *and* gradient of that function in one graph
  (``torch.compile`` of ``torch.func.grad``; inductor on the CPU, ``mode="reduce-overhead"``, i.e.
  CUDA graphs, on a GPU); the chain around it is the library's one driver
  (:func:`~pyro_lfbm.infer.chain.run_chain`), run eagerly, so that a fixed noise stream gives the
  eager trajectory. BatchNorm layers of the generator in training mode update their running
  statistics exactly as the eager model does (the buffers are passed to the compiled function);
- :class:`FusedLangevinGuide` is a :class:`~pyro_lfbm.infer.LangevinGuide` whose chain evaluates
  the fused (optionally compiled) log joint: ``SVI(model, FusedLangevinGuide(model), ...)`` is
  LFBM's Algorithm 1 with the faster chain;
- any Pyro model's chain runs from one compiled graph of its log density and gradient with
  ``LangevinGuide(model, compile=True)`` (:class:`~pyro_lfbm.infer.traced.CompiledLogDensity`,
  recorded once per input signature);
- :class:`CUDAGraphLangevin` replays one captured CUDA graph per gradient evaluation, in the same
  driver (CUDA only; written without a GPU at hand and never run: the project's CI is CPU only).

The eager reference stays the default everywhere; these are opt-in and fall back to eager code
(``compile=False``). Compilation is paid once per process and per shape (and train/eval mode):
:func:`compile_times` lists what was compiled and how long the first call took.

Tensor shapes: images ``x`` (B, C, H, W), masks (B or 1, C, H, W), latents ``z`` (B, D), log
joints (B,).
"""

from __future__ import annotations

import itertools
import time
import types
import warnings
from functools import partial
from typing import Callable, Dict, Optional, Tuple, Union

import pyro
import torch

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.guide import LangevinGuide
from pyro_lfbm.infer.modes import frozen_parameters
from pyro_lfbm.infer.chain import run_chain
from pyro_lfbm.infer.divergence import DivergencePolicy
from pyro_lfbm.infer.traced import compile_times, record_compile_time, traced_log_density
from pyro_lfbm.ops.gaussian import gaussian_log_likelihood

__all__ = [
    "CompiledLangevin",
    "CUDAGraphLangevin",
    "FusedLangevinGuide",
    "compile_times",
    "frozen_parameters",
    "fused_log_joint",
    "has_fused_chain",
    "traced_log_density",
    "gaussian_log_likelihood",
]

def _prior_log_prob_fn(prior) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (B, D) -> log p(z) (B,): the prior's own plain tensor code
    (:meth:`~pyro_lfbm.priors.base.LatentPrior.tensor_log_prob_fn`, with its modules captured here,
    outside any compiled region), or its ``log_prob`` when it has none (the same numbers; it may
    not compile into one graph)."""
    method = getattr(prior, "tensor_log_prob_fn", None)
    fn = method() if callable(method) else None
    return prior.log_prob if fn is None else fn


_CODE_COUNTER = itertools.count()


def _own_code(fn):
    """``fn`` with a code object of its own (same body, closure and globals)."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_CODE_COUNTER)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_LATENT_MODEL_PARTS = ("prior", "generator", "sigma", "log_joint")


def has_fused_chain(model) -> bool:
    """Whether ``model`` is LatentModel-like (prior, generator, sigma, log_joint): what the fused chain runs on."""
    return all(hasattr(model, name) for name in _LATENT_MODEL_PARTS)


def _check_latent_model(model) -> None:
    missing = [name for name in _LATENT_MODEL_PARTS if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"the fused chain needs a LatentModel (prior, generator, sigma, log_joint); "
            f"{type(model).__name__} has no {', '.join(missing)}. Use LangevinGuide for other models"
        )


def _gaussian(x, mean, mask, event_dim, *, sigma):
    return gaussian_log_likelihood(x, mean, sigma, mask, event_dim)


def fused_log_joint(model, native_order: bool = False) -> Callable[..., torch.Tensor]:
    """``model.log_joint`` of a :class:`~pyro_lfbm.models.LatentModel` as one plain function,

        ``f(x, z, mask=None, buffers=None) -> (B,)`` = log p_α(z) + log p_β(x | z),

    with the prior's density as inside posterior inference (no contrastive term of the energy
    prior). ``buffers`` (optional): ``{name: tensor}`` of the generator's buffers, passed to the
    generator with :func:`torch.func.functional_call` (so that a compiled ``torch.func`` transform
    may update BatchNorm running statistics, which it then writes into those tensors); ``None``
    calls the generator as is.

    With ``native_order=True`` the likelihood compares ``generator(z, native_order=True)`` with
    images and masks already in the generator's native pixel order
    (``generator.to_native_order(x)``, e.g. (B, 16, 49) for
    :class:`~pyro_lfbm.nets.MNISTGenerator`): the same sum over pixels, in another order, without
    the generator's pixel shuffles.

    :raises TypeError: if ``model`` is not a LatentModel-like object.
    """
    _check_latent_model(model)
    prior_log_prob = _prior_log_prob_fn(model.prior)
    generator = model.generator
    # a LatentModel picks its pixel likelihood itself; a LatentModel-like object without the method is Gaussian
    pixel_log_likelihood = getattr(model, "pixel_log_likelihood", None) or partial(_gaussian, sigma=float(model.sigma))

    kwargs = {"native_order": True} if native_order else {}

    def log_joint(x: torch.Tensor, z: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  buffers: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        if buffers is None:
            mean = generator(z, **kwargs)
        else:
            mean = torch.func.functional_call(generator, buffers, (z,), kwargs)
        event_dim = mean.dim() - (z.dim() - 1)
        return prior_log_prob(z) + pixel_log_likelihood(x, mean, mask, event_dim)

    return log_joint


class CompiledLangevin:
    """Langevin chains of a LatentModel whose gradient evaluations are fused (and compiled).

    One step is ``z ← langevin_move(z, ∇_z log p(x, z), s, noise, generator)``; the gradient and
    the log joint come from one call of ``torch.func.grad`` of :func:`fused_log_joint`, compiled
    by ``torch.compile`` (``compile=True``) or run eagerly with autograd (``compile=False``, the
    reference). The noise is drawn eagerly by :func:`~pyro_lfbm.infer.langevin.langevin_move`, so
    the same ``generator`` gives the eager chain's noise. While a chain runs the model's
    parameters are frozen and Pyro's validation is off.

    :param model: a :class:`~pyro_lfbm.models.LatentModel` (prior, generator, sigma).
    :param float step_size: s.
    :param bool noise: False gives gradient ascent (test-time inference).
    :param bool compile: compile the gradient evaluation with ``torch.compile``.
    :param str backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without
        generating code, for debugging).
    :param str mode: ``torch.compile`` mode; ``None`` picks ``"reduce-overhead"`` (CUDA graphs) on a
        CUDA model and the default mode on the CPU.
    :param str label: a name for :func:`compile_times`.

    If compiling fails (no C++ compiler for inductor, an operation it cannot trace), the chain
    warns once (``RuntimeWarning``), keeps the reason in ``compile_error`` and runs eagerly.

    :param bool native_order: evaluate the likelihood in the generator's native pixel order
        (:meth:`~pyro_lfbm.nets.ImageGenerator.to_native_order`; images and masks are reordered
        once per chain): the same numbers up to float rounding, fewer memory copies per step.
    """

    def __init__(self, model, step_size: float = 0.1, noise: bool = True, compile: bool = True,
                 backend: str = "inductor", mode: Optional[str] = None, label: str = "CompiledLangevin",
                 native_order: bool = True):
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        _check_latent_model(model)
        self.model, self.step_size, self.noise = model, float(step_size), bool(noise)
        self.compiled, self.label = bool(compile), label
        self.native_order = bool(native_order) and hasattr(model.generator, "to_native_order")
        self.compile_error: Optional[str] = None
        self._log_joint = fused_log_joint(model, native_order=self.native_order)
        self._seen: set = set()
        if compile:
            device = next(iter(model.parameters()), torch.empty(0)).device
            if mode is None and device.type == "cuda":
                mode = "reduce-overhead"
            log_joint = self._log_joint

            def objective(z, x, mask, buffers):
                value = log_joint(x, z, mask, buffers)
                return value.sum(), value

            def grad_and_value(z, x, mask, buffers):
                return torch.func.grad(objective, has_aux=True)(z, x, mask, buffers)

            # torch.compile keeps its compiled code (and its recompile budget) per code object: one
            # of our own per chain, so that chains of different models never share or exhaust it
            self._grad_and_value = torch.compile(_own_code(grad_and_value), backend=backend, mode=mode)
            self.backend, self.mode = backend, mode
        else:
            self.backend, self.mode = None, None

    def _buffers(self) -> Dict[str, torch.Tensor]:
        return dict(self.model.generator.named_buffers())

    def _prepare(self, x: torch.Tensor, mask: Optional[torch.Tensor]):
        """Images (B, C, H, W) and mask as the chain's log joint takes them (once per chain)."""
        if not self.native_order:
            return x, mask
        generator = self.model.generator
        if mask is not None:
            image_shape = tuple(generator.image_shape)
            mask = mask.reshape((1,) * max(0, len(image_shape) - mask.dim()) + tuple(mask.shape))
            mask = generator.to_native_order(torch.broadcast_to(mask, torch.broadcast_shapes(mask.shape, image_shape)))
        return generator.to_native_order(x), mask

    def _eager(self, x, z, mask) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            value = self._log_joint(x, leaf, mask)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), grad

    def _eval(self, x, z, mask) -> Tuple[torch.Tensor, torch.Tensor]:
        """Value and gradient at ``z`` for images and mask prepared by :meth:`_prepare`."""
        if not self.compiled:
            return self._eager(x, z, mask)
        key = (tuple(x.shape), tuple(z.shape), mask is not None, self.model.training, x.device.type)
        first = key not in self._seen
        started = time.perf_counter()
        if not first:
            grad, value = self._grad_and_value(z.detach(), x, mask, self._buffers())
        else:
            buffers = {name: b.clone() for name, b in self._buffers().items()}  # as they were, if compiling fails
            try:
                grad, value = self._grad_and_value(z.detach(), x, mask, self._buffers())
            except Exception as err:  # noqa: BLE001 - any failure to compile; the eager chain is the reference
                for name, b in self._buffers().items():
                    b.copy_(buffers[name])
                value, grad = self._eager(x, z, mask)  # a genuine error in the inputs is raised here
                reason = (str(err).strip().splitlines() or [""])[0][:200]
                self.compiled, self.compile_error = False, f"{type(err).__name__}: {reason}"
                warnings.warn(f"torch.compile failed ({self.compile_error}); this chain runs eagerly (same numbers, "
                              "slower)", RuntimeWarning, stacklevel=4)
                return value, grad
        if first:
            self._seen.add(key)
            record_compile_time(label=self.label, shape=tuple(z.shape), training=self.model.training,
                                backend=self.backend, seconds=time.perf_counter() - started)
        if self.mode == "reduce-overhead":  # CUDA graphs overwrite their outputs at the next replay
            return value.detach().clone(), grad.detach().clone()
        return value.detach(), grad.detach()

    def value_and_grad(self, x: torch.Tensor, z: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """(log p(x, z) (B,), ∇_z Σ_b log p(x_b, z_b) (B, D)) at ``z`` (B, D) for images ``x``.

        With BatchNorm in training mode the rows interact (batch statistics), and the gradient is
        that of the batch sum, as in the eager chain."""
        with frozen_parameters(self.model), pyro.validation_enabled(False), posterior_inference():
            x, mask = self._prepare(x, mask)
            return self._eval(x, z, mask)

    def grad(self, x: torch.Tensor, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """∇_z log p(x, z), shape of ``z`` (B, D)."""
        return self.value_and_grad(x, z, mask)[1]

    def target(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> "_Target":
        """The chain's log density {"z": z (B, D)} -> (B,) for images ``x`` (prepared once), carrying
        its fused (compiled) ``value_and_grad`` for :func:`~pyro_lfbm.infer.chain.run_chain`."""
        x, mask = self._prepare(x, mask)
        return _Target(lambda z: self._eval(x, z, mask))

    def run(self, x: torch.Tensor, z0: torch.Tensor, num_steps: int, mask: Optional[torch.Tensor] = None,
            generator: Optional[torch.Generator] = None, on_divergence: Union[str, DivergencePolicy] = "raise") -> torch.Tensor:
        """``num_steps`` steps from ``z0`` (B, D) for images ``x`` (B, C, H, W); returns z_K (B, D).

        The loop is the library's one driver (:func:`~pyro_lfbm.infer.chain.run_chain`, ULA): its
        divergence check (``on_divergence``: ``"raise"``, ``"backoff"`` or a
        :class:`~pyro_lfbm.infer.divergence.DivergencePolicy`) included."""
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        with frozen_parameters(self.model), pyro.validation_enabled(False), posterior_inference(), torch.no_grad():
            state, _ = run_chain(self.target(x, mask), {"z": z0.detach()}, num_steps, self.step_size, noise=self.noise,
                                 generator=generator, on_divergence=on_divergence, where=self.label)
        return state.position["z"]


class _Target:
    """A log density {"z": z} -> (B,) whose value and gradient come from one call of ``evaluate(z)``
    -> (value (B,), grad (B, D)) (fused, compiled or replayed from a CUDA graph)."""

    def __init__(self, evaluate: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]):
        self._evaluate = evaluate

    def value_and_grad(self, latents: Dict[str, torch.Tensor]):
        value, grad = self._evaluate(latents["z"].detach())
        return value, {"z": grad}

    def __call__(self, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value_and_grad(latents)[0]


class _WithGradient(torch.autograd.Function):
    """``value`` (B,) as a function of ``z`` (B, D) whose gradient was computed with it: the
    backward pass returns ``grad_out[b] * grad[b]`` (rows independent) or, when the rows are
    coupled (BatchNorm on batch statistics), the precomputed gradient of the batch sum, which
    is only defined for a uniform ``grad_out``."""

    @staticmethod
    def forward(ctx, z, value, grad, coupled):
        ctx.save_for_backward(grad)
        ctx.coupled = coupled
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if ctx.coupled:
            if not bool((grad_out == grad_out.reshape(-1)[0]).all()):
                raise RuntimeError(
                    "the fused chain's gradient is that of the batch sum (BatchNorm in training mode couples "
                    "the rows); only a uniform weighting of the rows is supported: call .sum() on the log density"
                )
            return grad_out.reshape(-1)[0] * grad, None, None, None
        return grad_out.reshape(grad_out.shape + (1,) * (grad.dim() - grad_out.dim())) * grad, None, None, None


def _couples_rows(module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())


class FusedLangevinGuide(LangevinGuide):
    """:class:`~pyro_lfbm.infer.LangevinGuide` whose chain evaluates the fused log joint of a
    :class:`~pyro_lfbm.models.LatentModel` (:func:`fused_log_joint`), compiled with
    ``torch.compile`` when ``compile=True``.

    A model with several latent sites (``model.latent_sites``, a
    :class:`~pyro_lfbm.models.HierarchicalLatentModel`) whose prior and generator take their
    concatenation runs the same compiled log joint on the concatenated z.

    Everything else is the guide's: site discovery, initialisation, the chain loop and its checks,
    the emitted ``Delta`` sites, so ``SVI(model, FusedLangevinGuide(model), Adam, Trace_ELBO())``
    is one step of Algorithm 1 with the same mathematics as with ``LangevinGuide``. Models or
    settings outside the fast path (a transformed latent, particle plates, a global guide) use
    the guide's own log density.

    :param model: a LatentModel.
    :param bool compile: compile the value-and-gradient evaluation (see :class:`CompiledLangevin`).
    :param str backend: ``torch.compile`` backend.
    :param str mode: ``torch.compile`` mode.
    :param bool native_order: see :class:`CompiledLangevin`.

    Other arguments: those of :class:`~pyro_lfbm.infer.LangevinGuide`.
    """

    def __init__(self, model, *args, compile: bool = True, backend: str = "inductor", mode: Optional[str] = None,
                 native_order: bool = True, **kwargs):
        _check_latent_model(model)
        super().__init__(model, *args, **kwargs)
        self._chain = CompiledLangevin(model, step_size=1.0, compile=compile, backend=backend, mode=mode,
                                       label="FusedLangevinGuide", native_order=native_order)

    def log_density_fn(self, sites, args, kwargs, model=None):
        default = super().log_density_fn(sites, args, kwargs, model)
        names = tuple(getattr(self.model, "latent_sites", ("z",)))  # several: the layers of a HierarchicalLatentModel
        simple = (
            (model is None or model is self.model)
            and self.uses_fast_path
            and not getattr(sites, "batch_plates", None)
            and set(sites.sites) == set(names)
            and all(getattr(s, "is_identity", True) for s in sites.sites.values())
        )
        if not simple:
            return default
        x = args[0] if args else kwargs["x"]
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        chain = self._chain
        coupled = _couples_rows(self.model)
        x, mask = chain._prepare(x, mask)  # once per chain

        def fused(latents):
            # the log joint of the concatenated z (prior and generator take it); its gradient flows back to each site
            z = latents[names[0]] if len(names) == 1 else torch.cat([latents[name] for name in names], dim=-1)
            value, grad = chain._eval(x, z.detach(), mask)
            if not (torch.is_grad_enabled() and z.requires_grad):
                return value
            return _WithGradient.apply(z, value, grad, coupled)

        return fused


class CUDAGraphLangevin:
    """Langevin chains whose value-and-gradient evaluations replay one captured CUDA graph
    (fixed batch shape, CUDA only).

    One replay is the fused log joint's forward and backward to z; the moves, the noise and the
    divergence check are the library's one driver (:func:`~pyro_lfbm.infer.chain.run_chain`, ULA),
    run eagerly, so a fixed noise stream gives the eager chain. Inputs are copied into static
    buffers; a new batch shape needs a new instance.

    .. warning:: Written without a GPU at hand and never run (this project's CI is CPU only).

    :param model: a LatentModel on a CUDA device.
    :param x_shape: (B, C, H, W) of the images it will serve.
    :param float step_size: s.
    :param bool noise: False gives gradient ascent.
    :param int warmup: eager warm-up evaluations on a side stream before capture.
    """

    def __init__(self, model, x_shape, step_size: float = 0.1, noise: bool = True, warmup: int = 3):
        _check_latent_model(model)
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise RuntimeError("CUDAGraphLangevin needs the model on a CUDA device (model.to('cuda'))")
        self.model, self.step_size, self.noise = model, float(step_size), noise
        log_joint = fused_log_joint(model)
        batch = x_shape[0]
        self.static_x = torch.zeros(tuple(x_shape), device=device)
        self.static_z = torch.zeros(batch, model.latent_dim, device=device)
        self.static_value = torch.zeros(batch, device=device)
        self.static_grad = torch.zeros(batch, model.latent_dim, device=device)

        def evaluate() -> None:
            with torch.enable_grad():
                z = self.static_z.detach().requires_grad_(True)
                value = log_joint(self.static_x, z)
                (grad,) = torch.autograd.grad(value.sum(), z)
            self.static_value.copy_(value.detach())
            self.static_grad.copy_(grad)

        with frozen_parameters(model), pyro.validation_enabled(False), posterior_inference():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    evaluate()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                evaluate()

    def _replay(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.static_z.copy_(z)
        self.graph.replay()
        return self.static_value.clone(), self.static_grad.clone()

    def run(self, x: torch.Tensor, z0: torch.Tensor, num_steps: int, generator: Optional[torch.Generator] = None,
            on_divergence: Union[str, DivergencePolicy] = "raise") -> torch.Tensor:
        """``num_steps`` steps from ``z0`` (B, D) for images ``x`` (B, C, H, W); returns z_K."""
        self.static_x.copy_(x)
        with torch.no_grad():
            state, _ = run_chain(_Target(self._replay), {"z": z0.detach()}, num_steps, self.step_size, noise=self.noise,
                                 generator=generator, on_divergence=on_divergence, where="CUDAGraphLangevin")
        return state.position["z"]
