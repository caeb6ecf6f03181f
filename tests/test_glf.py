"""Tests of Generative Latent Flow (:mod:`pyro_lfbm.models.glf`)."""

import math
from dataclasses import replace

import pytest
import torch

from pyro_lfbm.models.glf import GLF
from pyro_lfbm.train.glf import GLFTrainer, glf_preset
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import fit_steps


def blobs(n=200, seed=0):
    """Smooth images in [-1, 1] that a tiny autoencoder can fit."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 7, 7, generator=g)
    return torch.tanh(2 * torch.nn.functional.interpolate(base, size=28, mode="bilinear"))


def tiny(stop_gradient=True):
    torch.manual_seed(0)
    cfg = replace(glf_preset("tiny"), stop_gradient=stop_gradient)
    return cfg, cfg.build()


def test_flow_term_sends_no_gradient_to_the_encoder():
    cfg, model = tiny()
    x = blobs(20)
    terms = model.loss(x)
    model.zero_grad()
    terms["nll"].backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is None or p.grad.abs().max() == 0, name
    for name, p in model.generator.named_parameters():
        assert p.grad is None or p.grad.abs().max() == 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())
    # ... while the reconstruction term does reach the encoder, and never the flow
    model.zero_grad()
    model.loss(x)["recon"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.dim() > 1)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.prior.parameters())


def test_without_stop_gradient_the_flow_term_reaches_the_encoder():
    _, model = tiny(stop_gradient=False)
    model.loss(blobs(20))["nll"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_a_short_run_lowers_both_losses(tmp_path):
    cfg, model = tiny()
    cfg = replace(cfg, lr=3e-3)
    trainer = GLFTrainer(model, cfg)
    x = blobs(200)
    history = fit_steps(trainer, x, epochs=6, batch_size=20, seed=0, progress=False,
                        checkpoint=Checkpointing(tmp_path / "glf.pt"))
    first, last = history.epochs[0], history.epochs[-1]
    assert last["recon"] < 0.7 * first["recon"], (first, last)
    assert last["nll"] < first["nll"], (first, last)
    model.eval()
    s = model.sample(7)
    assert s.shape == (7, 1, 28, 28) and torch.isfinite(s).all()
    assert model.reconstruct(x[:5]).shape == (5, 1, 28, 28)


def test_resume_continues_the_same_run(tmp_path):
    def run(folder, epochs, interrupt_at=None, resume=False):
        cfg, model = tiny()
        trainer = GLFTrainer(model, cfg)

        def after_step(step):
            if interrupt_at is not None and step == interrupt_at:
                raise KeyboardInterrupt

        fit_steps(trainer, blobs(100), epochs=epochs, batch_size=20, seed=1, progress=False, after_step=after_step,
                  checkpoint=Checkpointing(folder / "ck.pt", resume, cfg.to_dict(), ("latent_dim",)))
        return model

    reference = run(tmp_path / "a", 2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", 2, interrupt_at=7)
    resumed = run(tmp_path / "b", 2, resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown GLF preset"):
        glf_preset("huge")
    _, model = tiny()
    with pytest.raises(ValueError, match="expected x of shape"):
        model.loss(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="nll_weight"):
        GLF(model.encoder, model.generator, model.prior, nll_weight=-1)


def test_glf_and_coopflow_scripts_run_on_fake_data(tmp_path):
    import json

    from tests.test_recovery import _run

    common = ["--preset", "tiny", "--epochs", "1", "--n-train", "40", "--num-samples", "30", "--no-progress",
              "--threads", "1", "--dataset", "fake", "--fake-shape", "1,28,28", "--cache-dir", str(tmp_path / "cache")]
    assert _run("glf", "--n-test", "20", "--out", str(tmp_path / "glf"), *common) == 0
    metrics = json.loads((tmp_path / "glf" / "metrics.json").read_text())
    assert metrics["recon_mse"] > 0 and metrics["code_std"] > 0
    assert torch.load(tmp_path / "glf" / "samples.pt").shape == (30, 1, 28, 28)
    assert _run("coopflow", "--out", str(tmp_path / "coop"), *common) == 0
    metrics = json.loads((tmp_path / "coop" / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("score_flow_samples", "score_revised_samples", "flow_bpd_data"))
    assert (tmp_path / "coop" / "before_after.png").exists()
