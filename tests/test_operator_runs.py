"""Runs an operator can trust on a shared cluster (issue 23), tried on tiny ``anomaly.py`` runs the
way an operator meets them: exit code, stderr, what is left on disk, and whether ``--resume`` reaches
the uninterrupted result exactly.

* SIGTERM (what Slurm and Kubernetes send before killing a job) stops like Ctrl-C: at a batch
  boundary, and during a checkpoint save (once: the save completes; twice: it is abandoned and the
  previous checkpoint stays); exit code 143, one closing line, ``--resume`` exact.
* A full disk while writing a checkpoint or the scores: one line (no space left on device, where,
  what to do), exit code 1, and the folders the run created are gone (a patched writer, and a real
  tmpfs where this machine lets a test mount one).
* A checkpoint with damaged tensor data is refused as unreadable (its zip records' checksums).
* Two runs on the same ``--out`` / ``--checkpoint-dir`` at once: the second is refused in one line;
  a claim of a run killed with ``kill -9`` does not block.

Runs take place in this process (``main`` under :func:`~pyro_lfbm.harness.cli.run_cli`, as the
script's ``__main__`` does) or, where a second process matters, as subprocesses. Every test that
sends a signal installs the default handlers itself (in this process and in its subprocesses), so
the file passes when pytest runs in the background (``nohup``, ``&``: SIGINT ignored).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from pyro_lfbm.harness.cli import run_cli
from pyro_lfbm.train.checkpoint import load_checkpoint
from tests.conftest import REPO, FullDisk, experiment_script, require_mnist

ARGS = ["--preset", "tiny", "--no-progress", "--chain", "eager", "--epochs", "3", "--limit-train", "200",
        "--limit-test", "60", "--test-steps", "3", "--batchnorm", "eval"]  # 4 batches of 50 per epoch
CKPT = "lfbm-flow-heldout7-seed1-tiny.pt"
RUN = "heldout7-flow-seed1"
SUBPROCESS_TIMEOUT = 300  # a tiny run takes seconds; a busy shared machine can stretch that a lot


def argv(out: Path, *extra: str) -> list:
    return [*ARGS, "--data-root", str(require_mnist()), "--out", str(out), *extra]


def run_here(out: Path, *extra: str) -> int:
    """``anomaly.py`` in this process; its exit code."""
    module = experiment_script("anomaly")
    try:
        run_cli(module.main, module.build_parser().parse_args(argv(out, *extra)))
    except SystemExit as exit_:
        return exit_.code
    return 0


def results(out: Path) -> tuple:
    """What must agree exactly between an uninterrupted and an interrupted-and-resumed run."""
    folder = out / RUN
    metrics = pd.read_csv(folder / "metrics.csv")
    history = pd.read_csv(folder / "history.csv")
    scores = torch.load(folder / "scores.pt", weights_only=False)
    return (metrics[["auprc", "ap", "auroc"]].values.tolist(), history.drop(columns=["seconds", "examples_per_second"]).values.tolist(),
            _as_lists(scores))


def _as_lists(value):
    """Tensors (in nested dicts, e.g. scores.pt's per-BatchNorm-mode scores) as nested lists."""
    return {k: _as_lists(v) for k, v in value.items()} if isinstance(value, dict) else value.tolist()


def tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def our_lines(err: str) -> list:
    return err.strip().splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run_here(out) == 0
    return results(out)


def _sigterm_not_handled(signum, frame):
    raise AssertionError("SIGTERM reached the test's own handler: the run did not take it over")


@pytest.fixture
def default_signals():
    """The handlers of a foreground run, whatever the shell that started pytest set (``nohup`` and
    ``&`` leave SIGINT ignored), except that a SIGTERM nothing in the run takes over fails the test
    instead of killing pytest; put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_not_handled)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _default_signals_in_child():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # python then installs its Ctrl-C handler as usual
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# A subprocess running anomaly.py whose training pauses after update PAUSE_AT_STEP (the loop is then
# at a batch boundary) and prints "paused", until the file GATE exists.
PAUSING = textwrap.dedent("""
    import os, runpy, sys, time
    from pathlib import Path
    from pyro_lfbm.train.svi import SVITrainer

    pause_at, gate = int(os.environ["PAUSE_AT_STEP"]), Path(os.environ["GATE"])
    real_step, calls = SVITrainer.step, [0]

    def step(self, *batch):
        metrics = real_step(self, *batch)
        calls[0] += 1
        if calls[0] == pause_at:
            print("paused", flush=True)
            deadline = time.monotonic() + 90
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return metrics

    SVITrainer.step = step
    sys.argv = ["experiments/anomaly.py", *sys.argv[1:]]
    runpy.run_path("experiments/anomaly.py", run_name="__main__")
""")


def start_paused(out: Path, pause_at: int, gate: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PAUSE_AT_STEP": str(pause_at), "GATE": str(gate), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    job = subprocess.Popen([sys.executable, "-c", PAUSING, *argv(out, *extra)], cwd=REPO, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_signals_in_child)
    line = job.stdout.readline()  # blocks until the pause (or the end of a failed run)
    if line.strip() != "paused":
        job.kill()
        _, err = job.communicate()
        pytest.fail(f"the run did not reach its pause: {line!r} {err[-2000:]}")
    return job


def finish(job: subprocess.Popen) -> tuple:
    try:
        out, err = job.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    return job.returncode, out, err


# --------------------------------------------------------------------------- 1. SIGTERM


def test_sigterm_at_a_batch_boundary_stops_with_a_checkpoint_and_resume_is_exact(tmp_path, reference):
    """A real SIGTERM from outside (as ``scancel`` or ``kubectl delete`` send it) while update 6 of
    12 has just finished: exit code 143 (not death by signal, -15), the notice and one closing
    line, a checkpoint at epoch 1 + 2 batches, no results; ``--resume`` reaches the uninterrupted
    numbers exactly."""
    out, gate = tmp_path / "cut", tmp_path / "gate"
    job = start_paused(out, 6, gate)
    job.send_signal(signal.SIGTERM)
    gate.touch()
    code, _, err = finish(job)
    assert code == 143, err[-3000:]
    lines = our_lines(err)
    assert len(lines) == 2 and lines[0].startswith("SIGTERM: finishing the current update"), err[-3000:]
    assert lines[1].startswith("terminated (SIGTERM):") and "--resume" in lines[1]
    ckpt = load_checkpoint(out / "checkpoints" / CKPT)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)
    assert tree(out) == {"checkpoints", f"checkpoints/{CKPT}"}  # no results, no lock, no temporary
    assert run_here(out, "--resume") == 0
    assert results(out) == reference



def patch_torch_save(monkeypatch, call: int, *, sigterms: int = 0, room: int | None = None) -> None:
    """The ``call``-th ``torch.save`` (1 = the first) first raises SIGTERM ``sigterms`` times, and
    with ``room`` writes through a disk with that many bytes free."""
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != call:
            return real(obj, f, *args, **kwargs)
        for _ in range(sigterms):
            signal.raise_signal(signal.SIGTERM)
        if room is None:
            return real(obj, f, *args, **kwargs)
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        try:
            return real(obj, FullDisk(handle, room), *args, **kwargs)
        finally:
            if handle is not f:
                handle.close()

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("sigterms, kept", [(1, (2, 0)), (2, (1, 0))])
def test_sigterm_during_a_checkpoint_save_then_resume_is_exact(tmp_path, reference, default_signals, monkeypatch,
                                                               capsys, sigterms, kept):
    """SIGTERM inside the save of epoch 2's checkpoint: once, the save completes and the run stops
    there; twice, the save is abandoned (no temporary left) and epoch 1's checkpoint stays. Either
    way exit code 143 and ``--resume`` reaches the uninterrupted numbers."""
    out = tmp_path / "cut"
    patch_torch_save(monkeypatch, call=2, sigterms=sigterms)
    capsys.readouterr()
    assert run_here(out) == 143
    lines = our_lines(capsys.readouterr().err)
    assert lines[-1].startswith("terminated (SIGTERM):") and "--resume" in lines[-1] and len(lines) == 2, lines
    monkeypatch.undo()
    ckpt = load_checkpoint(out / "checkpoints" / CKPT)
    assert (ckpt["epoch"], ckpt["batch"]) == kept
    assert tree(out) == {"checkpoints", f"checkpoints/{CKPT}"}
    assert run_here(out, "--resume") == 0
    assert results(out) == reference


# --------------------------------------------------------------------------- 2. full disk


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    patch_torch_save(monkeypatch, call=1, room=10_000)
    capsys.readouterr()
    assert run_here(out) == 1
    lines = our_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: no space left on device while writing {out / 'checkpoints' / CKPT}; ")
    assert "--checkpoint-dir" in lines[0] and "--resume" in lines[0]
    assert tree(tmp_path) == set()  # --out and its checkpoints folder were created by the run: removed


def test_a_full_disk_while_saving_the_scores_keeps_the_checkpoint_and_resume_finishes(tmp_path, reference, monkeypatch,
                                                                                     capsys):
    out = tmp_path / "run"
    patch_torch_save(monkeypatch, call=4, room=100)  # after the 3 checkpoints: scores.pt
    capsys.readouterr()
    assert run_here(out) == 1
    lines = our_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on device while writing {out / RUN / 'scores.pt'}; "), lines
    monkeypatch.undo()
    assert tree(out) == {"checkpoints", f"checkpoints/{CKPT}"}  # no half-written results, no staging folder
    assert run_here(out, "--resume") == 0
    assert results(out) == reference


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("where", ["checkpoint", "results"])
def test_a_real_full_disk_on_a_tmpfs_is_one_line_and_leaves_it_empty(tmp_path, where):
    """``--out`` on a tmpfs in a private mount namespace. ``checkpoint``: 256 KiB, the first
    checkpoint (about 0.7 MB) does not fit. ``results``: 8 KiB (two pages) with the checkpoints
    elsewhere; the result files do not fit."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here (needs unshare -Urm and mount)")
    disk = tmp_path / "disk"
    disk.mkdir()
    size, extra, written = "256k", [], disk / "run" / "checkpoints" / CKPT
    if where == "results":
        size, extra, written = "8k", ["--checkpoint-dir", str(tmp_path / "checkpoints")], disk / "run" / RUN
    command = " ".join([sys.executable, "experiments/anomaly.py", *argv(disk / "run", *extra)])
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk} || exit 99; {command}; code=$?; "
              f"echo left: $(find {disk} -mindepth 1); exit $code")
    job = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=SUBPROCESS_TIMEOUT,
                         preexec_fn=_default_signals_in_child)
    assert job.returncode == 1, job.stderr[-3000:]
    lines = our_lines(job.stderr)
    assert len(lines) == 1, job.stderr[-3000:]
    assert lines[0].startswith(f"error: no space left on device while writing {written}"), lines[0]
    assert "--out / --checkpoint-dir at another disk" in lines[0]
    assert job.stdout.strip().splitlines()[-1] == "left:"  # nothing: no folder, no temporary, no lock
    if where == "results":  # the trained model is kept for --resume
        assert load_checkpoint(tmp_path / "checkpoints" / CKPT)["epoch"] == 3


