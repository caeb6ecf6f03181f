"""Data-parallel training over several processes (``torchrun`` / ``torch.distributed``).

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), every process runs the same script; inside :func:`process_group` the library's
:func:`~pyro_lfbm.train.svi.fit` trains data-parallel:

* **Sharding.** Every epoch has the one-process order (fixed by the seed and the epoch); global
  batch *i* is ``order[i·B:(i+1)·B]`` and process ``r`` of ``W`` takes its rows ``r, r+W, ...``
  (:func:`shard_rows`), which is what ``torch.utils.data.DistributedSampler`` (no shuffling of its
  own, ``drop_last``) with a ``DataLoader`` of ``B/W`` per process hands out after ``set_epoch``.
* **The same noise as one process.** Every process keeps its random number generators in the state
  a one-process run has (same seed, same draws): each draw of the Langevin chains (z₀ and the
  moves' noise) is made for the whole global batch and the process keeps its rows
  (:func:`~pyro_lfbm.ops.langevin.global_batch_noise`). An example's noise is thus a function of the
  seed, the step and its row in the global batch, whatever the number of processes.
* **Batch statistics of the global batch.** BatchNorm layers become :class:`SyncBatchNorm` (same
  parameters, buffers and state dict): in training mode they normalise by the statistics of the
  whole global batch, and their gradients flow across processes (``torch.nn.SyncBatchNorm`` on
  CUDA; on the CPU an all-reduce with a backward pass, for gloo).
* **Summed gradients.** Trace_ELBO's loss is a sum over the batch, so the one-process gradient of
  a global batch is the *sum* of the processes' gradients: after the backward pass each process
  all-reduces (SUM) its parameter gradients in one flat buffer, then Pyro's optimiser steps
  identically everywhere (:class:`DataParallelSVI`).
* **One writer.** Rank 0 alone writes checkpoints and results and shows progress; every process
  starts from rank 0's state (a fresh model or the checkpoint it resumes), sent by broadcast.
* **Scoring** is sharded the same way (:func:`sharded_inference`) and gathered.

So a W-process run follows the one-process run over the same global batches, up to the rounding of
sums taken in another order. Plain ``python`` runs (no ``WORLD_SIZE`` in the environment, or
``WORLD_SIZE=1``) never touch this module's collectives: they stay bit-identical.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). The
collectives time out after :func:`timeout_seconds` (``PYRO_LFBM_DIST_TIMEOUT``, default 600 s), so
a process whose peer hangs stops with an error instead of waiting for ever; a peer that dies is
noticed at the next collective.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from pyro_lfbm.infer.dataset import InferenceResult, batch_slices, infer_dataset
from pyro_lfbm.ops.langevin import global_batch_noise
from pyro_lfbm.train.checkpoint import get_rng_state, restore_rng_state

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DataParallelSVI",
    "DistributedError",
    "SyncBatchNorm",
    "World",
    "all_reduce_gradients",
    "any_process",
    "broadcast_object",
    "convert_sync_batchnorm",
    "current",
    "gather_rows",
    "global_batch_noise",
    "is_main",
    "launch_environment",
    "local_batchnorm",
    "process_group",
    "shard_rows",
    "sharded_inference",
    "sum_across_processes",
    "synchronize_start",
    "timeout_seconds",
]

#: Seconds a collective waits for the other processes before it fails (``PYRO_LFBM_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "PYRO_LFBM_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """The process group cannot be set up, or it failed (another process stopped or hung): one line."""


#: Words of the errors that gloo / NCCL / the c10d store raise when a collective fails.
_COLLECTIVE_FAILURE = ("gloo", "Gloo", "NCCL", "nccl", "Connection", "connection", "Timed out", "timed out",
                       "ProcessGroup", "c10d", "Socket", "socket", "peer")


def _collective_failure(err: BaseException) -> Optional[str]:
    """The first line of ``err`` without gloo's ``[file:line]`` prefix, when it is a failed collective."""
    if isinstance(err, DistributedError):
        return None
    dist_error = getattr(dist, "DistError", ())
    text = str(err).strip()
    if not (isinstance(err, dist_error) or any(word in text for word in _COLLECTIVE_FAILURE)):
        return None
    line = re.sub(r"^(\[[^\]]*\]\s*)+", "", text.splitlines()[0] if text else type(err).__name__)
    line = line.split(". This is typically")[0].rstrip(". ")
    return line[:200]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: ``rank`` of ``size`` processes, ``local_rank``
    on its machine (its GPU with CUDA)."""

    rank: int
    size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints and results and prints."""
        return self.rank == 0


