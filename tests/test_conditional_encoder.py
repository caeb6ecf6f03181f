"""The conditional encoder q(z₁ | x) q(z₂ | z₁, x) … over a hierarchical model's layers, against exact answers."""

import json
import math
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from pyro import poutine

from pyro_lfbm.infer import ConditionalEncoderGuide, EncoderGuide, HybridGuide, LayerChainNormal
from pyro_lfbm.metrics import GaussianProposal, GuideProposal, iwae_log_px, latent_rate
from pyro_lfbm.nets import LayerConditionalEncoder, MNISTEncoder
from pyro_lfbm.train import build, isolated
from pyro_lfbm.train.presets import get_preset
from tests.conftest import require_mnist

REPO = Path(__file__).resolve().parents[1]
SITES = ("z1", "z2", "z3")


class LinearEncoder(torch.nn.Module):
    """x (B, 1, 2, 2) → (loc, scale) of size D by one linear map: a tiny base whose context is known."""

    deterministic, image_shape = False, (1, 2, 2)

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim, self.linear = latent_dim, torch.nn.Linear(4, 2 * latent_dim)

    def forward(self, x):
        loc, raw = self.linear(x.flatten(1)).chunk(2, -1)
        return loc, torch.nn.functional.softplus(raw) + 0.1


def make_encoder(dims=(2, 1, 1), seed=0):
    """A conditional encoder in float64 whose conditioners are away from their zero start."""
    torch.manual_seed(seed)
    encoder = LayerConditionalEncoder(LinearEncoder(sum(dims)), dims, hidden_dim=8).double()
    with torch.no_grad():
        for conditioner in encoder.conditioners:
            for param in conditioner.parameters():
                param.add_(0.5 * torch.randn_like(param))
    return encoder


def images(n=3, seed=1):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_log_prob_is_the_product_of_the_layer_gaussians_at_the_layers_above():
    encoder = make_encoder()
    x, z = images(), torch.randn(3, 4, dtype=torch.float64)
    loc0, scale0 = encoder.base(x)
    expected = torch.zeros(3, dtype=torch.float64)
    for l, (start, end) in enumerate([(0, 2), (2, 3), (3, 4)]):  # by hand: layer l sees [μ⁰, log σ⁰, z_{<l}]
        loc, scale = loc0[:, start:end], scale0[:, start:end]
        if l:
            shift, log_scale = encoder.conditioners[l - 1](torch.cat([loc0, scale0.log(), z[:, :start]], -1))
            loc, scale = loc + shift, scale * log_scale.exp()
        expected += torch.distributions.Normal(loc, scale).log_prob(z[:, start:end]).sum(-1)
    q = LayerChainNormal(encoder, loc0, scale0)
    assert q.batch_shape == (3,) and q.event_shape == (4,)
    assert torch.allclose(q.log_prob(z), expected, rtol=1e-12)


def test_a_two_layer_chain_integrates_to_one_by_quadrature():
    encoder = make_encoder(dims=(1, 1))
    q = LayerChainNormal(encoder, *encoder.base(images(1)))
    grid = torch.linspace(-10, 10, 801, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)  # (G², B=1, 2)
    with torch.no_grad():
        density = q.log_prob(z).exp()
    assert math.isclose(float(density.sum() * (grid[1] - grid[0]) ** 2), 1.0, abs_tol=1e-6)


def test_draws_follow_each_layers_conditional_and_the_mean_is_the_chain_of_conditional_means():
    encoder = make_encoder(dims=(1, 1))
    q = LayerChainNormal(encoder, *encoder.base(images(2)))
    torch.manual_seed(2)
    with torch.no_grad():
        draws = q.rsample((50_000,))  # (S, B, 2)
        top = q.layer(0, draws[..., :0])
        assert torch.allclose(draws[..., 0].mean(0), top.loc[0, :, 0], atol=0.02)
        # the lower layer given the drawn top layer: its standardised residual is N(0, 1)
        lower = q.layer(1, draws[..., :1])
        residual = (draws[..., 1:] - lower.loc) / lower.scale
        assert abs(float(residual.mean())) < 0.02 and abs(float(residual.std()) - 1) < 0.02
        mean = q.mean
        assert torch.allclose(mean[:, 1:], q.layer(1, mean[:, :1]).loc)


