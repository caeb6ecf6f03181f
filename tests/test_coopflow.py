"""Tests of CoopFlow (:mod:`pyro_lfbm.models.coopflow`) and its energy networks."""

import math
from dataclasses import replace

import pytest
import torch

from pyro_lfbm.models.coopflow import CoopFlow
from pyro_lfbm.train.coopflow import CoopFlowTrainer, coopflow_preset
from pyro_lfbm.nets.energy import ConvEnergy, ResEnergy32, make_energy
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import fit_steps


def blobs(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 7, 7, generator=g)
    return torch.tanh(2 * torch.nn.functional.interpolate(base, size=28, mode="bilinear"))


def tiny(**optim):
    torch.manual_seed(0)
    cfg = coopflow_preset("tiny")
    cfg = replace(cfg, optim=replace(cfg.optim, **optim))
    model = cfg.build()
    return cfg, model, CoopFlowTrainer(model, cfg.optim)


def test_langevin_revision_raises_the_energy_score_of_flow_samples():
    cfg, model, _ = tiny()
    model.flow.data_init(blobs())
    x0 = model.sample_flow(16)
    moves = []
    x1 = model.revise(x0, num_steps=10, step_size=3.0,
                      callback=lambda k, x: moves.append(x))
    with torch.no_grad():
        before, after = model.score(x0), model.score(x1)
    assert after.mean() > before.mean() and (after > before).float().mean() >= 0.9
    # official rules: each step moves a pixel by at most 0.1 and keeps it in [-1, 1]; no noise
    prev = x0
    for x in moves:
        assert (x - prev).abs().max() <= 0.1 + 1e-6 and x.min() >= -1 and x.max() <= 1
        prev = x
    torch.testing.assert_close(model.revise(x0, num_steps=10, step_size=3.0), x1)  # deterministic
    assert all(p.grad is None for p in model.energy.parameters())


def test_a_short_run_stays_finite_and_raises_the_flow_likelihood_of_revised_samples(tmp_path):
    cfg, model, trainer = tiny()
    model.step_size = 3.0
    history = fit_steps(trainer, blobs(60), epochs=3, batch_size=20, seed=0, progress=False,
                        checkpoint=Checkpointing(tmp_path / "coop.pt"))
    rows = history.epochs
    assert all(math.isfinite(v) for row in rows for v in row.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.iteration == 9 and trainer.skipped == {"flow": 0, "ebm": 0}
    # every flow update is a maximum-likelihood step on the revised batch: its bits/dim drop
    assert all(row["flow_bpd_after"] < row["flow_bpd"] for row in rows), rows
    # and the EBM learns to prefer data to revised samples
    assert rows[-1]["score_data"] > rows[-1]["score_revised"]
    s = model.sample(5)
    assert s.shape == (5, 1, 28, 28) and torch.isfinite(s).all() and s.abs().max() <= 1


def test_exploding_gradient_norm_skips_the_update():
    cfg, model, trainer = tiny(max_ebm_grad_norm=1e-12, max_flow_grad_norm=1e-12)
    x = blobs(20)
    trainer.step(x)  # the first step also initialises the flow's ActNorm layers from data
    ebm = [p.detach().clone() for p in model.energy.parameters()]
    flow = [p.detach().clone() for p in model.flow.parameters()]
    metrics = trainer.step(x)
    assert metrics["ebm_skipped"] == 1.0 and metrics["flow_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(ebm, model.energy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(flow, model.flow.parameters()))
    assert trainer.skipped == {"flow": 2, "ebm": 2}


def test_nan_is_detected_with_a_one_line_error():
    cfg, model, trainer = tiny()
    with torch.no_grad():
        next(model.energy.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite") as err:
        trainer.step(blobs(20))
    assert "\n" not in str(err.value)


def test_pretraining_fits_the_flow_to_data():
    cfg, model, trainer = tiny(pretrain_flow_epochs=1)
    x = blobs(20)
    first = trainer.step(x)["flow_bpd"]
    for _ in range(5):
        last = trainer.step(x)["flow_bpd"]
    assert last < first and "score_data" not in trainer.step(x)  # no EBM update while pretraining


def test_energy_nets_shapes_and_errors():
    assert ConvEnergy((3, 32, 32), 4)(torch.zeros(2, 3, 32, 32)).shape == (2,)
    assert ResEnergy32(3, 4)(torch.zeros(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="32x32"):
        make_energy("res32", (1, 28, 28), 4)
    with pytest.raises(ValueError, match="expected images"):
        ConvEnergy((1, 28, 28), 4)(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="preset"):
        coopflow_preset("huge")
    with pytest.raises(ValueError, match="32x32"):
        coopflow_preset("paper", (1, 28, 28))


def test_paper_preset_builds_for_32x32_colour():
    cfg = coopflow_preset("paper", (3, 32, 32))
    assert (cfg.num_steps, cfg.step_size, cfg.max_move, cfg.batch_size) == (30, 0.03, 0.1, 28)
    model = cfg.build()
    assert isinstance(model, CoopFlow) and model.flow.latent_shape == (192, 4, 4)
