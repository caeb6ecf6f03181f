"""The two contexts every inference and evaluation routine needs, written once.

* :func:`eval_mode` / :func:`train_mode`: put modules in ``eval()`` (BatchNorm on running
  statistics, each example on its own) or ``train()`` mode for a block and restore each module's
  own mode afterwards, also when the block raises.
* :func:`recalibrated_batchnorm`: BatchNorm on running statistics re-estimated, for a block, from
  data passed through a given forward computation (e.g. the networks at training images and their
  inferred latents), instead of the exponential averages left by training.
* :func:`batchnorm_statistics_kept`: BatchNorm's running statistics restored after a block.
* :func:`frozen_parameters`: stop the parameters of a model (and extra leaf tensors, such as the
  Pyro param sites of a function model) from requiring gradients for a block, and restore them
  afterwards. Inside a Langevin chain only gradients with respect to the latents are wanted; with
  frozen parameters autograd records nothing for the parameters, and parameter-only computations
  (the flow's assembled LU weight) are done once per chain instead of once per step.
* :func:`outside_inference_mode`: a Langevin chain needs gradients with respect to the latents,
  which ``torch.inference_mode()`` forbids; run the chain outside it, with the caller's inference
  tensors cloned into ordinary ones.
* :func:`refuse_jit_tracing`: a guide traced by ``torch.jit.trace`` (Pyro's ``JitTrace_ELBO``) is
  replayed as a fixed graph, so its Python code (the chain's adaptation, its persistent chains)
  stops running; refuse with one error.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterable, Iterator, Tuple

import torch

__all__ = [
    "batchnorm_statistics_kept", "eval_mode", "frozen_parameters", "module_mode", "outside_inference_mode",
    "recalibrated_batchnorm", "refuse_jit_tracing", "train_mode",
]


@contextlib.contextmanager
def module_mode(*modules: torch.nn.Module, training: bool) -> Iterator[None]:
    """Put ``modules`` in ``train(training)`` mode for the block; restore each one's mode afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.train(training)
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def eval_mode(*modules: torch.nn.Module):
    """Put ``modules`` in ``eval()`` mode for the block and restore their modes afterwards."""
    return module_mode(*modules, training=False)


def train_mode(*modules: torch.nn.Module):
    """Put ``modules`` in ``train()`` mode for the block and restore their modes afterwards."""
    return module_mode(*modules, training=True)


class _Forward(torch.nn.Module):
    """``modules`` as one module whose call runs ``forward`` (what ``torch.optim.swa_utils.update_bn`` calls)."""

    def __init__(self, modules: Iterable[torch.nn.Module], forward: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.parts, self._forward = torch.nn.ModuleList(modules), forward

    def forward(self, batch: torch.Tensor) -> None:
        with torch.no_grad():  # a Langevin chain inside turns gradients on for itself
            self._forward(batch)


@contextlib.contextmanager
def recalibrated_batchnorm(*modules: torch.nn.Module, batches: Iterable[torch.Tensor],
                           forward: Callable[[torch.Tensor], Any]) -> Iterator[None]:
    """Run the block in ``eval()`` mode with every BatchNorm's running statistics re-estimated from ``batches``.

    Each batch goes through ``forward(batch)`` with ``modules`` in ``train()`` mode; the running mean
    and variance become the plain averages over all those calls (``momentum=None``), by
    :func:`torch.optim.swa_utils.update_bn` (its use for SWA: Izmailov et al., UAI 2018). After
    the block the training's statistics, momenta and modes are restored. Why: the statistics left by
    training are exponential averages over the last updates of a moving model and over its training
    inputs; re-estimated from the test-time computation (e.g. the encoder's z of training images)
    they describe the inputs the network sees when it scores, and each image is still scored on its
    own (unlike BatchNorm on each test batch's statistics).

    :param batches: iterable of input batches (e.g. ``train_x.split(500)``); at least one.
    :param forward: ``forward(batch)`` runs the computation whose BatchNorm inputs are to be
        summarised; its result is discarded. Gradients are not needed (it may enable them itself).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("recalibrated_batchnorm needs at least one batch of inputs")
    with module_mode(*modules, training=False), batchnorm_statistics_kept(*modules):
        torch.optim.swa_utils.update_bn(batches, _Forward(modules, forward))
        for module in modules:
            module.eval()
        yield


@contextlib.contextmanager
def batchnorm_statistics_kept(*modules: torch.nn.Module) -> Iterator[None]:
    """Restore the running statistics (and batch counts) of every BatchNorm in ``modules`` after the block,
    e.g. to run a network in ``train()`` mode for its batch statistics without counting those batches."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{k: v.clone() for k, v in norm.state_dict().items()} for norm in norms]
    try:
        yield
    finally:
        for norm, state in zip(norms, saved):
            norm.load_state_dict(state)


@contextlib.contextmanager
def frozen_parameters(model, extra: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Set ``requires_grad=False`` for the block on the parameters of ``model`` (when it is an
    ``nn.Module``) and on the leaf tensors ``extra`` that require grad; restore them afterwards.

    Only tensors that required grad are touched (and only those are switched back on), so frozen
    parameters stay frozen and nested uses compose. Pyro's warning that ``pyro.module`` skips
    parameters with ``requires_grad=False`` is expected here and silenced for the block.
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
            warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _ordinary(value: Any) -> Any:
    """``value`` with every inference tensor (also inside tuples, lists and dicts) cloned into an
    ordinary tensor (outside inference mode, ``clone`` makes one); everything else as it is."""
    if torch.is_tensor(value):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_ordinary(v) for v in value)
    if isinstance(value, dict):
        return {k: _ordinary(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def outside_inference_mode(*values: Any) -> Iterator[Tuple[Any, ...]]:
    """Run the block outside ``torch.inference_mode()`` and yield ``values`` usable there.

    A Langevin chain differentiates the log density with respect to the latents, which inference
    mode forbids (``element 0 of tensors does not require grad``) and which ``torch.no_grad()``
    allows (the chain turns gradients on for itself). Under inference mode the block runs with
    ``inference_mode(False)`` and the caller's grad mode (off), i.e. as under ``no_grad``, and
    every inference tensor among ``values`` (the model's arguments: tensors, or tuples, lists and
    dicts of them) is yielded as an ordinary clone (inference tensors cannot be saved for backward).
    Outside inference mode the block runs as it is and ``values`` are yielded unchanged. Usage::

        with outside_inference_mode(args, kwargs) as (args, kwargs):
            ...
    """
    if not torch.is_inference_mode_enabled():
        yield values
        return
    grad = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        yield tuple(_ordinary(v) for v in values)


def refuse_jit_tracing(who: str) -> None:
    """Raise ``RuntimeError`` when called while ``torch.jit.trace`` records (Pyro's ``JitTrace_ELBO``,
    ``JitTraceGraph_ELBO``, ...). A traced function is replayed as its recorded graph from the next
    call on: a Langevin guide's step-size adaptation, persistent chains and ``latents`` would freeze
    at their first values without any error."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            f"{who} cannot run under torch.jit.trace (JitTrace_ELBO and the other Jit*_ELBO losses replay the "
            "first step's graph, so the chain's Python code would stop running); use Trace_ELBO"
        )
