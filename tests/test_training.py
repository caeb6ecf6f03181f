from dataclasses import replace

import pytest
import torch
import pyro

from pyro_lfbm import LangevinGuide
from pyro_lfbm.train.checkpoint import CheckpointError, Checkpointing
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.svi import OptimConfig, fit


def tiny_data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth blobs so a tiny generator can fit something
    base = torch.randn(n, 1, 7, 7, generator=g)
    return torch.tanh(torch.nn.functional.interpolate(base, size=28, mode="bilinear"))


def build(prior="flow"):
    preset = get_preset("tiny", prior)
    model = preset.model.build()
    return preset, model, LangevinGuide(model, num_steps=3, step_size=0.1)


def train(tmp_path, epochs, interrupt_at=None, resume=False):
    pyro.clear_param_store()
    torch.manual_seed(0)
    preset, model, guide = build()
    x = tiny_data()

    def after_step(step):
        if interrupt_at is not None and step == interrupt_at:
            raise KeyboardInterrupt

    history = fit(model, guide, x, epochs=epochs, batch_size=20, optim=OptimConfig(lr=1e-2), seed=3,
                  checkpoint=Checkpointing(tmp_path / "ckpt.pt", resume, preset.to_dict(), ("model",)), progress=False,
                  after_step=after_step)
    return model, history


def test_fit_lowers_the_loss_and_records_history(tmp_path):
    model, history = train(tmp_path, epochs=4)
    losses = [row["loss"] for row in history.epochs]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (tmp_path / "ckpt.pt").exists()
    assert history.train_seconds > 0


def test_interrupt_then_resume_equals_uninterrupted_run(tmp_path):
    reference, _ = train(tmp_path / "a", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", epochs=2, interrupt_at=8)  # mid second epoch (6 batches per epoch)
    resumed, history = train(tmp_path / "b", epochs=2, resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [row["epoch"] for row in history.epochs] == [1, 2]


def test_resume_with_another_config_is_a_one_line_error(tmp_path):
    train(tmp_path, epochs=1)
    pyro.clear_param_store()
    preset = get_preset("tiny", "flow")
    preset = replace(preset, model=replace(preset.model, latent_dim=4))
    model = preset.model.build()
    with pytest.raises(CheckpointError, match="latent_dim"):
        fit(model, LangevinGuide(model, num_steps=2), tiny_data(), epochs=2, batch_size=20,
            checkpoint=Checkpointing(tmp_path / "ckpt.pt", True, preset.to_dict(), ("model",)), progress=False)


def test_stale_param_store_is_detected():
    _, first, guide = build()
    x = tiny_data()
    fit(first, guide, x, epochs=1, batch_size=20, progress=False)
    _, second, guide2 = build()  # same parameter names, param store not cleared
    with pytest.raises(RuntimeError, match="clear_param_store"):
        fit(second, guide2, x, epochs=1, batch_size=20, progress=False)


@pytest.mark.parametrize("prior", ["gaussian", "ebm"])
def test_other_priors_train(prior):
    _, model, guide = build(prior)
    history = fit(model, guide, tiny_data(), epochs=2, batch_size=20, progress=False)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in history.epochs)
