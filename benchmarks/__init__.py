"""Benchmark helpers shared by ``experiments/bench_*.py`` and the tests: the anchor-style
reference loop (the official LFBM code's way of running a Langevin chain and a training step)
and measurement tools (interleaved timers, the matmul peak, FLOP counts, the CPU model).

Nothing here is part of the library's API; ``pyro_lfbm`` never imports it.
"""

from benchmarks.anchor import AnchorFlow, AnchorTrainer, anchor_langevin, reference_generator
from benchmarks.measure import (
    FlopCount,
    PeakMemory,
    add_run_arguments,
    cpu_description,
    interleaved_times,
    load_average,
    matmul_peak_gflops,
    step_flops,
    sync,
)

__all__ = [
    "add_run_arguments",
    "AnchorFlow",
    "AnchorTrainer",
    "FlopCount",
    "PeakMemory",
    "anchor_langevin",
    "cpu_description",
    "interleaved_times",
    "load_average",
    "matmul_peak_gflops",
    "reference_generator",
    "step_flops",
    "sync",
]