def test_it_starts_as_its_mean_field_base():
    base = MNISTEncoder(16, 32, 8)
    encoder = LayerConditionalEncoder(base, (8, 4, 4), hidden_dim=16).eval()
    x = torch.randn(4, 1, 28, 28)
    loc0, scale0 = base(x)
    guide = ConditionalEncoderGuide(encoder, SITES)
    assert torch.equal(guide.mean(x), loc0)
    z = torch.randn(4, 16)
    assert torch.allclose(guide.distribution(x).log_prob(z), torch.distributions.Normal(loc0, scale0).log_prob(z).sum(-1))


def test_the_guide_samples_each_site_given_the_sites_above_even_when_one_is_conditioned():
    encoder = make_encoder()
    guide = ConditionalEncoderGuide(encoder, SITES)
    x = images()
    trace = poutine.trace(guide).get_trace(x)
    trace.compute_log_prob()
    z = torch.cat([trace.nodes[name]["value"] for name in SITES], -1)
    assert torch.allclose(sum(trace.nodes[name]["log_prob"] for name in SITES), guide.distribution(x).log_prob(z))
    top = torch.full((3, 2), 3.0, dtype=torch.float64)
    conditioned = poutine.trace(poutine.condition(guide, {"z1": top})).get_trace(x)
    second = conditioned.nodes["z2"]["fn"].base_dist
    assert torch.allclose(second.loc, guide.distribution(x).layer(1, top).loc)


def test_bad_arguments_are_refused_in_one_line():
    with pytest.raises(ValueError, match="two or more positive integers"):
        LayerConditionalEncoder(LinearEncoder(4), (4,))
    with pytest.raises(ValueError, match="of size 5"):
        LayerConditionalEncoder(LinearEncoder(4), (3, 2))
    with pytest.raises(TypeError, match="must be a LayerConditionalEncoder"):
        ConditionalEncoderGuide(LinearEncoder(4), SITES)
    with pytest.raises(ValueError, match="sizes"):
        ConditionalEncoderGuide(make_encoder(), ("z1", "z2"))
    with pytest.raises(ValueError, match="not one diagonal Gaussian"):
        GaussianProposal.from_guide(ConditionalEncoderGuide(make_encoder(), SITES), images())


def test_presets_build_it_for_hierarchical_encoder_and_hybrid_guides_and_keep_old_configs():
    preset = get_preset("tiny", "flow", "encoder", "hierarchical")
    assert "encoder" not in preset.to_dict()["guide"]  # checkpoints of mean-field runs still load
    conditional = preset.with_guide("encoder", encoder="conditional")
    assert conditional.to_dict()["guide"]["encoder"] == "conditional"
    with isolated(0):
        recipe = build(conditional)
    assert isinstance(recipe.guide, ConditionalEncoderGuide) and recipe.guide.sites == SITES
    with isolated(0):
        hybrid = build(conditional.with_guide("hybrid"))
    assert isinstance(hybrid.guide, HybridGuide) and isinstance(hybrid.encoder_guide, ConditionalEncoderGuide)
    x = torch.rand(50, 1, 28, 28) * 2 - 1
    for recipe in (recipe, hybrid):  # one ELBO step each; the hybrid's amortization term uses the chain's log_prob
        assert math.isfinite(recipe.trainer.step(x)["loss"])
    with pytest.raises(ValueError, match="has one latent layer"):
        get_preset("tiny", "flow", "encoder").with_guide("encoder", encoder="conditional").check()
    with pytest.raises(ValueError, match="the langevin guide has none"):
        get_preset("tiny", "flow", None, "hierarchical").with_guide("langevin", encoder="conditional")
    with pytest.raises(ValueError, match="unknown encoder"):
        preset.with_guide("encoder", encoder="ladder")
    assert type(build(preset).guide) is EncoderGuide


