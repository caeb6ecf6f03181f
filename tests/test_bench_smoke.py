"""CI smoke run of the Langevin benchmark: seconds long, checks only that the table is written."""

import importlib.util

import pandas as pd

from tests.conftest import REPO


def test_benchmark_smoke_writes_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_langevin", REPO / "experiments" / "bench_langevin.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.parse_args(["--smoke", "--out", str(tmp_path)]))
    table = pd.read_csv(tmp_path / "langevin_cpu.csv")
    assert {"fast", "generic", "anchor", "nuts"} <= set(table.method)
    assert {"ms_per_step", "examples_steps_per_s", "peak_mem_mb", "achieved_gflops", "pct_matmul_peak"} <= set(table.columns)
    assert (table.ms_per_step > 0).all()
    assert (tmp_path / "environment_cpu.csv").exists()
