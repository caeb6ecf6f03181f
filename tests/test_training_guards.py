"""The epoch loop's guards (issue 14): non-finite updates never kept or saved, exact resume after
Ctrl-C at any point, no temporary files left by killed saves."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys

import pyro
import pytest
import torch

from pyro_lfbm import LangevinGuide
from pyro_lfbm.train import loop as step_training
from pyro_lfbm.train.checkpoint import Checkpointing, find_nonfinite, load_checkpoint, remove_stale_temporaries, save_checkpoint
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.loop import MAX_SKIPS_IN_A_ROW
from pyro_lfbm.train.svi import OptimConfig, fit
from tests.conftest import REPO
from tests.test_training import tiny_data

BATCHES = 6  # 120 examples in batches of 20


def build():
    pyro.clear_param_store()
    torch.manual_seed(0)
    preset = get_preset("tiny", "flow")
    model = preset.model.build()
    return preset, model, LangevinGuide(model, num_steps=3, step_size=0.1)


def run(tmp_path, epochs=2, resume=False, lr=1e-2, **kwargs):
    preset, model, guide = build()
    history = fit(model, guide, tiny_data(), epochs=epochs, batch_size=20, optim=OptimConfig(lr=lr), seed=3,
                  checkpoint=Checkpointing(tmp_path / "ckpt.pt", resume, preset.to_dict(), ("model",)),
                  progress=False, **kwargs)
    return model, history


@pytest.fixture
def saved_states(monkeypatch):
    """Every state the loop writes to disk, read back from the file."""
    written = []
    real = step_training.save_checkpoint

    def spy(path, **state):
        out = real(path, **state)
        written.append(load_checkpoint(path))
        return out

    monkeypatch.setattr(step_training, "save_checkpoint", spy)
    return written


def nan_gradient_at(model, steps):
    """Make the gradient of one generator weight NaN during the given global steps (0-based);
    the loss of those steps stays finite (it is computed before the update)."""
    current = {"step": 0}
    weight = next(model.generator.parameters())
    weight.register_hook(lambda g: g * float("nan") if current["step"] in steps else g)

    def after_step(step):
        current["step"] = step + 1

    return after_step


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad_step", [BATCHES - 1, BATCHES + 2])  # the last update of epoch 1; mid epoch 2
def test_a_nan_gradient_stops_training_undoes_the_update_and_is_never_saved(tmp_path, saved_states, bad_step):
    preset, model, guide = build()
    after_step = nan_gradient_at(model, {bad_step})
    before_bad = {}

    def remember(step):
        after_step(step)
        if step == bad_step - 1:
            before_bad.update(copy.deepcopy(model.state_dict()))

    with pytest.raises(FloatingPointError) as info:
        fit(model, guide, tiny_data(), epochs=3, batch_size=20, optim=OptimConfig(lr=1e-2), seed=3,
            checkpoint=Checkpointing(tmp_path / "ckpt.pt"), progress=False, after_step=remember)
    message = str(info.value)
    epoch, batch = divmod(bad_step, BATCHES)
    assert "\n" not in message and f"epoch {epoch + 1}, batch {batch + 1} of {BATCHES}" in message
    assert "learning rate" in message and "resume" not in message
    assert "generator" in message  # the loss stayed finite: the parameter check caught it
    assert states_equal(model.state_dict(), before_bad)  # the last good state is restored in memory
    assert all(find_nonfinite(ckpt) is None for ckpt in saved_states)
    assert [ckpt["epoch"] for ckpt in saved_states] == list(range(1, epoch + 1))  # nothing after the bad update


@pytest.mark.parametrize("validation", [True, False])
def test_a_huge_learning_rate_is_one_line_with_pyro_validation_on_or_off(tmp_path, saved_states, validation, recwarn):
    pyro.enable_validation(validation)
    try:
        with pytest.raises(FloatingPointError) as info:
            run(tmp_path, epochs=3, lr=1e6)
    finally:
        pyro.enable_validation(True)
    assert "\n" not in str(info.value) and "training diverged at epoch" in str(info.value)
    assert all(find_nonfinite(ckpt) is None for ckpt in saved_states)
    assert not [w for w in recwarn if "Encountered NaN" in str(w.message)]


def test_skip_nonfinite_drops_the_bad_updates_and_counts_them(tmp_path, saved_states):
    preset, model, guide = build()
    after_step = nan_gradient_at(model, {2, BATCHES + 4})
    history = fit(model, guide, tiny_data(), epochs=3, batch_size=20, optim=OptimConfig(lr=1e-2), seed=3,
                  checkpoint=Checkpointing(tmp_path / "ckpt.pt"), progress=False, after_step=after_step, skip_nonfinite=True)
    assert [row["nonfinite_skipped"] for row in history.epochs] == [1, 1, 0] and history.nonfinite_skipped == 2
    assert find_nonfinite(model.state_dict()) is None
    assert len(saved_states) == 3 and all(find_nonfinite(ckpt) is None for ckpt in saved_states)

    preset, model, guide = build()
    after_step = nan_gradient_at(model, set(range(100)))
    with pytest.raises(FloatingPointError, match=f"{MAX_SKIPS_IN_A_ROW} updates in a row"):
        fit(model, guide, tiny_data(), epochs=3, batch_size=20, progress=False, after_step=after_step, skip_nonfinite=True)


def test_epochs_below_one_are_rejected():
    preset, model, guide = build()
    for epochs in (0, -1):
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            fit(model, guide, tiny_data(), epochs=epochs, batch_size=20, progress=False)


# --------------------------------------------------------------------------- Ctrl-C


def sigint():
    signal.raise_signal(signal.SIGINT)


def history_rows(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "examples_per_second")} for row in history.epochs]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, history = run(tmp_path_factory.mktemp("reference"))
    return copy.deepcopy(model.state_dict()), history_rows(history)


def interrupt_mid_update(model, at_call, times=1):
    """SIGINT from inside the generator's forward pass (inside a Langevin step of an update)."""
    calls = {"n": 0}

    def hook(module, inputs):
        calls["n"] += 1
        if calls["n"] == at_call:
            for _ in range(times):
                sigint()

    return model.generator.register_forward_pre_hook(hook)


