"""Measurement tools of the benchmarks: interleaved timing, the machine's matmul peak, FLOP
counts, peak memory and a description of the CPU (recorded beside every number)."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from pyro_lfbm.harness import cli


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_average() -> float:
    """The 1-minute load average (how busy the machine was)."""
    return os.getloadavg()[0]


def cpu_description() -> str:
    """The CPU model, vendor family/model numbers and its widest vector ISA, e.g.
    ``"AMD EPYC (family 26 model 2, avx512f), 2 CPUs"`` (from ``/proc/cpuinfo`` on Linux)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2" if flags else "?"
    family = f"family {info['cpu family']} model {info['model']}, " if "cpu family" in info and "model" in info else ""
    name = re.sub(r"\s+", " ", name)
    return f"{name} ({family}{isa}), {os.cpu_count()} CPUs"


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of an (n, n) @ (n, n) float32 matmul (2 n³ FLOPs) on ``device``, with the
    current torch thread count."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def interleaved_times(runners: Dict[str, Callable[[], object]], repeats: int, device="cpu") -> Dict[str, List[float]]:
    """Seconds of each call of each runner, called in turn (a, b, c, a, b, c, ...), so that the
    machine's load drifts hit every method alike. ``{name: [seconds] * repeats}``."""
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return times


class FlopCount(TorchDispatchMode):
    """Count the FLOPs of the matmuls and convolutions dispatched inside the block (forward and
    backward), with the formulas of :mod:`torch.utils.flop_counter`. ``total`` is the count."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(model, x: torch.Tensor, z: torch.Tensor) -> Dict[str, float]:
    """FLOPs of one gradient evaluation of ``model.log_joint`` (forward, and backward to z only),
    in total and for the generator alone. ``x``: (B, C, H, W); ``z``: (B, D). The model is left as
    it was (BatchNorm statistics are restored)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            with FlopCount() as total:
                zz = z.detach().requires_grad_(True)
                torch.autograd.grad(model.log_joint(x, z=zz).sum(), zz)
            with FlopCount() as gen:
                zz = z.detach().requires_grad_(True)
                x_hat = model.generator(zz)
                torch.autograd.grad(x_hat, zz, torch.ones_like(x_hat))
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.load_state_dict(state)
    return {"flops": float(total.total), "generator_flops": float(gen.total)}


class PeakMemory:
    """Peak memory of a block in MB: CUDA max allocated, or the process's peak RSS above its start
    (Linux ``/proc/self/clear_refs``; freed-but-cached malloc pages make it an underestimate)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = torch.device(device), float("nan")

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return float(line.split()[1]) / 1024.0
        return float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.base = self._status("VmRSS")
            except OSError:
                self.base = float("nan")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            try:
                self.mb = self._status("VmHWM") - self.base
            except OSError:
                self.mb = float("nan")


def add_run_arguments(parser, *, default_seed: int, smoke_help: str, default_out: str) -> None:
    """The options every benchmark script shares: ``--threads``, ``--seed``, ``--smoke``, ``--tag``, ``--out``."""
    parser.add_argument("--threads", type=cli.nonnegative_int, default=cli.DEFAULT_THREADS, help=cli.THREADS_HELP)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=default_seed)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--tag", default="", help="prefix of the output file names")
    parser.add_argument("--out", default=default_out, help="folder of the CSV files")
