"""The top-down prior p(z₁) Π p(z_l | z_{<l}) over a hierarchical model's layers, against exact answers."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_lfbm.metrics import GaussianProposal
from pyro_lfbm.metrics.anomaly import importance_weighted_likelihood_ratio, lower_layer_likelihood_ratio
from pyro_lfbm.models import HierarchicalLatentModel
from pyro_lfbm.priors import FlowPrior, GaussianPrior, TopDownPrior
from pyro_lfbm.priors.flow import flow_forward
from pyro_lfbm.priors.gaussian import standard_normal_log_prob
from pyro_lfbm.tasks.anomaly import load_trained_model
from pyro_lfbm.train import build, isolated
from pyro_lfbm.train.presets import get_preset
from tests.conftest import require_mnist

REPO = Path(__file__).resolve().parents[1]


def make_prior(dims=(3, 2, 1), seed=0, dtype=torch.float64):
    """A top-down prior with flows in the layers of two or more dimensions and non-trivial conditioners."""
    torch.manual_seed(seed)
    layers = [FlowPrior(d, num_steps=2, hidden_dim=8) if d > 1 else GaussianPrior(d) for d in dims]
    prior = TopDownPrior(layers, hidden_dim=8)
    with torch.no_grad():
        for param in prior.parameters():  # away from the zero start of the conditioners and the flows' identity
            param.add_(0.3 * torch.randn_like(param))
    return prior.to(dtype)


def to_base(prior, z):
    """The bijection z (D,) → ε (D,) written out: each layer standardised by its conditioner, then its flow."""
    layers, out = z.split(prior.latent_dims), []
    for l, (layer, base) in enumerate(zip(layers, prior.layer_priors)):
        if l:
            shift, log_scale = prior._shift_log_scale(l, z[: sum(prior.latent_dims[:l])])
            layer = (layer - shift) * torch.exp(-log_scale)
        out.append(flow_forward(list(base.flow.parts), layer)[0] if isinstance(base, FlowPrior) else layer)
    return torch.cat(out)


def test_the_density_is_the_change_of_variables_of_the_whole_map():
    prior = make_prior()
    z = prior.sample((5,))
    for row, expected in zip(z, prior.log_prob(z)):
        eps = to_base(prior, row)
        log_det = torch.linalg.slogdet(jacobian(lambda v: to_base(prior, v), row))[1]
        assert torch.allclose(standard_normal_log_prob(eps) + log_det, expected, atol=1e-10)
    assert prior.layer_log_probs(z).shape == (5, 3)
    assert torch.allclose(prior.dist().log_prob(z), prior.log_prob(z))


def test_a_two_layer_gaussian_prior_integrates_to_one_by_quadrature():
    prior = make_prior(dims=(1, 1))
    grid = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = prior.log_prob(torch.stack([z1, z2], -1)).exp()
    cell = (grid[1] - grid[0]) ** 2
    assert math.isclose(float(density.sum() * cell), 1.0, abs_tol=1e-6)


def test_lower_layers_are_drawn_from_their_exact_conditional():
    prior = make_prior(dims=(2, 1))
    upper = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    torch.manual_seed(1)
    draws = prior.sample_lower_layers(upper, 1, num_samples=40_000)  # (S, B, 1)
    shift, log_scale = prior._shift_log_scale(1, upper)
    assert draws.shape == (40_000, 2, 1)
    assert torch.allclose(draws.mean(0), shift, atol=4 * log_scale.exp().max().item() / 200)
    assert torch.allclose(draws.std(0), log_scale.exp(), rtol=0.02)
    # ancestral samples of the whole vector: their upper layers follow the top prior, the rest its conditional
    z = prior.sample((3, 4))
    assert z.shape == (3, 4, 3) and torch.isfinite(prior.log_prob(z)).all()


def test_bad_arguments_are_refused_in_one_line():
    prior = make_prior()
    with pytest.raises(ValueError, match="num_layers must be from 1 to 2"):
        prior.sample_lower_layers(torch.zeros(2, 5, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match=r"upper must be \(B, 5\)"):
        prior.sample_lower_layers(torch.zeros(2, 3, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="two or more LatentPrior"):
        TopDownPrior([GaussianPrior(2)])
    with pytest.raises(ValueError, match=r"expected z of shape \(\.\.\., 6\)"):
        prior.log_prob(torch.zeros(2, 5, dtype=torch.float64))


def test_presets_build_it_for_hierarchical_models_only_and_keep_old_configs():
    hierarchical = get_preset("tiny", "flow", "encoder", "hierarchical")
    top_down = replace(hierarchical.model, layer_prior="top-down").check()
    prior = top_down.build().prior
    assert isinstance(prior, TopDownPrior) and prior.latent_dims == hierarchical.model.layer_dims
    assert all(isinstance(p, FlowPrior) for p in prior.layer_priors)
    gaussian = replace(get_preset("tiny", "gaussian", "encoder", "hierarchical").model, layer_prior="top-down")
    assert all(isinstance(p, GaussianPrior) for p in gaussian.build().prior.layer_priors)  # the HVAE's top-down prior
    assert "layer_prior" not in hierarchical.to_dict()["model"]          # checkpoints of joint-prior runs still load
    assert replace(hierarchical, model=top_down).to_dict()["model"]["layer_prior"] == "top-down"
    with pytest.raises(ValueError, match="needs layer_dims"):
        replace(get_preset("tiny").model, layer_prior="top-down").check()
    with pytest.raises(ValueError, match="not ebm"):
        replace(get_preset("tiny", "ebm", None, "hierarchical").model, layer_prior="top-down").check()
    with pytest.raises(ValueError, match="unknown layer_prior"):
        replace(hierarchical.model, layer_prior="chain").check()


def test_the_likelihood_ratio_uses_the_exact_conditionals():
    preset = get_preset("tiny", "flow", "encoder", "hierarchical")
    torch.manual_seed(0)
    model = replace(preset.model, layer_prior="top-down").build().eval()
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    z = model.prior.sample((6,))
    llr, acceptance = lower_layer_likelihood_ratio(model, x, z, 1, num_samples=3, batch_size=4)
    assert llr.shape == (6,) and torch.isfinite(llr).all()
    assert torch.equal(acceptance, torch.ones(6))  # exact draws, no MALA


def test_the_anomaly_command_trains_and_rescores_a_top_down_model_with_its_top_layer_score(tmp_path):
    root = str(require_mnist())
    common = [sys.executable, str(REPO / "experiments" / "anomaly.py"), "--heldout", "7", "--model", "hierarchical",
              "--guide", "encoder", "--test-steps", "0", "--set", "layer_prior=top-down", "--preset", "tiny",
              "--limit-train", "150", "--limit-test", "60", "--batchnorm", "eval", "--no-progress", "--data-root", root]
    for args in (["--out", str(tmp_path / "run")],
                 ["--eval-only", str(tmp_path / "run" / "checkpoints" / "lfbm-flow-hierarchical-encoder-heldout7-seed1-tiny.pt"),
                  "--out", str(tmp_path / "again")]):
        proc = subprocess.run(common + args, capture_output=True, text=True, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "run" / "heldout7-flow-hierarchical-encoder-seed1"
    assert json.loads((run_dir / "run.json").read_text())["config"]["model"]["layer_prior"] == "top-down"
    scores = torch.load(run_dir / "scores.pt")
    again = torch.load(tmp_path / "again" / run_dir.name / "scores.pt")
    assert torch.equal(again["prior_top"], scores["prior_top"]) and torch.equal(again["joint"], scores["joint"])
    # the saved prior terms are the trained prior's layer terms at the saved latents: −log p(z₁) and −Σ_l
    preset = get_preset("tiny", "flow", "encoder", "hierarchical")
    with isolated(0):
        model = build(replace(preset, model=replace(preset.model, layer_prior="top-down"))).model
    load_trained_model(model, tmp_path / "run" / "checkpoints" / "lfbm-flow-hierarchical-encoder-heldout7-seed1-tiny.pt")
    with torch.no_grad():
        terms = model.prior.layer_log_probs(scores["z"])
    assert torch.allclose(-terms[:, 0], scores["prior_top"], rtol=1e-5)
    assert torch.allclose(-terms.sum(-1), scores["prior"], rtol=1e-5)
    assert set(pd.read_csv(run_dir / "metrics.csv").score) == {"joint", "recon", "prior", "prior_top"}


class LinearImage(torch.nn.Module):
    """z (B, 3) → W z + b as (B, 1, 2, 2): with a N(0, I) prior the posterior and log p(x) are closed-form."""

    latent_dim, image_shape = 3, (1, 2, 2)

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.weight = torch.nn.Parameter(torch.randn(4, 3, generator=generator, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.randn(4, generator=generator, dtype=torch.float64))

    def forward(self, z):
        return (z @ self.weight.T + self.bias).reshape(*z.shape[:-1], 1, 2, 2)


@pytest.mark.parametrize("k", [1, 2])
def test_the_importance_weighted_ratio_has_exact_bounds_at_the_exact_posterior(k):
    """A top-down prior of three N(0, 1) layers (the conditioners start at zero: p = N(0, I)) and g(z) = W z + b.
    With the exact posterior as q every weight of L equals p(x), so L = log N(x; b, σ²I + W Wᵀ) exactly; L^{>k}
    then estimates log p(x) too (its weights have mean p(x)), so the ratio of a model that fits x is near 0."""
    sigma = 0.5
    model = HierarchicalLatentModel(TopDownPrior([GaussianPrior(1) for _ in range(3)], hidden_dim=4).double(),
                                    LinearImage(), sigma=sigma, latent_dims=(1, 1, 1))
    x = torch.tensor([[0.2, -0.1, 0.9, -0.6], [0.0, 0.5, -0.3, 0.4]], dtype=torch.float64)
    w, b = model.generator.weight.detach(), model.generator.bias.detach()
    post_cov = torch.linalg.inv(torch.eye(3, dtype=torch.float64) + w.T @ w / sigma**2)
    post_loc = (x - b) @ w @ post_cov / sigma**2
    proposal = GaussianProposal(post_loc, torch.linalg.cholesky(post_cov).expand(2, 3, 3).clone())
    log_px = torch.distributions.MultivariateNormal(b, sigma**2 * torch.eye(4, dtype=torch.float64) + w @ w.T).log_prob(x)
    llr, bound = importance_weighted_likelihood_ratio(model, x.reshape(2, 1, 2, 2), proposal, k, num_particles=20_000)
    assert torch.allclose(bound, log_px, atol=1e-9, rtol=0)
    assert llr.abs().max() < 0.05, llr
    with pytest.raises(ValueError, match="exact layer conditionals"):
        flat = HierarchicalLatentModel(GaussianPrior(3).double(), LinearImage(), sigma=sigma, latent_dims=(1, 1, 1))
        importance_weighted_likelihood_ratio(flat, x.reshape(2, 1, 2, 2), proposal, k)


def test_the_importance_weighted_ratio_scores_on_running_statistics_and_leaves_them_alone():
    """Run on a model left in training mode (as after training), the ratio must not score on, nor update,
    BatchNorm's batch statistics: a later score would otherwise see statistics of the particles."""
    preset = get_preset("tiny", "flow", "encoder", "hierarchical")
    torch.manual_seed(0)
    model = replace(preset.model, layer_prior="top-down").build().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    proposal = GaussianProposal.from_diag(torch.randn(6, model.latent_dim), torch.full((6, model.latent_dim), 0.1))
    first, _ = importance_weighted_likelihood_ratio(model, x, proposal, 2, num_particles=4, batch_size=3)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again, _ = importance_weighted_likelihood_ratio(model, x[:3], GaussianProposal(proposal.loc[:3], proposal.scale_tril[:3]), 2,
                                                    num_particles=4, batch_size=3)
    assert torch.allclose(again, first[:3])  # an image's score does not depend on the other images


def test_it_pickles_and_round_trips_its_state_dict():
    import pickle

    prior = make_prior()
    z = prior.sample((4,))
    copy = pickle.loads(pickle.dumps(prior))
    assert torch.equal(copy.log_prob(z), prior.log_prob(z))
    fresh = make_prior(seed=5)
    fresh.load_state_dict(prior.state_dict())
    assert torch.equal(fresh.log_prob(z), prior.log_prob(z))
