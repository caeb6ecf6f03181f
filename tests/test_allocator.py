"""glibc malloc thresholds (pyro_lfbm.harness.allocator): with them, a loop that allocates and frees
tensors of mixed sizes stops taking minor page faults; without them (glibc's defaults, or run_cli
under PYRO_LFBM_SYSTEM_MALLOC=1) the same loop takes thousands per iteration. The settings are
process-global, so every check that applies them runs in a subprocess."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_lfbm.harness import allocator

REPO = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# The loop whose page faults are counted: 12 tensors of 0.3M, 1.3M, 0.6M and 0.5M float32 (about 33 MB
# alive at once) and one of 10M (40 MB), an op on some of them, then freed in another order than
# allocated. With glibc's defaults the 40 MB block is always served by mmap and unmapped when freed
# (above 32 MiB, the largest threshold glibc adjusts itself to), so every iteration faults its 9766
# pages in again; the smaller ones are trimmed from the top of the heap and faulted in again in most
# runs but not in all (it depends on where small blocks land), so they alone would make a flaky check.
_LOOP = """
import json, resource, torch
torch.set_num_threads(1)
SIZES = (300_000, 1_300_000, 600_000, 500_000)

def step():
    xs = [torch.ones(SIZES[i % 4]) for i in range(12)]
    big = torch.ones(10_000_000)
    ys = [x * 2 for x in xs[::3]]
    for i in (3, 0, 7, 10, 1):
        xs[i] = None
    del big, xs, ys

def faults_per_step(warmup=20, steps=60):
    # minor page faults of each of `steps` iterations after `warmup` ones
    for _ in range(warmup):  # the heap reaches its working size first
        step()
    counts = []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts
"""

_DIRECT = _LOOP + """
from pyro_lfbm.harness.allocator import retain_freed_memory
applied = retain_freed_memory()
print(json.dumps({"applied": applied, "faults": faults_per_step()}))
"""

_THROUGH_RUN_CLI = _LOOP + """
import argparse
from pyro_lfbm.harness import cli

def main(args):
    print(json.dumps({"applied": cli.run_record()["malloc_retained"], "faults": faults_per_step()}))

cli.run_cli(main, argparse.Namespace(threads=1))
"""


def _run(script: str, **env) -> dict:
    child = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "PYRO_LFBM_SYSTEM_MALLOC", "WORLD_SIZE"))}
    child.update(OMP_NUM_THREADS="1", **env)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=child, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    counts = result.pop("faults")
    result.update(median=statistics.median(counts), faulting=sum(c > 0 for c in counts), steps=len(counts))
    return result


def _assert_retained(result: dict) -> None:
    # A typical iteration takes no fault. The heap may still grow a few times (a freed block that
    # does not fit the next request: one growth faults in 100-5000 pages, seen in 0-3 of 100
    # iterations after the warm-up), never in most of them.
    assert result["median"] < 5 and result["faulting"] <= result["steps"] // 10, result


def _assert_default(result: dict) -> None:
    assert result["median"] > 50 and result["faulting"] >= result["steps"] * 9 // 10, result


def test_retain_freed_memory_removes_the_page_faults():
    result = _run(_DIRECT)
    if not GLIBC:
        assert result["applied"] is False
        pytest.skip("not Linux with glibc: retain_freed_memory does nothing here")
    assert result["applied"] is True
    _assert_retained(result)


@pytest.mark.parametrize("opt_out", [None, "1"])
def test_run_cli_applies_it_unless_the_environment_opts_out(opt_out):
    env = {} if opt_out is None else {allocator.SYSTEM_MALLOC_ENV: opt_out}
    result = _run(_THROUGH_RUN_CLI, **env)
    if opt_out is not None:
        assert result["applied"] is False
        if GLIBC:  # glibc's defaults: the loop faults its pages in again every iteration
            _assert_default(result)
    elif GLIBC:
        assert result["applied"] is True
        _assert_retained(result)
    else:
        assert result["applied"] is False


def test_refuses_what_mallopt_cannot_take(monkeypatch):
    # Each of these returns before mallopt is called, so this process's malloc is left alone.
    for mmap_threshold, trim_threshold in [(-1, 1 << 20), (1 << 20, 1 << 31), (2.5, 1 << 20), ("64M", 1 << 20)]:
        assert allocator.retain_freed_memory(mmap_threshold, trim_threshold) is False
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda *a, **k: ("", ""))
    assert allocator.retain_freed_memory() is False
    monkeypatch.undo()
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False


@pytest.mark.parametrize("value, requested", [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)])
def test_system_malloc_environment_variable(monkeypatch, value, requested):
    if value is None:
        monkeypatch.delenv(allocator.SYSTEM_MALLOC_ENV, raising=False)
    else:
        monkeypatch.setenv(allocator.SYSTEM_MALLOC_ENV, value)
    assert allocator.system_malloc_requested() is requested