# --------------------------------------------------------------------------- environment


def launch_environment() -> Optional[World]:
    """The :class:`World` that ``torchrun`` (or any ``env://`` launcher) describes in the
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or None when ``WORLD_SIZE`` is not set.

    :raises DistributedError: the variables are not whole numbers or the rank is out of range.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (they are set by torchrun); got "
            f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}, "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}"
        ) from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise DistributedError(f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; got RANK={rank}, "
                               f"WORLD_SIZE={size}, LOCAL_RANK={local_rank}")
    return World(rank, size, local_rank)


def current() -> Optional[World]:
    """The :class:`World` of the initialised process group when it has more than one process,
    else None (a plain run, or a process group of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size < 2:
        return None
    rank = dist.get_rank()
    env = launch_environment()
    return World(rank, size, env.local_rank if env is not None else 0)


def is_main() -> bool:
    """True unless this is a process of rank > 0 in a data-parallel run (write and print only then)."""
    world = current()
    return world is None or world.is_main


def timeout_seconds() -> float:
    """The collectives' timeout: ``PYRO_LFBM_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return seconds


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for CUDA, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device: torch.device | str = "cpu", timeout: Optional[float] = None) -> Iterator[Optional[World]]:
    """Initialise the default process group from the launcher's environment, and destroy it at the end.

    Without ``WORLD_SIZE`` in the environment (a plain ``python`` run) or with ``WORLD_SIZE=1``
    it does nothing and yields None. Otherwise it joins the group (``env://``; gloo on CPU, nccl
    with one GPU per process: ``cuda:LOCAL_RANK`` becomes the current device, so ``"cuda"`` means
    it) with the collectives' timeout ``timeout`` (default :func:`timeout_seconds`) and yields
    the :class:`World`. A group that is already initialised is used as it is and left alone.

    :raises DistributedError: one line when the group cannot be set up (a missing
        ``MASTER_ADDR``, CUDA asked for without a GPU for this local rank, ...), or when a collective
        inside the block fails (another process died, hung past the timeout or cannot be reached).
    """
    env = launch_environment()
    if env is None or env.size == 1:
        yield None
        return
    if dist.is_initialized():
        yield current()
        return
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available() or env.local_rank >= torch.cuda.device_count():
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise DistributedError(f"process {env.rank} (local rank {env.local_rank}) needs its own GPU, but this "
                                   f"machine has {count}; start at most {count} processes per machine (--nproc_per_node)")
        torch.cuda.set_device(env.local_rank)
    seconds = timeout_seconds() if timeout is None else float(timeout)
    try:
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=seconds))
    except (ValueError, RuntimeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"could not join the process group of {env.size} processes as rank {env.rank}: {text}; "
                               "start the script with torchrun (see docs/guide/distributed.md)") from None
    try:
        yield current()
    except RuntimeError as err:
        detail = _collective_failure(err)
        if detail is None:
            raise
        raise DistributedError(
            f"process {env.rank} of {env.size} lost the others ({detail}): another process stopped, hung past the "
            f"{seconds:g} s timeout ({TIMEOUT_ENV}) or cannot be reached; the checkpoint keeps the last finished "
            "epoch or interrupted batch: start the same command again with --resume"
        ) from None
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- sharding


def shard_rows(total: int, world: Optional[World] = None) -> torch.Tensor:
    """This process's rows ``rank, rank + size, ...`` of a global batch of ``total`` rows, int64 (R,).

    Batch i of the rows of :class:`torch.utils.data.DistributedSampler` (``shuffle=False``,
    ``drop_last=True``) over an epoch's order, with batches of ``total / size`` per process, is
    exactly these rows of the one-process batch i. Without a world (one process): every row.
    """
    world = current() if world is None else world
    if world is None:
        return torch.arange(total)
    return torch.arange(world.rank, total, world.size)


def _collective_device() -> torch.device:
    """Where tensors must be for the default group's backend (the current GPU for nccl)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- collectives


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any (one small all-reduce; just ``flag``
    without a data-parallel world)."""
    if current() is None:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_across_processes(value: float) -> float:
    """The sum over processes of a number (in float64; the number itself in one process)."""
    if current() is None:
        return float(value)
    total = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total.item())


def all_reduce_gradients(params: Sequence[torch.Tensor]) -> None:
    """Replace every ``p.grad`` by the sum of the processes' gradients of ``p``.

    ``params`` must be the same tensors in the same order on every process (sort them by name).
    One flat all-reduce per (device, dtype); a gradient that is None on every process stays
    None, one that is None on some processes counts as zeros there.
    """
    if current() is None or not params:
        return
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    target = _collective_device()
    for group in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                         + [torch.tensor([float(p.grad is not None) for p in group], dtype=group[0].dtype, device=group[0].device)])
        flat = flat.to(target)
        dist.all_reduce(flat)
        flat = flat.to(group[0].device)
        has_grad = flat[-len(group):] > 0
        offset = 0
        for p, present in zip(group, has_grad.tolist()):
            n = p.numel()
            if present:
                p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process (pickled; ``obj`` itself without a world)."""
    if current() is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Put together a global batch from the processes' rows (:func:`shard_rows`).

    :param local: this process's rows (R, ...) of the global batch, in the order of ``shard_rows``.
    :param total: the number of rows of the global batch.
    :returns: (total, ...) on the device of ``local`` (``local`` itself without a world).
    """
    world = current()
    if world is None:
        return local
    width = -(-total // world.size)  # rows of the largest share
    target = _collective_device()
    padded = torch.zeros((width,) + tuple(local.shape[1:]), dtype=local.dtype, device=target)
    padded[: local.shape[0]] = local.to(target)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    out = torch.empty((total,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    for rank, part in enumerate(parts):
        rows = torch.arange(rank, total, world.size)
        out[rows.to(local.device)] = part[: rows.numel()].to(local.device)
    return out


def synchronize_start(trainer, extra: Any = None) -> Any:
    """Give every process rank 0's trainer state and random number generators (and ``extra``).

    Called once when training starts (fresh or resumed): the processes then begin from the same
    parameters, optimiser states and generator states, as ``DistributedDataParallel`` does at
    construction. With CUDA, rank 0's generator state of its current GPU is put into each
    process's current GPU. Returns rank 0's ``extra`` (``extra`` itself without a world).
    """
    world = current()
    if world is None:
        return extra
    rng = get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    payload = broadcast_object((trainer.state_dict(), rng, cuda_state, extra) if world.is_main else None)
    state, rng, cuda_state, extra = payload
    if not world.is_main:
        trainer.load_state_dict(state)
        rng = dict(rng)
        rng.pop("cuda", None)
        restore_rng_state(rng)
        if cuda_state is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda_state.cpu())
    return extra


# --------------------------------------------------------------------------- BatchNorm over processes


class _SumAcrossProcesses(torch.autograd.Function):
    """y = Σ_processes x, with the backward pass Σ_processes ∂L/∂y (each process's loss is part of
    one global loss, so the gradient of x collects every process's contribution)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


_LOCAL_BATCHNORM = [0]


@contextlib.contextmanager
def local_batchnorm() -> Iterator[None]:
    """Inside, :class:`SyncBatchNorm` layers use each process's own batch statistics (for a
    batch that every process holds whole)."""
    _LOCAL_BATCHNORM[0] += 1
    try:
        yield
    finally:
        _LOCAL_BATCHNORM[0] -= 1


class SyncBatchNorm(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` that also runs on the CPU (gloo).

    In training mode with more than one process, the batch mean and (biased) variance are those of
    the union of every process's batch, computed from one all-reduce of per-channel sums whose
    backward pass all-reduces the gradients, so each process gets the gradient of the global
    loss; the running statistics are updated with the global statistics (unbiased variance over
    the global count), the same on every process. CUDA tensors use ``torch.nn.SyncBatchNorm``'s
    own kernels. In evaluation mode, in one process, or inside :func:`local_batchnorm`, it is
    plain BatchNorm. Parameters, buffers and ``state_dict`` are those of ``nn.BatchNorm1d/2d/3d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        sync = self.training and not _LOCAL_BATCHNORM[0] and current() is not None
        if not sync:
            return nn.modules.batchnorm._BatchNorm.forward(self, input)
        if input.device.type != "cpu":
            return super().forward(input)
        self._check_input_dim(input)
        if self.process_group is not None:
            raise DistributedError("the CPU SyncBatchNorm synchronises over the default process group only")
        dims = [0] + list(range(2, input.dim()))
        channels = input.shape[1]
        shape = [1, channels] + [1] * (input.dim() - 2)
        count = input.numel() // channels
        # One all-reduce (and one in the backward pass) per call: the per-channel sums of x - c and
        # (x - c)² and the count, shifted by c = the running mean (the same on every process, and
        # close to the batch mean, so the variance E[(x-c)²] - E[x-c]² loses no precision).
        if self.running_mean is not None:
            shift = self.running_mean.detach().clone()
        else:
            shift = input.new_zeros(channels)
        shifted = input - shift.view(shape)
        sums = _SumAcrossProcesses.apply(torch.cat([shifted.sum(dims), (shifted * shifted).sum(dims),
                                                    input.new_tensor([float(count)])]))
        n = sums[-1].detach()
        offset = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - offset * offset).clamp_min(0.0)
        mean = shift + offset
        centred = shifted - offset.view(shape)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            total = float(n)
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (total / max(total - 1.0, 1.0))
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer inside ``module`` by a :class:`SyncBatchNorm` that holds the
    same parameter and buffer tensors (so the state dict, Pyro's parameter names and optimiser
    states are unchanged). In place for children; returns the converted module (a new object only
    when ``module`` itself is a BatchNorm layer). Layers that already synchronise are kept."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, bias=module.bias is not None)
        if module.weight is not None:
            out.weight = module.weight
        if module.bias is not None:
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        return out
    for name, child in list(module.named_children()):
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return out


# --------------------------------------------------------------------------- SVI


class DataParallelSVI:
    """An :class:`~pyro_lfbm.train.svi.SVITrainer` whose steps are data-parallel.

    ``step(x)`` gets the global batch x (B, C, H, W) (and its masks); this process runs the SVI
    step on its rows :func:`shard_rows` of it, with each chain's noise taken from the global draw
    (:func:`~pyro_lfbm.ops.langevin.global_batch_noise`), sums the parameter gradients over the
    processes (:func:`all_reduce_gradients`, in the order of the Pyro parameter names), and lets
    Pyro's optimiser step. The loss it reports is the global batch's loss per example. With
    persistent chains every process stores the chains of the whole global batch, so that each
    holds the state a one-process run has. Everything else (``end_epoch``, ``state_dict``, ...) is
    the wrapped trainer's.

    Only the draws that go through :func:`~pyro_lfbm.ops.langevin.standard_normal` (the Langevin
    chains' z₀ and noise, an energy prior's negatives) are split by rows. Other random draws of the
    model or guide (an encoder guide's reparameterised sample, dropout) come from generators in
    the same state on every process, so they repeat across processes: this is meant for Langevin guides.

    :raises ValueError: a guide with ``step_size="auto"`` (each process would adapt its step size to
        its own rows).
    """

    data_parallel = True

    def __init__(self, trainer, world: Optional[World] = None):
        self.trainer = trainer
        self.world = current() if world is None else world
        if self.world is None:
            raise DistributedError("DataParallelSVI needs an initialised process group of more than one process")
        if getattr(trainer.guide, "auto", False):
            raise ValueError("step_size='auto' adapts the step size to each process's own rows, so the processes of a "
                             "data-parallel run would drift apart; give the guide a fixed step size (e.g. the one "
                             "a one-process run adapted, guide.step_size)")
        self._index: Optional[torch.Tensor] = None

    def __getattr__(self, name: str):
        if name == "trainer":
            raise AttributeError(name)
        return getattr(self.trainer, name)

    def set_positions(self, index: torch.Tensor) -> None:
        """The dataset positions (B,) of the next global batch."""
        self._index = index

    def step(self, x: torch.Tensor, *mask: torch.Tensor) -> Dict[str, float]:
        import pyro
        from pyro import poutine

        total = x.shape[0]
        rows = shard_rows(total, self.world)
        on_device = rows.to(x.device)
        local = (x[on_device], *(m[on_device] for m in mask))
        trainer, svi = self.trainer, self.trainer.svi
        guide = trainer.guide
        if self._index is not None and hasattr(guide, "set_positions"):
            guide.set_positions(self._index[rows.to(self._index.device)])
        with global_batch_noise(rows, total), poutine.trace(param_only=True) as capture:
            loss = svi.loss_and_grads(svi.model, svi.guide, *local)
        named = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        params = [named[name] for name in sorted(named)]
        all_reduce_gradients(params)
        loss = sum_across_processes(loss)
        svi.optim(params)
        pyro.infer.util.zero_grads(params)
        trainer.update_average()
        chains = getattr(guide, "chains", None)
        if chains is not None and self._index is not None and getattr(guide, "last_state", None) is not None:
            position = {name: gather_rows(value, total) for name, value in guide.last_state.position.items()}
            chains.store(self._index, position)
        self._index = None
        metrics = {"loss": loss / total}
        lr = _current_lr(trainer)
        if lr is not None:
            metrics["lr"] = lr
        return metrics

    def end_epoch(self) -> None:
        self.trainer.end_epoch()

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


def _current_lr(trainer) -> Optional[float]:
    for optimizer in getattr(trainer.scheduler, "optim_objs", {}).values():
        return optimizer.optimizer.param_groups[0]["lr"]
    optim = getattr(trainer, "optim", None)
    return getattr(optim, "lr", None)


# --------------------------------------------------------------------------- scoring


def sharded_inference(model, x: torch.Tensor, *, batch_size: int = 500, mask: Optional[torch.Tensor] = None,
                      progress: bool = True, desc: str = "inference", **kwargs) -> InferenceResult:
    """:func:`~pyro_lfbm.infer.dataset.infer_dataset` with every batch split over the processes.

    Each batch of ``batch_size`` images (the one-process batches, :func:`batch_slices`) is split by
    :func:`shard_rows`; each process infers its rows, with z₀ and any noise taken from the global
    draw and BatchNorm (converted to :class:`SyncBatchNorm`) normalising by the whole batch in
    training mode, and the rows are gathered, so every process returns the one-process result (up
    to rounding). A batch with fewer images than processes is inferred whole by every process.
    Without a world this *is* ``infer_dataset``. Other keywords (``num_steps``, ``step_size``,
    ``noise``, ``init``) are ``infer_dataset``'s.
    """
    world = current()
    if world is None:
        return infer_dataset(model, x, batch_size=batch_size, mask=mask, progress=progress, desc=desc, **kwargs)
    import time

    convert_sync_batchnorm(model)
    started = time.perf_counter()
    zs, lps, terms, evaluations = [], [], {}, 0
    bar = tqdm(batch_slices(x.shape[0], batch_size), desc=desc, disable=not (progress and world.is_main), leave=False,
               dynamic_ncols=True)
    for part in bar:
        xb = x[part]
        mb = None if mask is None else mask[part]
        n = xb.shape[0]
        if n < world.size:  # too few rows to share: every process does the whole batch
            with local_batchnorm():
                result = infer_dataset(model, xb, batch_size=n, mask=mb, progress=False, **kwargs)
            z, lp, parts = result.z, result.log_joint, result.log_joint_terms
        else:
            rows = shard_rows(n, world)
            with global_batch_noise(rows, n):
                result = infer_dataset(model, xb[rows], batch_size=rows.numel(), mask=None if mb is None else mb[rows],
                                       progress=False, **kwargs)
            z, lp = gather_rows(result.z, n), gather_rows(result.log_joint, n)
            parts = {key: gather_rows(value, n) for key, value in result.log_joint_terms.items()}
        evaluations = result.gradient_evaluations
        zs.append(z)
        lps.append(lp)
        for key, value in parts.items():
            terms.setdefault(key, []).append(value)
    return InferenceResult(z=torch.cat(zs), log_joint=torch.cat(lps), log_joint_terms={k: torch.cat(v) for k, v in terms.items()},
                           gradient_evaluations=evaluations, seconds=time.perf_counter() - started)

