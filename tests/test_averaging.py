"""Polyak averaging of the trained weights (pyro_lfbm.train.averaging, ``OptimConfig.ema_decay``, ``--ema``):
the average is the exponential moving average written out by hand, it leaves the training trajectory
bit for bit as it was, it survives checkpoints and resumes exactly, and a run scores the averaged model."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_lfbm.train import ExponentialAverage, build, get_preset, isolated, load_checkpoint, train_recipe, trainer_state
from pyro_lfbm.train.checkpoint import CheckpointError, Checkpointing
from pyro_lfbm.train.svi import fit
from pyro_lfbm.tasks.anomaly import load_trained_model
from tests.conftest import REPO, require_mnist

# these tiny runs are far shorter than their averages span (the warning has its own test below)
pytestmark = pytest.mark.filterwarnings("ignore:the weight average")


def blobs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.nn.functional.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=28, mode="bilinear"))


def tiny(ema=None, kind="encoder", epochs=2):
    preset = get_preset("tiny", "flow", kind)
    learn = replace(preset.learn, batch_size=10, epochs=epochs, num_steps=2,
                    optim=replace(preset.learn.optim, ema_decay=ema))
    return replace(preset, learn=learn)


def test_the_average_is_the_exponential_moving_average_written_out():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay = 0.9
    average = ExponentialAverage([net], decay)
    states = [{k: v.clone() for k, v in net.state_dict().items()}]
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # moves the running statistics and num_batches_tracked
        average.update([net])
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    n = len(states) - 1
    for name, got in average.averages[0].items():
        want = decay ** n * states[0][name] + sum((1 - decay) * decay ** (n - k) * states[k][name] for k in range(1, n + 1))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert "1.num_batches_tracked" not in average.averages[0]  # integer buffers are not averaged
    average.copy_to([net])
    assert torch.equal(net.state_dict()["0.weight"], average.averages[0]["0.weight"])
    assert int(net.state_dict()["1.num_batches_tracked"]) == 5


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9", math.nan])
def test_a_decay_outside_zero_one_is_refused_in_one_line(decay):
    with pytest.raises(ValueError, match="decay") as err:
        ExponentialAverage([torch.nn.Linear(2, 2)], decay)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="ema_decay"):
        tiny(ema=decay).check()


@pytest.mark.parametrize("kind", ["encoder", "langevin"])
def test_averaging_leaves_the_trajectory_as_it_was_and_ends_on_the_average(kind, tmp_path):
    x = blobs(40)
    finals = {}
    for ema in (None, 0.8):
        with isolated(seed=3):
            recipe = build(tiny(ema, kind))
            history = train_recipe(recipe, x, seed=3, checkpoint=Checkpointing(tmp_path / f"{ema}.pt"), progress=False)
            finals[ema] = (recipe, history)
    (plain, plain_history), (averaged, averaged_history) = finals[None], finals[0.8]
    assert [row["loss"] for row in plain_history.epochs] == [row["loss"] for row in averaged_history.epochs]
    assert plain.trainer.average is None
    state = trainer_state(load_checkpoint(tmp_path / "0.8.pt"))
    # the checkpoint's last weights are the plain run's, bit for bit; the model now holds the average instead
    for name, want in plain.model.state_dict().items():
        assert torch.equal(state["model"][name], want), name
    model_average = state["average"]["averages"][0]
    moved = 0
    for name, value in averaged.model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, model_average[name]), name
            moved += not torch.equal(value, state["model"][name])
    assert moved > 0


def test_a_resumed_run_continues_the_average_exactly(tmp_path):
    x = blobs(40)

    def run(epochs, path, resume):
        with isolated(seed=5):
            recipe = build(tiny(0.7, epochs=epochs))
            fit(recipe.model, recipe.guide, x, epochs=epochs, batch_size=10, trainer=recipe.trainer, seed=5,
                checkpoint=Checkpointing(path, resume), progress=False)
            return recipe.trainer.state_dict()

    straight = run(3, tmp_path / "straight.pt", False)
    run(2, tmp_path / "stopped.pt", False)
    resumed = run(3, tmp_path / "stopped.pt", True)
    for got, want in zip(resumed["average"]["averages"], straight["average"]["averages"]):
        for name in want:
            assert torch.equal(got[name], want[name]), name


def test_a_checkpoint_without_an_average_starts_one_with_a_warning(tmp_path):
    x = blobs(20)
    with isolated(seed=5):
        recipe = build(tiny(None, epochs=1))
        fit(recipe.model, recipe.guide, x, epochs=1, batch_size=10, trainer=recipe.trainer, seed=5,
            checkpoint=Checkpointing(tmp_path / "plain.pt"), progress=False)
        plain_state = recipe.trainer.state_dict()
    with isolated(seed=5):
        recipe = build(tiny(0.9, epochs=1))
        with pytest.warns(UserWarning, match="without weight averaging"):
            recipe.trainer.load_state_dict(plain_state)
        for name, value in recipe.trainer.average.averages[0].items():
            assert torch.equal(value, plain_state["model"][name])


def test_scoring_a_checkpoint_loads_its_average_or_refuses_one_without(tmp_path):
    x = blobs(20)
    for name, ema in (("plain.pt", None), ("averaged.pt", 0.6)):
        with isolated(seed=5):
            recipe = build(tiny(ema, epochs=1))
            train_recipe(recipe, x, seed=5, checkpoint=Checkpointing(tmp_path / name), progress=False)
            if ema is not None:
                want = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    with isolated(seed=1):
        fresh = build(tiny(0.6, epochs=1))
        load_trained_model(fresh.model, tmp_path / "averaged.pt", guide=fresh.guide, average=fresh.trainer.average)
        for key, value in fresh.model.state_dict().items():
            assert torch.equal(value, want[key]), key
        with pytest.raises(CheckpointError, match="without weight averaging; score its last weights \\(--ema 0\\)"):
            load_trained_model(fresh.model, tmp_path / "plain.pt", guide=fresh.guide, average=fresh.trainer.average)


def test_the_command_line_scores_the_average_and_its_checkpoint_scores_either(tmp_path):
    root = require_mnist()
    common = ["--preset", "tiny", "--model", "hierarchical", "--guide", "encoder", "--test-steps", "0", "--heldout", "3",
              "--limit-train", "300", "--limit-test", "200", "--batchnorm", "eval", "--data-root", str(root), "--no-progress"]

    def run(out, *extra):
        proc = subprocess.run([sys.executable, str(REPO / "experiments" / "anomaly.py"), *common, "--out", str(tmp_path / out),
                               *extra], capture_output=True, text=True, cwd=REPO, timeout=600)
        return proc, tmp_path / out / "heldout3-flow-hierarchical-encoder-seed1" / "metrics.csv"

    trained, metrics = run("trained", "--ema", "0.9")
    assert trained.returncode == 0, trained.stderr
    ckpt = next((tmp_path / "trained" / "checkpoints").glob("*.pt"))
    averaged, averaged_metrics = run("averaged", "--ema", "0.9", "--eval-only", str(ckpt))
    last, last_metrics = run("last", "--ema", "0", "--eval-only", str(ckpt))
    assert averaged.returncode == 0 and last.returncode == 0, averaged.stderr + last.stderr
    table, again, plain = (pd.read_csv(path).set_index("score").auprc for path in (metrics, averaged_metrics, last_metrics))
    assert np.allclose(table, again)  # the run scored its average
    assert not np.allclose(table, plain)  # and the last weights score otherwise
    assert json.loads(metrics.with_name("run.json").read_text())["config"]["learn"]["optim"]["ema_decay"] == 0.9

    plain_run, _ = run("plain")
    refused, refused_metrics = run("refused", "--ema", "0.9", "--eval-only",
                                   str(next((tmp_path / "plain" / "checkpoints").glob("*.pt"))))
    assert plain_run.returncode == 0 and refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and "score its last weights (--ema 0)" in refused.stderr
    assert not refused_metrics.exists()


def test_a_run_too_short_for_its_average_is_warned_about():
    with isolated(seed=1):
        recipe = build(tiny(0.999, epochs=1))
        with pytest.warns(UserWarning, match="ema_decay=0.999.*spans about 1000 updates, but this run makes 2"):
            train_recipe(recipe, blobs(20), seed=1, progress=False)
