"""Data-parallel training (pyro_lfbm.train.distributed): the pieces in one process, and real runs of
two CPU processes (gloo) started the way torchrun starts them (tests/distributed_worker.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pyro_lfbm.ops.langevin import global_batch_noise, langevin_move, standard_normal
from pyro_lfbm.train import distributed, fit_steps
from pyro_lfbm.train.distributed import DistributedError, SyncBatchNorm, World, convert_sync_batchnorm, shard_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed_worker as worker  # noqa: E402

LAUNCH_TIMEOUT = 240  # seconds; each run takes ~10-20 s on a shared 2-core machine


# --------------------------------------------------------------------------- one process


def test_global_batch_noise_gives_each_row_its_one_process_noise():
    torch.manual_seed(0)
    start, move, other = torch.randn(6, 3), torch.randn(6, 3), torch.randn(4, 5)
    rows = torch.tensor([1, 3, 5])
    torch.manual_seed(0)
    with global_batch_noise(rows, 6):
        z0 = standard_normal((3, 3))
        moved = langevin_move(torch.zeros(3, 3), torch.zeros(3, 3), 1.0)
        unrelated = standard_normal((4, 5))  # not this process's rows: drawn as it is
    assert torch.equal(z0, start[rows]) and torch.equal(moved, move[rows]) and torch.equal(unrelated, other)
    torch.manual_seed(0)
    assert torch.equal(standard_normal((6, 3)), start)  # outside the context: torch.randn
    with pytest.raises(ValueError, match="rows must be"):
        with global_batch_noise(torch.tensor([0, 6]), 6):
            pass


@pytest.mark.parametrize("size", [2, 3])
def test_shard_rows_are_the_distributed_sampler_batches(size):
    """Batch i of DistributedSampler (no shuffle of its own, drop_last) over an epoch's order, with
    B/size images per process, is shard_rows of the one-process batch i."""
    from torch.utils.data import BatchSampler, DistributedSampler

    order = torch.randperm(36, generator=torch.Generator().manual_seed(1))
    batch = 12
    for rank in range(size):
        sampler = DistributedSampler(order.tolist(), num_replicas=size, rank=rank, shuffle=False, drop_last=True)
        sampler.set_epoch(0)
        theirs = [[order[j].item() for j in b] for b in BatchSampler(sampler, batch // size, drop_last=True)]
        ours = [order[i * batch : (i + 1) * batch][shard_rows(batch, World(rank, size))].tolist() for i in range(3)]
        assert theirs == ours
    assert shard_rows(5) .tolist() == [0, 1, 2, 3, 4]  # one process: every row


def test_launch_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launch_environment() is None
    with distributed.process_group() as world:  # a plain run: nothing to join
        assert world is None and distributed.current() is None and distributed.is_main()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.launch_environment() == World(2, 4, 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DistributedError, match="RANK < WORLD_SIZE"):
        distributed.launch_environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DistributedError, match="whole numbers"):
        distributed.launch_environment()
    monkeypatch.setenv("PYRO_LFBM_DIST_TIMEOUT", "0")
    with pytest.raises(DistributedError, match="PYRO_LFBM_DIST_TIMEOUT"):
        distributed.timeout_seconds()
    monkeypatch.setenv("PYRO_LFBM_DIST_TIMEOUT", "12.5")
    assert distributed.timeout_seconds() == 12.5


def test_process_group_without_a_rendezvous_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="could not join the process group of 2 processes as rank 1"):
        with distributed.process_group("cpu", timeout=2):
            pass


def test_sync_batchnorm_is_batchnorm_in_one_process_and_keeps_the_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Unflatten(1, (1, 2, 2)), nn.BatchNorm2d(1))
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Unflatten(1, (1, 2, 2)), nn.BatchNorm2d(1))
    reference.load_state_dict(net.state_dict())
    weight = net[1].weight
    converted = convert_sync_batchnorm(net)
    assert converted is net and isinstance(net[1], SyncBatchNorm) and isinstance(net[4], SyncBatchNorm)
    assert net[1].weight is weight  # the same tensors: Pyro's names and optimiser states stay valid
    assert list(net.state_dict()) == list(reference.state_dict())
    x = torch.randn(5, 3)
    assert torch.equal(net(x), reference(x))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))
    net.eval(), reference.eval()
    assert torch.equal(net(x), reference(x))


def test_fit_steps_refuses_a_one_process_trainer_under_torchrun(monkeypatch):
    class OneProcessTrainer:
        def step(self, x):
            raise AssertionError("must not run")

    monkeypatch.setattr(distributed, "current", lambda: World(0, 2))
    with pytest.raises(ValueError, match="OneProcessTrainer trains in one process only.*not torchrun"):
        fit_steps(OneProcessTrainer(), torch.zeros(4, 1, 2, 2), epochs=1, batch_size=2, progress=False)


def test_one_process_scripts_refuse_torchrun_with_one_line(monkeypatch, capsys):
    import argparse

    from pyro_lfbm.harness import cli

    ran = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expected in (("0", 1), ("1", 0)):  # rank 0 says it once, rank 1 stays silent
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_info:
            cli.run_cli(ran.append, argparse.Namespace(threads=0))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == expected
        if expected:
            assert lines[0].startswith("error: ") and "runs in one process only" in lines[0] and "not torchrun" in lines[0]
    assert not ran


# --------------------------------------------------------------------------- two processes


def _launch(args, tmp_path, **kwargs):
    procs = worker.launch(2, ["tests/distributed_worker.py", *args], **kwargs)
    try:
        return [p.wait(timeout=LAUNCH_TIMEOUT) for p in procs], procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _assert_close_states(mine, reference, tol):
    assert list(mine) == list(reference)
    for key, value in reference.items():
        if value.is_floating_point():
            assert torch.allclose(mine[key], value, rtol=tol, atol=tol), (key, (mine[key] - value).abs().max())
        else:
            assert torch.equal(mine[key], value), key


def test_two_processes_train_and_score_as_one(tmp_path):
    """2 gloo processes over the same global batches give the one-process parameters (float64, SGD,
    so that an error in the gradient's scale would show; BatchNorm in the generator; persistent
    chains; a moving average of the weights), the same per-example Langevin noise (the last batch's latents)
    and the same scores."""
    args = ["--out", str(tmp_path / "two"), "--epochs", "3", "--persistent", "--score", "10", "--ema", "0.5"]
    codes, _ = _launch(args, tmp_path)
    assert codes == [0, 0]
    reference = worker.run(worker.build_parser().parse_args(args))
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        _assert_close_states(r["model"], reference["model"], 1e-10)
        _assert_close_states(r["average"], reference["average"], 1e-10)
        assert torch.allclose(r["z_last"], reference["z_last"], rtol=1e-10, atol=1e-10)
        assert [row["loss"] for row in r["history"]] == pytest.approx([row["loss"] for row in reference["history"]], rel=1e-12)
        assert torch.equal(r["chains"]["visited"], reference["chains"]["visited"])
        assert torch.allclose(r["chains"]["values"]["z"], reference["chains"]["values"]["z"], atol=1e-10)
        assert torch.allclose(r["scores"], reference["scores"], rtol=1e-10)
        assert torch.allclose(r["score_z"], reference["score_z"], atol=1e-10)
    # the processes agree exactly (the all-reduced sums are bitwise identical everywhere)
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["model"].values(), ranks[1]["model"].values()))
    # the parameters moved far more than the tolerance (a wrong noise or gradient scheme shows)
    moved = max((reference["model"][k] - reference["initial"][k]).abs().max().item()
                for k, v in reference["initial"].items() if v.is_floating_point())
    assert moved > 1e-5


def _torchrun(args, **popen):
    import subprocess

    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "tests/distributed_worker.py", *args], cwd=worker.ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _wait_for(condition, procs, what):
    import time

    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not condition():
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, f"the run ended before {what}"
        time.sleep(0.05)


def _epoch(path: Path) -> int:
    return torch.load(path, weights_only=False)["epoch"] if path.exists() else 0


def test_a_killed_process_ends_the_job_with_one_line_and_torchrun_resumes_it(tmp_path):
    """SIGKILL one of two processes mid-run: the other stops within seconds with one line (exit 4).
    torchrun resumes both from rank 0's checkpoint; Ctrl-C to torchrun stops them at the same batch
    with one notice and one line, rank 0 saving; a second resume ends where an uninterrupted
    one-process run ends."""
    import signal
    import subprocess
    import time

    checkpoint = tmp_path / "ck.pt"
    epochs = 40
    args = ["--out", str(tmp_path / "run"), "--epochs", str(epochs), "--checkpoint", str(checkpoint), "--cli"]
    procs = worker.launch(2, ["tests/distributed_worker.py", *args], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(checkpoint.exists, procs, "the first checkpoint")  # written by rank 0 after an epoch
        procs[1].kill()
        killed = time.monotonic()
        _, stderr = procs[0].communicate(timeout=60)
        stopped_after = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 4
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: process 0 of 2 lost the others"), stderr
    assert "--resume" in lines[0] and stopped_after < 30
    first = torch.load(checkpoint, weights_only=False)
    assert 1 <= first["epoch"] < epochs and not (tmp_path / "run").exists()  # stopped mid-run, no results

    job = _torchrun([*args, "--resume"])
    try:
        _wait_for(lambda: _epoch(checkpoint) > first["epoch"], [job], "a later checkpoint")
        job.send_signal(signal.SIGINT)  # Ctrl-C: torchrun passes it on to both processes
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith(("Ctrl-C:", "interrupted:", "error:"))]
    assert [line.split(":")[0] for line in ours] == ["Ctrl-C", "interrupted"], stderr[-3000:]
    second = torch.load(checkpoint, weights_only=False)
    assert (second["epoch"], second["batch"]) > (first["epoch"], first["batch"]) and second["epoch"] < epochs
    assert second["history"][: first["epoch"]] == first["history"]  # epochs before the kill were not run again

    job = _torchrun([*args, "--resume"])
    _, stderr = job.communicate(timeout=LAUNCH_TIMEOUT)
    assert job.returncode == 0, stderr[-3000:]
    final = torch.load(tmp_path / "run" / "rank0.pt", weights_only=False)
    assert len(final["history"]) == epochs and final["history"][: second["epoch"]] == second["history"]
    reference = worker.run(worker.build_parser().parse_args(["--out", "-", "--epochs", str(epochs)]))
    _assert_close_states(final["model"], reference["model"], 1e-9)


def test_guide_page_snippet_runs(tmp_path, monkeypatch):
    """The code block of the user-guide page 'More than one process or machine' (docs/guide/distributed.md,
    once a README section) runs as written under plain python (its data-parallel behaviour is what the
    tests above check)."""
    import re

    import pyro

    text = (worker.ROOT / "docs" / "guide" / "distributed.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    pyro.clear_param_store()
    namespace: dict = {}
    exec(compile(block, "docs/guide/distributed.md", "exec"), namespace)
    assert len(namespace["history"].epochs) == 2 and (tmp_path / "runs" / "model.pt").exists()
