"""Keep freed memory inside the process: glibc ``malloc`` thresholds set once by the scripts' harness.

Why. A Langevin step allocates and frees tensors of about 0.6-1.3 MB many times over. With
glibc's default settings such blocks are served by ``mmap`` and returned with ``munmap`` when
freed, or freed memory at the top of the heap is given back to the kernel ("trimmed") as soon as
more than about twice the largest such block is free; either way the next step touches fresh
pages, and every page costs a minor page fault (the kernel zeroes and maps it). Measured with the
``cpu`` preset at batch 100, one torch thread, on an AMD EPYC (Zen 5): about 700-940 minor faults
per Langevin step with the default settings, 0.5-0.9 with those of :func:`retain_freed_memory`,
and the library's step went from about 9.5-10.5 ms to 7.8-8.1 ms.

What it does. ``mallopt(M_MMAP_THRESHOLD, 64 MiB)``: blocks below 64 MiB come from the heap, not
from ``mmap`` (this also switches off glibc's self-adjusting threshold); ``mallopt(M_TRIM_THRESHOLD,
256 MiB)``: the heap is only given back to the kernel when more than 256 MiB at its top are free.
See ``man 3 mallopt``.

What it costs. Freed memory up to those thresholds stays in the process instead of going back to
the system, so the resident size can stay up to a few hundred MB above what is in use; the main
command (``experiments/anomaly.py``) peaks at about 1.4 GB resident anyway.

Who calls it. The settings hold for the whole process (every thread and arena), so library
functions never call it: :func:`pyro_lfbm.harness.cli.run_cli` does, once at the start of every
script, unless the environment variable ``PYRO_LFBM_SYSTEM_MALLOC`` is set to anything but ``""``
or ``"0"`` (e.g. ``PYRO_LFBM_SYSTEM_MALLOC=1 python experiments/anomaly.py ...`` keeps glibc's
defaults). Whether it was applied is recorded as ``"malloc_retained"`` in
:func:`pyro_lfbm.harness.cli.run_record`. On anything but Linux with glibc (macOS, Windows, musl)
it does nothing.
"""

from __future__ import annotations

import ctypes
import operator
import os
import platform
import sys

#: ``mallopt`` parameter numbers from glibc's ``<malloc.h>``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: The environment variable that keeps glibc's default ``malloc`` settings in the scripts.
SYSTEM_MALLOC_ENV = "PYRO_LFBM_SYSTEM_MALLOC"

_C_INT_MAX = 2**31 - 1

_retained = False


def retain_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes) for this whole process.

    :param mmap_threshold: blocks of this many bytes or more are served by ``mmap`` (default 64 MiB).
    :param trim_threshold: free bytes at the top of the heap before they go back to the kernel
        (default 256 MiB).
    :returns: True when both were set (Linux with glibc); False elsewhere, when ``mallopt`` is
        missing or refuses a value, or when a threshold is not a whole number in 0 .. 2**31 - 1
        (``mallopt`` takes a C ``int``). Never raises; the settings stay until the process ends.
    """
    global _retained
    try:
        thresholds = tuple(operator.index(value) for value in (mmap_threshold, trim_threshold))  # TypeError: no whole number
        if not all(0 <= value <= _C_INT_MAX for value in thresholds):
            return False
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return False
        mallopt = getattr(ctypes.CDLL("libc.so.6"), "mallopt", None)
        if mallopt is None:
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success, 0 when it refuses the value (it then changes nothing).
        if mallopt(M_MMAP_THRESHOLD, thresholds[0]) != 1 or mallopt(M_TRIM_THRESHOLD, thresholds[1]) != 1:
            return False
    except Exception:  # OSError (no libc.so.6), TypeError (a threshold that is no whole number), ...
        return False
    _retained = True
    return True


def system_malloc_requested() -> bool:
    """True when ``PYRO_LFBM_SYSTEM_MALLOC`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get(SYSTEM_MALLOC_ENV, "").strip() not in ("", "0")


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` has succeeded in this process (the settings then hold
    until it ends)."""
    return _retained
