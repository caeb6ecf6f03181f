"""A model's log density as a graph, recorded once and replayed.

- :func:`traced_log_density` traces it with ``torch.jit.trace`` at its first call, as Pyro's HMC
  with ``jit_compile=True`` traces its potential function (``LangevinKernel(model, compile=True)``:
  one trace per ``MCMC.run``, whose data never change);
- :class:`CompiledLogDensity` records the value *and* gradient of a log density built from a
  call's tensors (data, plate subsample indices) as one graph of tensor operations
  (:func:`torch.fx.experimental.proxy_tensor.make_fx`, the tracer under ``torch.compile``'s
  AOTAutograd) and compiles it with inductor once per input signature
  (``LangevinGuide(model, compile=True)``: the data are graph inputs, so the next batch of the
  same shape reuses the compiled code).

Both record the Python control flow, and every tensor that is not an input, as at the recording
call: the model's parameters (updated in place by the optimiser, which the graph sees), its
buffers and constants. They are meant for models whose control flow does not depend on latent
values or on the data's values, as Pyro's ``jit_compile``.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree

from pyro_lfbm.infer.state import value_and_grad

Latents = Dict[str, torch.Tensor]

_COMPILE_TIMES: List[Dict[str, object]] = []


def compile_times() -> List[Dict[str, object]]:
    """What this process compiled: one dict per first call of a compiled chain on a new input
    signature (``label``, ``shape``, ``training``, ``seconds``: the wall time of that first
    call, compilation included). Later calls with the same signature reuse the compiled code."""
    return list(_COMPILE_TIMES)


def record_compile_time(**entry) -> None:
    _COMPILE_TIMES.append(entry)


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


def tensor_signature(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device, t.requires_grad)


class CompiledLogDensity:
    """Value and gradient of a log density, recorded once per input signature and compiled.

    ``target(build, inputs, latents, key)`` returns the log density ``build(inputs)`` (a function
    ``{site: (R, ...)} -> (R,)`` made from the call's tensors ``inputs``) with a
    ``value_and_grad`` method that runs one compiled graph: the forward pass and the backward
    pass to every latent, for the latents and ``inputs`` as graph inputs. The graph is recorded
    by running ``build`` on tracing tensors (:func:`~torch.fx.experimental.proxy_tensor.make_fx`)
    the first time a signature is seen (``key``: everything else the graph depends on, e.g. the
    non-tensor arguments, the ids of the parameters, train/eval mode), and compiled by inductor
    (:func:`_compile_graph`); later calls with the same signature reuse it.

    A graph that writes into a tensor (BatchNorm's running statistics in training mode) runs
    uncompiled (the recorded operations, without Pyro's handlers); a graph that cannot be recorded
    or compiled warns once (``RuntimeWarning``, the reason kept in :attr:`compile_error`) and that
    signature runs eagerly. The first evaluation of every target runs ``build(inputs)`` eagerly,
    under the caller's validation settings, so that Pyro's argument checks see each call's data.
    """

    def __init__(self, label: str = "CompiledLogDensity", backend: str = "inductor"):
        self.label, self.backend = label, backend
        self.compile_error: Optional[str] = None
        self._graphs: Dict[Hashable, Optional[Callable]] = {}

    def __getstate__(self):  # compiled code does not pickle: a copy compiles again
        state = dict(self.__dict__)
        state["_graphs"] = {}
        return state

    def clear(self) -> None:
        """Forget every compiled graph (e.g. after replacing the model's parameter tensors)."""
        self._graphs.clear()

    def target(self, build: Callable[[Sequence[torch.Tensor]], Callable[[Latents], torch.Tensor]],
               inputs: Sequence[torch.Tensor], latents: Latents, key: Hashable) -> "_CompiledTarget":
        names = tuple(latents)
        inputs = tuple(inputs)
        full_key = (key, tuple((n, tensor_signature(v)) for n, v in latents.items()),
                    tuple(tensor_signature(t) for t in inputs))
        eager = build(inputs)
        first = None
        if full_key not in self._graphs:
            self._graphs[full_key], first = self._record(build, eager, names, inputs, latents)
        return _CompiledTarget(self._graphs[full_key], eager, names, inputs, latents, first)

    def _record(self, build, eager, names, inputs, latents) -> Tuple[Optional[Callable], Optional[tuple]]:
        """(the compiled graph, or None to run eagerly; the recording run's own outputs, which are
        the first evaluation at ``latents``, so that a graph that writes into tensors writes once).
        ``eager`` is ``build(inputs)``, which checks this call's data."""
        import pyro
        from torch.fx.experimental.proxy_tensor import make_fx

        count = len(names)
        outputs: List[tuple] = []

        def value_and_grads(*values):
            value, grad = value_and_grad(build(values[count:]), dict(zip(names, values[:count])))
            result = (value, *grad.values())
            outputs.append(result)  # real tensors (make_fx records while computing them)
            return result

        started = time.perf_counter()
        example = tuple(v.detach() for v in latents.values()) + inputs
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():  # (checks branch on values)
                warnings.simplefilter("ignore")
                graph = make_fx(value_and_grads)(*example)
            first = tuple(t.detach() for t in outputs[0])
            if _mutates(graph):
                return graph, first  # runs the recorded operations, writes included, without compiling
        except Exception as err:  # noqa: BLE001 - any failure to record; eager is the reference
            return self._failed(err), None
        with torch.no_grad():  # Pyro's argument checks of this call's data, on a forward pass that writes nothing
            eager({n: v.detach() for n, v in latents.items()})
        try:
            compiled = _compile_graph(graph, example, self.backend)
        except Exception as err:  # noqa: BLE001 - any failure to compile; eager is the reference
            return self._failed(err), None
        record_compile_time(label=self.label, shape=tuple(tuple(v.shape) for v in latents.values()), training=None,
                            backend=self.backend, seconds=time.perf_counter() - started)
        return compiled, first

    def _failed(self, err: Exception) -> None:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        self.compile_error = f"{type(err).__name__}: {reason}"
        warnings.warn(f"{self.label}: could not compile the log density ({self.compile_error}); this signature "
                      "runs eagerly (same numbers, slower)", RuntimeWarning, stacklevel=6)
        return None


def _compile_graph(graph: torch.fx.GraphModule, example: tuple, backend: str) -> Callable:
    """The recorded graph compiled now (a failure raises here). Inductor compiles an FX graph
    recorded outside Dynamo directly (``torch._inductor.compile``, without Dynamo's guards and
    wrappers around every call: about 20 µs less per evaluation); other backends, or a torch
    without that entry point, go through ``torch.compile``."""
    compile_fx = None
    if backend == "inductor":
        try:
            import torch._inductor as inductor

            compile_fx = getattr(inductor, "compile", None)
        except ImportError:
            pass
    with torch.no_grad():  # the graph holds its own backward pass: compile (and run) it as inference
        if compile_fx is None:
            compiled = torch.compile(graph, backend=backend, dynamic=False)
        else:
            compiled = compile_fx(graph, list(example))
        compiled(*example)
    return compiled


def _mutates(graph: torch.fx.GraphModule) -> bool:
    """Whether a recorded graph writes into a tensor (an in-place or ``out=`` aten operation)."""
    for node in graph.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


class _CompiledTarget:
    """A log density {site: (R, ...)} -> (R,) whose ``value_and_grad`` runs a compiled graph. Its
    first evaluation runs the eager function (with the caller's validation), unless the graph
    was just recorded at those latents (the recording's outputs are that evaluation); a plain
    call runs the eager function."""

    def __init__(self, graph: Optional[Callable], eager: Callable[[Latents], torch.Tensor], names: Tuple[str, ...],
                 inputs: Tuple[torch.Tensor, ...], latents: Latents, first: Optional[tuple]):
        self._graph, self._eager, self._names, self._inputs = graph, eager, names, inputs
        self._first = (latents, first) if first is not None else None
        self._validated = first is not None

    def __call__(self, latents: Latents) -> torch.Tensor:
        return self._eager(latents)

    def value_and_grad(self, position: Latents):
        if self._first is not None:
            (latents, (value, *grads)), self._first = self._first, None
            if all(position[n] is latents[n] or torch.equal(position[n], latents[n]) for n in self._names):
                return value, dict(zip(self._names, grads))
        if self._graph is None or not self._validated:
            self._validated = True
            return value_and_grad(self._eager, position)
        with torch.no_grad():  # (the graph computes the gradient itself; no Pyro code runs)
            value, *grads = self._graph(*(position[n] for n in self._names), *self._inputs)
        return value, dict(zip(self._names, grads))


def flatten_call(args: tuple, kwargs: dict) -> Tuple[List[torch.Tensor], Callable, Hashable]:
    """The tensors of a call's ``args`` and ``kwargs`` (nested lists, tuples and dicts included),
    a function that rebuilds ``(args, kwargs)`` from replacements of those tensors, and the
    call's other leaves as a hashable key (``TypeError`` if one of them is not hashable)."""
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    positions = [i for i, leaf in enumerate(leaves) if torch.is_tensor(leaf)]
    others = tuple((i, type(leaf), leaf) for i, leaf in enumerate(leaves) if not torch.is_tensor(leaf))
    hash(others)

    def rebuild(tensors: Sequence[torch.Tensor]):
        new = list(leaves)
        for i, t in zip(positions, tensors):
            new[i] = t
        return pytree.tree_unflatten(new, spec)

    return [leaves[i] for i in positions], rebuild, (str(spec), others)
