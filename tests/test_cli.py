import os
from pathlib import Path

import pytest

from pyro_lfbm.harness.cli import UsageError, parse_overrides, staged_output


def test_parse_overrides_types():
    assert parse_overrides(["latent_dim=16", "batch_norm=false", "sigma=0.5", "prior=flow", "flow-width=32"]) == {
        "latent_dim": 16, "batch_norm": False, "sigma": 0.5, "prior": "flow", "flow_width": 32,
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["latent_dim"])


def test_staged_output_is_all_or_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "half.csv").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind
    with staged_output(out) as stage:
        (stage / "metrics.csv").write_text("ok")
    assert (out / "metrics.csv").read_text() == "ok"


def test_sigterm_outside_training_is_one_line_exit_143_and_removes_the_created_folders(tmp_path):
    """In a subprocess with SIGTERM's default handler (the one a scheduler meets; before the fix it
    killed the process, exit -15): a SIGTERM while no training runs (e.g. scoring) stops at once."""
    import signal
    import subprocess
    import sys

    code = (
        "import argparse, signal\n"
        "from pyro_lfbm.harness.cli import make_dirs, run_cli\n"
        "def main(args):\n"
        f"    make_dirs({str(tmp_path / 'out' / 'run')!r})\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    raise AssertionError('SIGTERM did not stop the run')\n"
        "try:\n"
        "    run_cli(main, argparse.Namespace(resume=False))\n"
        "finally:\n"
        "    print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"  # put back
    )
    job = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1],
                         preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    assert job.returncode == 143, job.stderr[-2000:]
    lines = job.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM): ") and "--resume" in lines[0], job.stderr
    assert job.stdout.strip() == "True"
    assert list(tmp_path.iterdir()) == []


def test_a_claimed_folder_is_refused_until_its_holder_dies(tmp_path, capsys):
    import argparse
    import subprocess
    import sys

    from pyro_lfbm.harness.cli import claim_file, refuse_finished_run, run_cli

    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pyro_lfbm.harness.locking import run_claim\n"
        f"with run_claim({str(claim_file(folder))!r}) as mine:\n    print(mine, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "True"
        with pytest.raises(SystemExit) as exit_:
            run_cli(lambda args: refuse_finished_run(folder, "run.json", False), argparse.Namespace())
        assert exit_.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: --out: {folder} is in use by another run (process {holder.pid} on ")
        assert line.endswith("wait for it to end, or choose another --out")
        refuse_finished_run(folder, "run.json", False)  # outside run_cli nothing is claimed
    finally:
        holder.kill()
        holder.communicate()
    assert claim_file(folder).exists()  # left by the killed holder, held by no one

    def main(args):
        refuse_finished_run(folder, "run.json", False)
        refuse_finished_run(folder, "run.json", False)  # claimed already by this command: a no-op
        assert claim_file(folder).read_text().startswith(f"process {os.getpid()} on ")
        folder.mkdir()

    run_cli(main, argparse.Namespace())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the claim went with the command


def test_run_records_name_the_code_commit_and_whether_it_was_edited(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from pyro_lfbm.harness import cli

    if shutil.which("git") is None or not (Path(cli.__file__).resolve().parents[2] / ".git").exists():
        pytest.skip("needs a git checkout of the package")
    root = Path(cli.__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    code = cli.run_record()["code"]
    assert code in (head, head + "-dirty")
    edited = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True).stdout.strip())
    assert code.endswith("-dirty") == edited

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(cli.subprocess, "run", no_git)
    assert cli.code_version() is None