@pytest.mark.parametrize("where", ["mid-update", "mid-update-twice", "between-updates", "end-of-epoch", "during-save",
                                   "last-update-of-epoch"])
def test_ctrl_c_anywhere_then_resume_is_bit_identical(tmp_path, uninterrupted, where, monkeypatch):
    reference, reference_rows = uninterrupted
    preset, model, guide = build()
    kwargs = {}
    if where.startswith("mid-update"):
        interrupt_mid_update(model, at_call=17, times=2 if where.endswith("twice") else 1)  # during update 4 or 5
    elif where == "between-updates":
        kwargs["after_step"] = lambda step: sigint() if step == 7 else None
    elif where == "last-update-of-epoch":
        kwargs["after_step"] = lambda step: sigint() if step == BATCHES - 1 else None
    elif where == "end-of-epoch":
        kwargs["after_epoch"] = lambda epoch, row: sigint() if epoch == 1 else None
    elif where == "during-save":
        real = step_training.save_checkpoint
        monkeypatch.setattr(step_training, "save_checkpoint", lambda path, **state: (sigint(), real(path, **state))[1])
    with pytest.raises(KeyboardInterrupt):
        fit(model, guide, tiny_data(), epochs=2, batch_size=20, optim=OptimConfig(lr=1e-2), seed=3,
            checkpoint=Checkpointing(tmp_path / "ckpt.pt", False, preset.to_dict(), ("model",)), progress=False,
            **kwargs)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert (ckpt["epoch"], ckpt["batch"]) != (2, 0)  # it really stopped early
    resumed, history = run(tmp_path, resume=True)
    assert states_equal(resumed.state_dict(), reference)
    assert history_rows(history) == reference_rows