# --------------------------------------------------------------------------- 3. damaged checkpoint


def test_a_checkpoint_with_damaged_tensor_data_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_here(out, "--epochs", "1") == 0
    shutil.rmtree(out / RUN)
    path = out / "checkpoints" / CKPT
    with zipfile.ZipFile(path) as archive:  # the largest tensor record
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset  # its local header: 30 bytes, then the name and the extra field
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + int.from_bytes(data[local + 28:local + 30], "little")
    middle = start + info.file_size // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=False)  # torch itself does not notice
    capsys.readouterr()
    assert run_here(out, "--resume", "--epochs", "2") == 2
    lines = our_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {path} is unreadable (checksum mismatch in record "), lines
    assert "delete it or use another --checkpoint-dir" in lines[0]


# --------------------------------------------------------------------------- 4. two runs at once


def test_a_second_run_on_the_same_folders_is_refused_while_the_first_runs(tmp_path, capsys):
    out, gate = tmp_path / "run", tmp_path / "gate"
    first = start_paused(out, 2, gate)
    try:
        capsys.readouterr()
        assert run_here(out) == 2  # same --out and --checkpoint-dir
        lines = our_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(f"error: --out: {out / RUN} is in use by another run (process "
                                                       f"{first.pid} on "), lines
        assert run_here(tmp_path / "elsewhere", "--checkpoint-dir", str(out / "checkpoints")) == 2  # same checkpoint
        lines = our_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(f"error: --checkpoint-dir: {out / 'checkpoints' / CKPT} is in use "
                                                       f"by another run (process {first.pid} on "), lines
        assert not (tmp_path / "elsewhere").exists()
    finally:
        gate.touch()
    code, _, err = finish(first)
    assert code == 0, err[-3000:]
    assert (out / RUN / "run.json").exists()
    assert not [p for p in tree(out) if p.endswith(".lock")]  # the claims went with the run
    assert run_here(out) == 2  # and a finished run is still only replaced with --overwrite
    assert "already holds a finished run" in capsys.readouterr().err


def test_the_claim_of_a_killed_run_does_not_block_and_resume_is_exact(tmp_path, reference):
    """``kill -9`` in epoch 2: the lock files stay behind, but no process holds them; the next run
    takes them over, resumes from epoch 1's checkpoint to the uninterrupted numbers, and removes them."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    job = start_paused(out, 6, gate)
    job.kill()
    finish(job)
    assert {f".{RUN}.lock", f"checkpoints/.{CKPT}.lock"} <= tree(out)
    assert run_here(out, "--resume") == 0
    assert results(out) == reference
    assert not [p for p in tree(out) if p.endswith(".lock")]
