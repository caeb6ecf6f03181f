"""CI smoke runs of the benchmarks: seconds long, they check that the tables are written and that
bad arguments end in one line."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, experiment_script


def test_step_benchmark_smoke_writes_its_table(tmp_path):
    bench = experiment_script("bench_langevin")
    bench.main(bench.parse_args(["--smoke", "--out", str(tmp_path), "--methods", "library", "fused", "compiled",
                                 "anchor", "anchor_same", "generic", "nuts"]))
    table = pd.read_csv(tmp_path / "langevin_cpu.csv")
    assert {"library", "fused", "compiled", "anchor", "anchor_same", "generic", "nuts"} <= set(table.method)
    assert {"ms_per_step", "achieved_gflops", "pct_matmul_peak", "speedup_vs_anchor", "compile_s", "cpu"} <= set(table.columns)
    assert (table.ms_per_step > 0).all()
    assert table.cpu.str.contains("CPUs").all()
    env = pd.read_csv(tmp_path / "environment_cpu.csv", index_col=0)["value"]
    assert env["command"].startswith("python ")


@pytest.mark.parametrize("argv,message", [
    (["--batch-sizes", "0"], "must be at least 1"),
    (["--methods", "cuda_graph"], "needs --device cuda"),
    (["--presets", "huge"], "invalid choice"),
])
def test_step_benchmark_bad_arguments_end_in_one_line(tmp_path, argv, message):
    run = subprocess.run([sys.executable, str(REPO / "experiments" / "bench_langevin.py"), "--out", str(tmp_path / "o"), *argv],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


def test_training_benchmark_smoke_writes_its_estimate(tmp_path):
    bench = experiment_script("bench_training")
    bench.main(bench.parse_args(["--smoke", "--out", str(tmp_path)]))
    table = pd.read_csv(tmp_path / "training_cost.csv")
    assert {"library", "library_official_modules", "fused", "compiled", "anchor"} <= set(table.method)
    assert (table.seconds > 0).all()
    estimate = pd.read_csv(tmp_path / "main_command_estimate.csv")
    assert set(estimate.method) == {"library", "library_official_modules", "fused", "compiled"}
    assert (estimate.iterations == 5010).all()  # 10 epochs of the held-out-7 split's 50,165 images in batches of 100
    assert (estimate.total_s > estimate.train_s).all()


def test_step_benchmark_latent_dim_option_overrides_the_preset():
    bench = experiment_script("bench_langevin")
    model = bench.build_model("cpu", 7, bench.torch.device("cpu"), train=False)
    assert model.latent_dim == 7 and not model.training


def test_user_model_benchmark_smoke_writes_its_table(tmp_path):
    bench = experiment_script("bench_user_models")
    bench.main(bench.parse_args(["--smoke", "--out", str(tmp_path)]))
    table = pd.read_csv(tmp_path / "user_models.csv")
    assert set(zip(table.model, table.method)) == {(m, k) for m in ("sequential", "digits")
                                                   for k in ("handwritten", "eager", "compiled")}
    assert {"ms_per_step", "speedup_vs_handwritten", "speedup_vs_eager", "cpu", "threads"} <= set(table.columns)
    assert (table.ms_per_step > 0).all() and table.cpu.str.contains("CPUs").all()
    assert (table[table.method == "eager"].speedup_vs_eager == 1).all()
    env = pd.read_csv(tmp_path / "environment_user_models.csv", index_col=0)["value"]
    assert env["command"].startswith("python ")


def test_user_model_benchmark_handwritten_log_joint_is_the_pyro_models():
    """The hand-written loop targets the same density as the guides: its log joint is the Pyro model's."""
    bench = experiment_script("bench_user_models")
    for name in ("sequential", "digits"):
        user = bench.UserModel(name, seed=0)
        x = user.data(3, seed=1)
        z = bench.torch.randn(3, user.latent_dim)
        trace = bench.pyro.poutine.trace(bench.pyro.poutine.condition(user.model, data={"z": z})).get_trace(x)
        trace.compute_log_prob()
        expected = trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]
        bench.torch.testing.assert_close(user.log_joint(x, z), expected)