# --------------------------------------------------------------------------- kill -9 during a save

_SLOW_SAVE = """
import sys, time, torch
from pyro_lfbm.train.checkpoint import save_checkpoint
def slow(obj, f, *a, **k):
    f.write(b"partial"); f.flush(); print("writing", flush=True); time.sleep(60)
torch.save = slow
save_checkpoint(sys.argv[1], weights=torch.zeros(3))
"""


def slow_saver(path):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_kill_9_during_a_save_leaves_a_temporary_that_the_next_start_removes(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, weights=torch.ones(3))
    writer = slow_saver(path)
    try:
        assert remove_stale_temporaries(path) == []  # a live writer's file is left alone
        assert len(list(tmp_path.glob(".ckpt.pt.*.tmp"))) == 1
    finally:
        writer.kill()
        writer.wait()
    assert len(list(tmp_path.glob(".ckpt.pt.*.tmp"))) == 1  # kill -9 cannot clean up
    (tmp_path / ".other.pt.x.tmp").write_bytes(b"not ours")
    run(tmp_path, epochs=1)  # the next start
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.x.tmp", "ckpt.pt"]
    assert load_checkpoint(path)["epoch"] == 1


# --------------------------------------------------------------------------- GLF and CoopFlow trainers


def glf_trainer():
    from pyro_lfbm.train.glf import GLFTrainer, glf_preset

    torch.manual_seed(0)
    cfg = glf_preset("tiny")
    model = cfg.build()
    return model, GLFTrainer(model, cfg)


def coopflow_trainer():
    from pyro_lfbm.train.coopflow import CoopFlowTrainer, coopflow_preset

    torch.manual_seed(0)
    cfg = coopflow_preset("tiny")
    model = cfg.build()
    return model, CoopFlowTrainer(model, cfg.optim)


def nan_energy_at(model, iteration):
    """CoopFlow: the EBM's score of the data batch turns NaN in ``iteration`` (0-based), after the flow's
    update of that iteration: a half-done update that must be undone. Per iteration the EBM scores
    the T = 5 revision steps, the flow samples, then the data (its 7th call), then the revised samples."""
    state = {"iteration": 0, "calls": 0}

    def hook(module, inputs, output):
        state["calls"] += 1
        return output * float("nan") if (state["iteration"], state["calls"]) == (iteration, 7) else output

    model.energy.register_forward_hook(hook)

    def after_step(step):
        state.update(iteration=step + 1, calls=0)

    return after_step


@pytest.mark.parametrize("make", [glf_trainer, coopflow_trainer], ids=["glf", "coopflow"])
def test_glf_and_coopflow_updates_are_guarded_too(tmp_path, saved_states, make):
    x = tiny_data(60)
    model, trainer = make()
    before = {}
    if make is glf_trainer:  # the encoder's gradient turns NaN in update 5 (0-based 4); the loss stays finite
        count = {"n": 0}
        next(model.encoder.parameters()).register_hook(
            lambda g: g * float("nan") if count["n"] == 4 else g)
        after_step = lambda step: count.update(n=step + 1)  # noqa: E731
    else:  # the EBM turns NaN inside update 5 (0-based 4), after the flow has already moved
        after_step = nan_energy_at(model, 4)

    def remember(step):
        if after_step is not None:
            after_step(step)
        if step == 3:
            before.update(copy.deepcopy(model.state_dict()))

    with pytest.raises(FloatingPointError) as info:
        step_training.fit_steps(trainer, x, epochs=3, batch_size=20, seed=1, checkpoint=Checkpointing(tmp_path / "c.pt"),
                                progress=False, after_step=remember)
    assert "epoch 2, batch 2 of 3" in str(info.value) and "\n" not in str(info.value)
    assert states_equal(model.state_dict(), before)  # nothing of the half-done update stays
    assert [c["epoch"] for c in saved_states] == [1] and find_nonfinite(saved_states[0]) is None
