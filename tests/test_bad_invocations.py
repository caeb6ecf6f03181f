"""Bad command lines across the experiment scripts (issue 14): each one fails before any work with
exactly one line on stderr, exit code 2 (3 when training becomes non-finite), and leaves no file
or folder behind. Scripts run in this process (``main`` under :func:`pyro_lfbm.harness.cli.run_cli`, as
their ``__main__`` does), from an empty working folder, so their default outputs would land there."""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from pyro_lfbm.harness.cli import run_cli
from tests.conftest import REPO, data_root, experiment_script

TINY = ["--preset", "tiny", "--no-progress"]
FAKE = ["--dataset", "fake", "--fake-shape", "1,28,28", *TINY]
MNIST = "needs-mnist"  # marks the cases that read the real data set

script = experiment_script


def tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# (script, argv, exit code, text the one line must hold). {tmp} is the test's folder; the working
# folder is {tmp}/work; {file} is an existing ordinary file; {junk} a file of random bytes.
CASES = [
    # anomaly.py
    ("anomaly", ["--heldout", "10"], 2, "digit 0-9"),
    ("anomaly", ["--heldout", "seven"], 2, "--heldout"),
    ("anomaly", ["--limit-train", "10", *TINY], 2, "--limit-train 10"),
    ("anomaly", ["--limit-test", "0", *TINY], 2, "--limit-test"),
    ("anomaly", ["--limit-test", "1", *TINY], 2, "--limit-test"),
    ("anomaly", ["--iwae-particles", "5", *TINY], 2, "--iwae-particles draws z from an encoder"),
    ("anomaly", ["--iwae-particles", "5", "--guide", "encoder", "--batchnorm", "train", *TINY], 2, "--batchnorm eval"),
    ("anomaly", ["--iwae-particles", "5", "--guide", "encoder", "--batchnorm", "recalibrated", *TINY], 2, "--batchnorm eval"),
    ("anomaly", ["--batchnorm", "running", *TINY], 2, "--batchnorm"),
    ("anomaly", ["--set", "layer_dims=8,2,2", *TINY], 2, "add --model hierarchical"),
    ("anomaly", ["--model", "hierarchical", "--set", "layer_dims=8,x", *TINY], 2, "separated by commas"),
    ("anomaly", ["--model", "hierarchical", "--set", "layer_dims=8,2", *TINY], 2, "three positive integers"),
    ("anomaly", ["--set", "layer_prior=top-down", *TINY], 2, "add --model hierarchical"),
    ("anomaly", ["--encoder", "conditional", "--guide", "encoder", *TINY], 2, "add --model hierarchical"),
    ("anomaly", ["--encoder", "conditional", "--model", "hierarchical", "--guide", "langevin", *TINY], 2, "add --guide encoder"),
    ("anomaly", ["--encoder", "conditional", "--model", "hierarchical", "--guide", "encoder", "--iwae-particles", "4",
                 "--set", "layer_prior=top-down", "--llr-layers", "1", "--batchnorm", "eval", *TINY], 2, "use --encoder mean-field"),
    ("anomaly", ["--encoder", "ladder", *TINY], 2, "--encoder"),
    ("anomaly", ["--model", "hierarchical", "--set", "layer_prior=chain", *TINY], 2, "unknown layer_prior 'chain'; choose one of joint, top-down"),
    ("anomaly", ["--model", "hierarchical", "--prior", "ebm", "--set", "layer_prior=top-down", *TINY], 2, "not ebm"),
    ("anomaly", ["--set", "sigma=0.1", *TINY], 2, "use --sigma"),
    ("anomaly", ["--iwae-particles", "-1"], 2, "--iwae-particles"),
    ("anomaly", ["--refit-epochs", "3", "--prior", "gaussian", *TINY], 2, "use --prior flow"),
    ("anomaly", ["--refit-epochs", "3", "--prior", "ebm", *TINY], 2, "use --prior flow"),
    ("anomaly", ["--refit-epochs", "-1"], 2, "--refit-epochs"),
    ("anomaly", ["--ema", "1.5", *TINY], 2, "--ema must be a decay in (0, 1), e.g. 0.999, or 0 for the last weights"),
    ("anomaly", ["--ema", "-0.5"], 2, "--ema"),
    ("anomaly", ["--llr-layers", "1", *TINY], 2, "add --model hierarchical"),
    ("anomaly", ["--llr-layers", "3", "--model", "hierarchical", *TINY], 2, "from 1 to 2"),
    ("anomaly", ["--llr-layers", "0", "--model", "hierarchical", *TINY], 2, "--llr-layers"),
    ("anomaly", ["--test-steps", "-5", *TINY], 2, "--test-steps"),
    ("anomaly", ["--test-steps", "0", *TINY], 2, "no encoder"),
    ("anomaly", ["--guide", "langevin", "--limit-train", "100"], 2, "--preset cpu"),
    ("anomaly", ["--test-batch-size", "1", "--batchnorm", "train", *TINY], 2, "--test-batch-size"),
    ("anomaly", ["--lr", "-1"], 2, "--lr"),
    ("anomaly", ["--lr", "nan"], 2, "--lr"),
    ("anomaly", ["--lr-decay", "1.5"], 2, "--lr-decay"),
    ("anomaly", ["--lr-decay", "0"], 2, "--lr-decay"),
    ("anomaly", ["--sigma", "0"], 2, "--sigma"),
    ("anomaly", ["--set", "latent_dim=abc", *TINY], 2, "latent_dim"),
    ("anomaly", ["--set", "latent_dim=0", *TINY], 2, "latent_dim"),
    ("anomaly", ["--set", "batch_norm=maybe", *TINY], 2, "batch_norm"),
    ("anomaly", ["--set", "no_such_field=3", *TINY], 2, "no_such_field"),
    ("anomaly", ["--set", "prior=gaussian", *TINY], 2, "--prior"),
    ("anomaly", ["--set", "latent_dim", *TINY], 2, "KEY=VALUE"),
    ("anomaly", ["--epochs", "0"], 2, "--epochs"),
    ("anomaly", ["--epochs", "-1"], 2, "--epochs"),
    ("anomaly", ["--seed", "-3"], 2, "--seed"),
    ("anomaly", ["--threads", "-1"], 2, "--threads"),
    ("anomaly", ["--out", "{file}", *TINY], 2, "--out"),
    ("anomaly", ["--out", "/proc/lfbm-out", *TINY], 2, "--out"),
    ("anomaly", ["--out", "/dev/null/out", *TINY], 2, "--out"),
    ("anomaly", ["--checkpoint-dir", "/proc/lfbm-ckpt", *TINY], 2, "--checkpoint-dir"),
    ("anomaly", ["--data-root", "{tmp}/no-data-here", *TINY], 2, "--data-root"),
    ("anomaly", ["--resume", *TINY], 2, "no checkpoint to resume"),
    ("anomaly", ["--eval-only", "{tmp}/missing.pt", *TINY], 2, "--eval-only"),
    ("anomaly", ["--eval-only", "{file}", "--resume", *TINY], 2, "--resume"),
    ("anomaly", ["--eval-only", "{file}", "--epochs", "3", *TINY], 2, "--epochs"),
    ("anomaly", ["--out", "{tmp}/done", *TINY], 2, "--overwrite"),  # holds a finished run
    ("anomaly", ["--out", "{tmp}/unfinished", *TINY], 2, "pass --resume to continue it"),  # holds a checkpoint
    ("anomaly", ["--no-such-option"], 2, "unrecognized"),
    ("anomaly", ["--eval-only", "{junk}", "--limit-train", "100", "--limit-test", "20", *TINY, MNIST], 2, "unreadable"),
    ("anomaly", ["--lr", "1e6", "--limit-train", "100", "--limit-test", "20", "--test-steps", "2", "--batchnorm", "eval",
                 *TINY, MNIST], 3, "training diverged at epoch 1"),
    # anomaly_table.py
    ("anomaly_table", ["--digits", "7", "11"], 2, "digit 0-9"),
    ("anomaly_table", ["--report-only", "--out", "{tmp}/empty-table"], 2, "--report-only"),
    ("anomaly_table", ["--limit-train", "5", *TINY], 2, "--limit-train 5"),
    ("anomaly_table", ["--resume"], 2, "unrecognized"),
    ("anomaly_table", ["--out", "{tmp}/corrupt-table", "--digits", "7", "--priors", "flow", *TINY], 2, "table.csv"),
    # compare_inference.py
    ("compare_inference", ["--train-size", "10", *TINY], 2, "--train-size 10"),
    ("compare_inference", ["--reference-images", "1"], 2, "--reference-images"),
    ("compare_inference", ["--langevin-steps", "5", "0"], 2, "--langevin-steps"),
    ("compare_inference", ["--step-size", "0"], 2, "--step-size"),
    ("compare_inference", ["--anomaly-test-size", "1", *TINY], 2, "--anomaly-test-size"),
    ("compare_inference", ["--resume", *TINY], 2, "no checkpoint to resume"),
    # glf.py / coopflow.py
    ("glf", ["--n-train", "10", *FAKE], 2, "--n-train 10"),
    ("glf", ["--num-samples", "0", *FAKE], 2, "--num-samples"),
    ("glf", ["--epochs", "0", *FAKE], 2, "--epochs"),
    ("glf", ["--dataset", "imagenet", *TINY], 2, "--dataset"),
    ("glf", ["--fake-shape", "2,28,28", "--dataset", "fake", *TINY], 2, "--fake-shape"),
    ("glf", ["--resume", *FAKE], 2, "no checkpoint to resume"),
    ("glf", ["--out", "{tmp}/unfinished/glf", *FAKE], 2, "pass --resume to continue it"),
    ("coopflow", ["--epochs", "-1", *FAKE], 2, "--epochs"),
    ("coopflow", ["--langevin-steps", "0", *FAKE], 2, "--langevin-steps"),
    ("coopflow", ["--step-size", "-0.1", *FAKE], 2, "--step-size"),
    ("coopflow", ["--dataset", "mnist", "--preset", "paper", "--no-progress"], 2, "32x32"),
    # generation_table.py
    ("generation_table", [], 2, "stage"),
    ("generation_table", ["train", "--models", "glf"], 2, "--models"),
    ("generation_table", ["train", "--n-train", "10", *TINY], 2, "--n-train 10"),
    ("generation_table", ["table", "--runs-dir", "{tmp}/no-runs"], 2, "--runs-dir"),
    ("generation_table", ["table", "--runs-dir", "{tmp}/corrupt-runs"], 2, "metrics.json"),
    # inpainting.py, recovery.py, recovery_table.py, synthesis.py
    ("inpainting", ["--hole", "1,2", *FAKE], 2, "--hole"),
    ("inpainting", ["--hole", "20,20,20", *FAKE], 2, "--hole"),
    ("inpainting", ["--completions", "0", *FAKE], 2, "--completions"),
    ("inpainting", ["--n-train", "10", *FAKE], 2, "--n-train 10"),
    ("inpainting", ["--cache-dir", "{file}", *FAKE], 2, "--cache-dir"),
    ("recovery", ["--mask", "single", "--level", "70", *FAKE], 2, "70"),
    ("recovery", ["--level", "0", *FAKE], 2, "--level"),
    ("recovery", ["--eval-step-size", "0", *FAKE], 2, "--eval-step-size"),
    ("recovery", ["--out", "{tmp}/recorded", "--mask", "single", "--level", "40", *FAKE], 2, "--overwrite"),
    ("recovery_table", ["--settings", "salt-pepper-50", "bogus-1", *FAKE], 2, "bogus"),
    ("recovery_table", ["--datasets", "mnist", "nope", *TINY], 2, "nope"),
    ("recovery_table", ["--report-only", "--out", "{tmp}/corrupt-records", *FAKE], 2, "fake-single-40-flow-s1.json"),
    ("synthesis", ["--num-samples", "1", *FAKE], 2, "--num-samples"),
    ("synthesis", ["--test-steps", "0", *FAKE], 2, "--test-steps"),
    ("synthesis", ["--epochs", "0", *FAKE], 2, "--epochs"),
    ("synthesis", ["--resume", *FAKE], 2, "unrecognized"),  # these scripts always resume
    ("guide_step_size", ["--steps", "0.1", "fast"], 2, "--steps"),
    ("guide_step_size", ["--target", "1.5"], 2, "--target"),
    ("guide_step_size", ["--epochs", "0"], 2, "--epochs"),
    # anomaly_decision.py
    ("anomaly_decision", ["{tmp}/no-such-run"], 2, "not a finished anomaly run"),
    ("anomaly_decision", ["{tmp}/done/heldout7-flow-seed1"], 2, "no scores.pt"),
    # compare_samplers.py
    ("compare_samplers", ["--samplers", "hmc"], 2, "--samplers"),
    ("compare_samplers", ["--heldout", "10"], 2, "digit 0-9"),
    ("compare_samplers", ["--iwae-particles", "0"], 2, "--iwae-particles"),
    ("compare_samplers", ["--limit-train", "10", *TINY], 2, "--limit-train 10"),
    ("compare_samplers", ["--out", "{file}", *TINY], 2, "--out"),
    ("compare_samplers", ["--data-root", "{tmp}/no-data-here", *TINY], 2, "--data-root"),
    ("compare_samplers", ["--resume", *TINY], 2, "no checkpoint to resume"),
]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty working folder, a private cache, and the files some cases point to."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYRO_LFBM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "file").write_text("an ordinary file\n")
    (tmp_path / "junk").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "done" / "heldout7-flow-seed1").mkdir(parents=True)
    (tmp_path / "done" / "heldout7-flow-seed1" / "run.json").write_text("{}")
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    (tmp_path / "unfinished" / "checkpoints" / "lfbm-flow-heldout7-seed1-tiny.pt").write_bytes(b"an earlier run")
    (tmp_path / "unfinished" / "checkpoints" / "glf-glf.pt").write_bytes(b"an earlier run")
    (tmp_path / "corrupt-table").mkdir()
    (tmp_path / "corrupt-table" / "table.csv").write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    (tmp_path / "corrupt-runs" / "mnist" / "glf").mkdir(parents=True)
    (tmp_path / "corrupt-runs" / "mnist" / "glf" / "metrics.json").write_text("{not json")
    (tmp_path / "recorded" / "runs").mkdir(parents=True)
    (tmp_path / "recorded" / "runs" / "fake-single-40-flow-s1.json").write_text("{}")
    (tmp_path / "corrupt-records" / "runs").mkdir(parents=True)
    (tmp_path / "corrupt-records" / "runs" / "fake-single-40-flow-s1.json").write_text("{truncated")
    return tmp_path