def test_elbo_training_moves_the_conditioners_and_the_model_pickles():
    preset = get_preset("tiny", "flow", "encoder", "hierarchical").with_guide("encoder", encoder="conditional")
    with isolated(0):
        recipe = build(preset)
    before = [p.detach().clone() for p in recipe.guide.encoder.conditioners.parameters()]
    x = torch.rand(50, 1, 28, 28) * 2 - 1
    for _ in range(3):
        recipe.trainer.step(x)
    after = list(recipe.guide.encoder.conditioners.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    copy = pickle.loads(pickle.dumps(recipe.guide))
    recipe.guide.eval(), copy.eval()
    assert torch.equal(copy.mean(x[:4]), recipe.guide.mean(x[:4]))


def test_the_anomaly_command_trains_resumes_and_rescores_a_conditional_encoder(tmp_path):
    root = str(require_mnist())
    common = [sys.executable, str(REPO / "experiments" / "anomaly.py"), "--heldout", "7", "--model", "hierarchical",
              "--guide", "encoder", "--encoder", "conditional", "--test-steps", "0", "--preset", "tiny",
              "--limit-train", "150", "--limit-test", "60", "--batchnorm", "eval", "--no-progress", "--data-root", root]
    checkpoint = tmp_path / "run" / "checkpoints" / "lfbm-flow-hierarchical-encoder-conditional-heldout7-seed1-tiny.pt"
    for args in (["--out", str(tmp_path / "run"), "--epochs", "1"],
                 ["--out", str(tmp_path / "run2"), "--checkpoint-dir", str(checkpoint.parent), "--epochs", "2", "--resume"],
                 ["--eval-only", str(checkpoint), "--out", str(tmp_path / "again"), "--iwae-particles", "2"]):
        proc = subprocess.run(common + args, capture_output=True, text=True, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr
    name = "heldout7-flow-hierarchical-encoder-conditional-seed1"
    assert json.loads((tmp_path / "run2" / name / "run.json").read_text())["config"]["guide"]["encoder"] == "conditional"
    scores, again = torch.load(tmp_path / "run2" / name / "scores.pt"), torch.load(tmp_path / "again" / name / "scores.pt")
    assert torch.equal(again["joint"], scores["joint"]) and torch.equal(again["z"], scores["z"])
    assert {"iwae", "rate"} <= set(pd.read_csv(tmp_path / "again" / name / "metrics.csv").score)


def test_importance_weighted_scores_draw_from_the_chain_through_a_guide_proposal():
    preset = get_preset("tiny", "gaussian", "encoder", "hierarchical").with_guide("encoder", encoder="conditional")
    with isolated(0):
        recipe = build(preset)
    model, guide = recipe.model.eval(), recipe.guide.eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    proposal = GuideProposal(guide, x)
    assert len(proposal) == 5 and isinstance(proposal.dist(1, 3), LayerChainNormal) and proposal.dist(1, 3).batch_shape == (2,)
    # the conditioners start at zero, so q is the base encoder's Gaussian: its KL to N(0, I) is closed-form
    with torch.no_grad():
        loc, scale = guide.encoder.context(x)
    base = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    standard = torch.distributions.Independent(torch.distributions.Normal(torch.zeros_like(loc), 1.0), 1)
    rate = latent_rate(model, proposal, num_particles=40_000, seed=0)
    torch.testing.assert_close(rate, torch.distributions.kl_divergence(base, standard), atol=0.05, rtol=0)
    # one particle: log p(x, z) - log q(z | x) at the draw, by hand
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        z = proposal.dist().sample((1,))[0]
        by_hand = model.log_joint(x, **model.split_latents(z)) - proposal.dist().log_prob(z)
    torch.testing.assert_close(iwae_log_px(model, x, proposal, num_particles=1, seed=1), by_hand, rtol=1e-5, atol=1e-3)
    from pyro_lfbm.metrics import importance_weighted_likelihood_ratio

    top_down = replace(preset, model=replace(preset.model, prior="flow", layer_prior="top-down"))
    with isolated(0):
        recipe = build(top_down)
    with pytest.raises(ValueError, match="pass a GaussianProposal"):
        importance_weighted_likelihood_ratio(recipe.model, x, GuideProposal(recipe.guide, x), 1)
