import math

import pytest
import torch
import pyro.distributions as dist
from torch import nn

from pyro_lfbm import GaussianPrior, LatentModel
from pyro_lfbm.metrics.evaluation import (
    GaussianProposal,
    inference_row,
    iwae_log_px,
    langevin_trajectory,
    latent_rate,
    log_joint_terms,
    reconstruction_mse,
)
from pyro_lfbm.infer import short_run_langevin


def linear_gaussian(latent_dim=2, sigma=0.5, seed=0):
    """A LatentModel z ~ N(0, I), x = W z + b + σ ε with 2×2 one-channel "images": exact p(x), p(z|x)."""
    torch.manual_seed(seed)
    generator = nn.Sequential(nn.Linear(latent_dim, 4), nn.Unflatten(1, (1, 2, 2)))
    return LatentModel(GaussianPrior(latent_dim), generator, sigma=sigma)


def exact_log_px(model, x):
    lin = model.generator[0]
    W, b = lin.weight.detach(), lin.bias.detach()
    cov = W @ W.T + model.sigma**2 * torch.eye(4)
    return dist.MultivariateNormal(b, cov).log_prob(x.flatten(1))


def exact_posterior(model, x):
    lin = model.generator[0]
    W, b = lin.weight.detach(), lin.bias.detach()
    precision = torch.eye(W.shape[1]) + W.T @ W / model.sigma**2
    cov = torch.linalg.inv(precision)
    mean = (x.flatten(1) - b) @ W @ cov / model.sigma**2
    return mean, cov


def sample_images(model, n, seed=1):
    torch.manual_seed(seed)
    return model.sample(n, noise=True)


def test_iwae_is_below_exact_log_px_and_approaches_it():
    model = linear_gaussian()
    x = sample_images(model, 300)
    exact = exact_log_px(model, x)
    # A deliberately poor proposal (the prior, wider): the bound is loose for P = 1, tight for many particles.
    prior = GaussianProposal.from_diag(torch.zeros(300, 2), torch.full((300, 2), 1.5))
    gaps = []
    for P in (1, 10, 3000):
        est = iwae_log_px(model, x, prior, num_particles=P, batch_size=100, particle_chunk=1000, seed=P)
        gaps.append((est - exact).mean().item())
    assert all(g < 0.01 for g in gaps), gaps  # a lower bound (in expectation; 300 images average the noise)
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] < -0.3 and abs(gaps[2]) < 0.02, gaps


def test_the_rate_is_the_closed_form_kl_of_gaussians_and_the_monte_carlo_kl_of_a_flow():
    from pyro_lfbm import FlowPrior

    torch.manual_seed(0)
    loc, scale = torch.randn(6, 3), torch.rand(6, 3) + 0.2
    proposal = GaussianProposal.from_diag(loc, scale)
    model = linear_gaussian(latent_dim=3)
    exact = torch.distributions.kl_divergence(proposal.dist(), dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
    torch.testing.assert_close(latent_rate(model, proposal, num_particles=40_000, batch_size=4), exact, atol=0.03, rtol=0)
    # a flow prior: against E_q[log q(z) - log p(z)] with both terms drawn (another estimator of the same KL)
    prior = FlowPrior(latent_dim=3, num_steps=2, hidden_dim=8)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow_model = LatentModel(prior, model.generator, sigma=0.5)
    with torch.no_grad():
        z = proposal.dist().sample((40_000,))
        drawn = (proposal.dist().log_prob(z) - prior.log_prob(z.reshape(-1, 3)).reshape(z.shape[:2])).mean(0)
    rate = latent_rate(flow_model, proposal, num_particles=40_000, seed=3)
    torch.testing.assert_close(rate, drawn, atol=0.05, rtol=0)
    assert (rate > 0).all()
    assert torch.equal(latent_rate(flow_model, proposal, num_particles=4, seed=3), latent_rate(flow_model, proposal, num_particles=4, seed=3))
    with pytest.raises(ValueError, match="num_particles"):
        latent_rate(flow_model, proposal, num_particles=0)


def test_laplace_proposal_is_the_exact_posterior_of_a_linear_gaussian_model():
    model = linear_gaussian()
    x = sample_images(model, 50)
    mean, cov = exact_posterior(model, x)
    prop = GaussianProposal.laplace(model, x, mean)
    cov_hat = prop.scale_tril @ prop.scale_tril.transpose(1, 2)
    assert torch.allclose(cov_hat, cov.expand(50, 2, 2), atol=1e-4)
    # With the exact posterior as proposal every importance weight equals p(x): zero-variance estimate.
    est = iwae_log_px(model, x, prop, num_particles=5)
    assert torch.allclose(est, exact_log_px(model, x), atol=1e-3)


def test_gaussian_from_samples_recovers_mean_and_covariance():
    torch.manual_seed(0)
    L = torch.tensor([[1.0, 0.0], [0.5, 0.3]])
    samples = torch.randn(20000, 3, 2) @ L.T + torch.tensor([1.0, -2.0])
    prop = GaussianProposal.from_samples(samples)
    assert torch.allclose(prop.loc, torch.tensor([1.0, -2.0]).expand(3, 2), atol=0.03)
    assert torch.allclose(prop.scale_tril @ prop.scale_tril.transpose(1, 2), (L @ L.T).expand(3, 2, 2), atol=0.03)
    with pytest.raises(ValueError, match="samples of shape"):
        GaussianProposal.from_samples(torch.zeros(3, 2))


def test_mse_and_log_joint_terms_match_the_model():
    model = linear_gaussian()
    x = sample_images(model, 7)
    z = torch.randn(7, 2)
    mse = reconstruction_mse(model, x, z, batch_size=3)
    assert torch.allclose(mse, (model.generator(z) - x).pow(2).flatten(1).mean(1).detach())
    terms = log_joint_terms(model, x, z, batch_size=3)
    assert torch.allclose(terms["prior"] + terms["likelihood"], model.log_joint(x, z=z).detach())
    with pytest.raises(ValueError, match="same N"):
        reconstruction_mse(model, x, z[:3])


def test_trajectory_records_the_same_states_as_separate_runs():
    model = linear_gaussian()
    x = sample_images(model, 10)
    z0 = torch.randn(10, 2)
    traj = langevin_trajectory(model, x, [0, 3, 8], step_size=0.2, init=lambda xb: z0, progress=False)
    assert torch.equal(traj[0][0], z0)
    for k in (3, 8):
        direct = short_run_langevin(lambda lat: model.log_joint(x, z=lat["z"]), {"z": z0}, k, 0.2, noise=False)
        assert torch.allclose(traj[k][0], direct.position["z"], atol=1e-6)
    assert 0.0 <= traj[0][1] <= traj[3][1] <= traj[8][1]


def test_inference_row_columns():
    model = linear_gaussian()
    x = sample_images(model, 20)
    mean, _ = exact_posterior(model, x)
    row = inference_row(model, x, mean, method="exact mean", seconds=0.5, gradient_evaluations=0,
                        proposal=GaussianProposal.laplace(model, x, mean), num_particles=4)
    assert row["seconds_per_1000"] == pytest.approx(25.0)
    assert row["iwae"] == pytest.approx(exact_log_px(model, x).mean().item(), abs=1e-3)
    assert math.isclose(row["log_joint"], row["log_prior"] + row["log_likelihood"], rel_tol=1e-5)