@pytest.mark.parametrize("name, argv, code, text", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_invocation_is_one_line_and_leaves_nothing(folder, capsys, name, argv, code, text):
    if MNIST in argv:
        root = data_root()
        if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            pytest.skip("MNIST files not found")
        argv = [a for a in argv if a != MNIST] + ["--data-root", str(root)]
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    argv = [a.format(tmp=folder, file=folder / "file", junk=folder / "junk") for a in argv]
    module = script(name)
    before = tree(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(module.main, module.build_parser().parse_args(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == code, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert text in lines[0], lines[0]
    assert tree(folder) == before  # no file, no folder, no checkpoint, no claim left behind


SCRIPTS = {"anomaly", "anomaly_decision", "anomaly_table", "compare_inference", "compare_samplers", "coopflow", "generation_table", "glf", "guide_step_size",
           "inpainting", "recovery", "recovery_table", "synthesis"}


def test_the_table_has_forty_cases_across_every_script():
    assert len(CASES) >= 40
    assert {c[0] for c in CASES} == SCRIPTS
    on_disk = {p.stem for p in (REPO / "experiments").glob("*.py") if not p.stem.startswith("bench_")}
    assert on_disk == SCRIPTS, "a new script needs its bad invocations in CASES"
    for path in (REPO / "experiments").glob("*.py"):  # every script, the benchmarks included, uses the one wrapper
        assert "run_cli(" in path.read_text(), f"{path.name} bypasses pyro_lfbm.harness.cli.run_cli"


def test_threads_default_to_one_and_help_says_why():
    parser = script("anomaly").build_parser()
    assert parser.parse_args([]).threads == 1
    assert "10x" in parser.format_help().replace("\n", " ")


# --------------------------------------------------------------------------- Ctrl-C at the command line


def test_ctrl_c_at_the_command_line_then_resume_gives_the_uninterrupted_results(tmp_path, capsys, monkeypatch):
    """SIGINT during the first checkpoint save of ``anomaly.py``: exit code 130, a checkpoint and no
    results; ``--resume`` then writes exactly the numbers of an uninterrupted run."""
    from pyro_lfbm.train import loop as step_training

    root = data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("MNIST files not found")
    module = script("anomaly")

    def run(out, *extra):
        argv = ["--epochs", "3", "--limit-train", "200", "--limit-test", "60", "--test-steps", "3", "--batchnorm", "eval",
                "--data-root", str(root), "--out", str(out), *TINY, *extra]
        try:
            run_cli(module.main, module.build_parser().parse_args(argv))
        except SystemExit as exit_:
            return exit_.code
        return 0

    assert run(tmp_path / "reference") == 0
    real_save = step_training.save_checkpoint
    monkeypatch.setattr(step_training, "save_checkpoint",
                        lambda path, **state: (signal.raise_signal(signal.SIGINT), real_save(path, **state))[1])
    capsys.readouterr()
    assert run(tmp_path / "cut") == 130
    assert "--resume" in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.undo()
    assert (tmp_path / "cut" / "checkpoints" / "lfbm-flow-heldout7-seed1-tiny.pt").exists()
    assert not (tmp_path / "cut" / "heldout7-flow-seed1").exists()
    assert run(tmp_path / "cut", "--resume") == 0
    metrics = [pd.read_csv(tmp_path / name / "heldout7-flow-seed1" / "metrics.csv") for name in ("reference", "cut")]
    histories = [pd.read_csv(tmp_path / name / "heldout7-flow-seed1" / "history.csv") for name in ("reference", "cut")]
    assert list(histories[1].epoch) == [1, 2, 3]
    assert histories[0].loss.tolist() == histories[1].loss.tolist()
    assert metrics[0].auprc.tolist() == metrics[1].auprc.tolist()


def _out_defaults(parser):
    """(prog, default of --out / --runs-dir) of a parser and of its sub-parsers."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _out_defaults(sub)
        elif action.dest in ("out", "runs_dir", "checkpoint_dir") and action.default is not None:
            found.append((parser.prog, action.dest, action.default))
    return found


def test_new_runs_go_to_the_ignored_runs_folder_never_to_the_committed_results():
    """Issue 14 item 5: the README's main command in a fresh clone must not rewrite results/."""
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/runs/" in ignored
    for name in SCRIPTS - {"guide_step_size"}:  # (it writes nothing)
        defaults = _out_defaults(script(name).build_parser())
        assert defaults, name
        for prog, dest, default in defaults:
            assert str(default).startswith("runs/"), (name, dest, default)
    assert script("anomaly").build_parser().parse_args([]).out == "runs/anomaly"
