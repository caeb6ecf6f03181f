"""LangevinGuide on the standard Pyro idioms, each checked against an exact posterior.

Subsampled plates, plates with other names, vectorised particles (Predictive(parallel=True) and
Trace_ELBO(vectorize_particles=True)), constrained latents (Gamma-Poisson, Beta-Binomial), global
latents (the global_guide pattern), and float64 models.
"""

import math

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_lfbm import GaussianPrior, LangevinGuide, LatentModel
from pyro_lfbm.infer import find_latent_sites, log_joint_terms
from pyro_lfbm.nets import MNISTGenerator


class LinearGaussian:
    """z ~ N(0, I_D), x | z ~ N(W z + b, σ² I_P) per example: the exact posterior is Gaussian.

    With seed 0 its posterior variances are 0.084 and 0.245: 300 steps of 0.12 (Langevin time
    300 s²/2 = 2.2) forget the start to exp(-2.2 / 0.245) < 1e-3, and the discretisation inflates
    the smaller variance by about s² / (4 · 0.084) = 4 %."""

    def __init__(self, latent_dim=2, obs_dim=3, sigma=0.7, seed=0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.W = (torch.randn(obs_dim, latent_dim, generator=g) * 0.8).to(dtype)
        self.b = torch.randn(obs_dim, generator=g).to(dtype)
        self.sigma, self.latent_dim, self.dtype = sigma, latent_dim, dtype

    def prior(self):
        return dist.Normal(torch.zeros(self.latent_dim, dtype=self.dtype), 1.0).to_event(1)

    def likelihood(self, z):
        return dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1)

    def posterior(self, x):
        """(mean (B, D), cov (D, D)) of p(z | x) for x (B, P)."""
        precision = torch.eye(self.latent_dim, dtype=self.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        return (x - self.b) @ self.W @ cov / self.sigma**2, cov


def assert_moments(z, mean, cov, mean_tol, cov_rel=0.12):
    """Pooled residuals z - mean (rows of (n, D)) have mean 0 and covariance cov."""
    resid = z - mean
    assert resid.mean(0).abs().max() < mean_tol, (resid.mean(0), mean_tol)
    emp = torch.cov(resid.T)
    assert torch.allclose(emp, cov, atol=cov_rel * cov.diagonal().max()), (emp, cov)


# ---------------------------------------------------------------------------------------------
# Subsampling
# ---------------------------------------------------------------------------------------------
def test_subsample_size_chain_targets_one_fixed_minibatch_and_model_replays_it():
    lg = LinearGaussian()
    X = torch.randn(3000, 3) * 2

    def model(X):
        with pyro.plate("items", X.shape[0], subsample_size=1500) as idx:  # not named "data"
            z = pyro.sample("z", lg.prior())
            pyro.sample("x", lg.likelihood(z), obs=X[idx])

    guide = LangevinGuide(model, num_steps=300, step_size=0.12)
    trace = poutine.trace(guide).get_trace(X)
    idx = trace.nodes["items"]["value"]
    z = trace.nodes["z"]["value"]
    assert idx.shape == (1500,) and z.shape == (1500, 2)
    mean, cov = lg.posterior(X[idx])
    # A chain that saw a new minibatch at every step would be off by about the posterior's own size.
    assert_moments(z, mean, cov, mean_tol=0.04)
    # The model's trace of the same SVI step replays the guide's indices (same minibatch).
    model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(X)
    assert torch.equal(model_trace.nodes["items"]["value"], idx)
    # ... and the SVI loss keeps Pyro's N/B scaling: -(N/B) log p(x_idx, z_K).
    expected = -(3000 / 1500) * (lg.prior().log_prob(z) + lg.likelihood(z).log_prob(X[idx])).sum()
    model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(X)
    assert torch.allclose(-model_trace.log_prob_sum(), expected, rtol=1e-5)


def test_explicit_subsample_indices():
    lg = LinearGaussian()
    X = torch.randn(5000, 3) * 2
    idx = torch.randperm(5000)[:1500]

    def model(X, idx):
        with pyro.plate("data", X.shape[0], subsample=idx):
            z = pyro.sample("z", lg.prior())
            pyro.sample("x", lg.likelihood(z), obs=X[idx])

    guide = LangevinGuide(model, num_steps=300, step_size=0.12)
    trace = poutine.trace(guide).get_trace(X, idx)
    assert torch.equal(trace.nodes["data"]["value"], idx)
    mean, cov = lg.posterior(X[idx])
    assert_moments(trace.nodes["z"]["value"], mean, cov, mean_tol=0.04)


def test_log_joint_terms_are_unscaled_and_split_local_from_global():
    """log_joint_terms against a hand-written log joint (a constrained global and local site)."""
    X = torch.randn(40, 2)

    def model(X):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        with pyro.plate("obs", 40, subsample_size=10) as idx:
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(mu[..., None] + rate, tau[..., None]).to_event(1), obs=X[idx])

    sites = find_latent_sites(model, (X,), {})
    assert sites.plate.name == "obs" and sites.plate.size == 40 and sites.rows_shape == (10,)
    assert sites.global_names == ["mu", "tau"] and sites.local_names == ["rate"]
    u = sites.initial
    local, global_ = log_joint_terms(model, u, (X,), {}, sites)
    idx = sites.plate.subsample
    mu, tau, rate = u["mu"], u["tau"].exp(), u["rate"].exp()
    expected_local = (
        dist.Gamma(2.0, 1.0).log_prob(rate).sum(-1) + u["rate"].sum(-1)  # log|d rate / du| = u
        + dist.Normal(mu + rate, tau).log_prob(X[idx]).sum(-1)
    )
    expected_global = dist.Normal(0.0, 1.0).log_prob(mu) + dist.HalfNormal(1.0).log_prob(tau) + u["tau"]
    assert local.shape == (10,) and global_.shape == ()
    assert torch.allclose(local, expected_local, atol=1e-5)
    assert torch.allclose(global_, expected_global, atol=1e-5)
    # the recorded minibatch is replayed: a second evaluation scores the same rows
    again, _ = log_joint_terms(model, u, (X,), {}, sites)
    assert torch.equal(local, again)


# ---------------------------------------------------------------------------------------------
# Vectorised particles
# ---------------------------------------------------------------------------------------------
def _repeated_obs_model(lg):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", lg.prior())
            pyro.sample("x", lg.likelihood(z), obs=x)

    return model


def test_predictive_parallel_draws_independent_chains_that_match_sequential_and_exact():
    lg = LinearGaussian()
    x = (torch.randn(1, 3) * 2).expand(40, 3)  # 40 rows with the same observation
    model = _repeated_obs_model(lg)
    guide = LangevinGuide(model, num_steps=300, step_size=0.12)
    parallel = Predictive(model, guide=guide, num_samples=25, parallel=True, return_sites=["z"])(x)["z"]
    sequential = Predictive(model, guide=guide, num_samples=25, parallel=False, return_sites=["z"])(x)["z"]
    assert parallel.shape == sequential.shape == (25, 40, 2)
    # not copies: the draws of one row differ across particles
    assert parallel[:, 0].std(0).min() > 0.1
    mean, cov = lg.posterior(x[:1])
    for draws in (parallel, sequential):
        assert_moments(draws.reshape(-1, 2), mean, cov, mean_tol=0.05, cov_rel=0.15)
    # the spread across draws of parallel and sequential agree within Monte-Carlo error (1000 draws each)
    sd_par, sd_seq = parallel.reshape(-1, 2).std(0), sequential.reshape(-1, 2).std(0)
    assert torch.allclose(sd_par, sd_seq, rtol=0.12), (sd_par, sd_seq)


def test_trace_elbo_vectorized_particles_run_one_chain_per_particle():
    lg = LinearGaussian()
    x = (torch.randn(1, 3) * 2).expand(30, 3)
    model = _repeated_obs_model(lg)
    guide = LangevinGuide(model, num_steps=300, step_size=0.12)
    elbo = Trace_ELBO(num_particles=30, vectorize_particles=True)
    loss = elbo.loss(model, guide, x)
    z = guide.latents["z"]
    assert z.shape == (30, 30, 2)
    # the loss is the particle mean of -log p(x, z_s) (a Delta guide has log q = 0)
    log_p = lg.prior().log_prob(z) + lg.likelihood(z).log_prob(x)
    assert math.isclose(loss, float(-log_p.sum(-1).mean()), rel_tol=1e-5)
    mean, cov = lg.posterior(x[:1])
    assert_moments(z.reshape(-1, 2), mean, cov, mean_tol=0.06, cov_rel=0.15)
    assert z[:, 0].std(0).min() > 0.1  # particles are independent chains, not copies


# ---------------------------------------------------------------------------------------------
# Constrained latents
# ---------------------------------------------------------------------------------------------
def test_gamma_poisson_constrained_latent_matches_conjugate_posterior():
    a, b = 3.0, 2.0
    counts = torch.tensor([[4.0, 6.0, 5.0]]).expand(2000, 3)

    def model(counts):
        with pyro.plate("data", counts.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(a, b))
            pyro.sample("obs", dist.Poisson(rate.unsqueeze(-1)).to_event(1), obs=counts)

    rate = LangevinGuide(model, num_steps=300, step_size=0.1).infer(counts)["rate"]
    exact = dist.Gamma(a + 15, b + 3)
    assert (rate > 0).all()
    assert abs(float(rate.mean() - exact.mean)) < 0.06
    assert abs(float(rate.var() / exact.variance) - 1) < 0.12


def test_beta_binomial_constrained_latent_matches_conjugate_posterior_and_guide_emits_constrained_values():
    def model(k):
        with pyro.plate("data", k.shape[0]):
            p = pyro.sample("p", dist.Beta(2.0, 3.0))
            pyro.sample("k", dist.Binomial(10, p), obs=k)

    k = torch.full((2000,), 7.0)
    guide = LangevinGuide(model, num_steps=300, step_size=0.2)
    trace = poutine.trace(guide).get_trace(k)
    p = trace.nodes["p"]["value"]
    exact = dist.Beta(9.0, 6.0)
    assert ((p > 0) & (p < 1)).all()
    assert abs(float(p.mean() - exact.mean)) < 0.01
    assert abs(float(p.var() / exact.variance) - 1) < 0.12


def test_discrete_latents_are_rejected_with_a_clear_error():
    def model(x):
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="discrete support"):
        LangevinGuide(model).infer(torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# Global latents
# ---------------------------------------------------------------------------------------------
def _hierarchical(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def test_global_latents_raise_one_error_naming_the_supported_pattern():
    with pytest.raises(ValueError, match=r"'mu'.*outside the data plate.*global_guide=AutoNormal"):
        LangevinGuide(_hierarchical)(torch.zeros(5))


def test_global_guide_pattern_learns_the_exact_posterior_of_the_global():
    """AutoNormal on the global mean, Langevin on the per-row latents (persistent chains):
    with z drawn from p(z | x, mu), the ELBO gradient of q(mu) is unbiased (Fisher's identity),
    so q(mu) converges to the exact Gaussian posterior of mu."""
    torch.manual_seed(0)
    n = 40
    x = 1.5 + torch.randn(n) * 1.25**0.5
    precision = 1 + n / 1.25
    exact_mean, exact_sd = float(x.sum() / 1.25 / precision), precision**-0.5
    auto = AutoNormal(poutine.block(_hierarchical, expose=["mu"]))
    guide = LangevinGuide(_hierarchical, num_steps=5, step_size=0.3, global_guide=auto, persistent=n)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995})
    svi = SVI(_hierarchical, guide, optim, Trace_ELBO())
    for _ in range(700):
        svi.step(x)
    assert abs(auto.locs.mu.item() - exact_mean) < 0.4 * exact_sd, (auto.locs.mu.item(), exact_mean)
    assert abs(auto.scales.mu.item() / exact_sd - 1) < 0.3, (auto.scales.mu.item(), exact_sd)
    assert set(guide.latents) == {"z"} and guide.latents["z"].shape == (n,)


# ---------------------------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------------------------
def test_float64_user_model_runs_in_float64_through_the_trace_path():
    lg = LinearGaussian(dtype=torch.float64)
    model = _repeated_obs_model(lg)
    x = torch.randn(5, 3, dtype=torch.float64)
    guide = LangevinGuide(model, num_steps=3000, step_size=0.1, noise=False)
    z = guide.infer(x)["z"]
    assert z.dtype == torch.float64
    assert torch.allclose(z, lg.posterior(x)[0], atol=1e-9)  # float64 precision, not float32's


def test_float64_latent_model_trains_by_svi_in_float64():
    torch.manual_seed(0)
    model = LatentModel(GaussianPrior(4), MNISTGenerator(4, hidden_dim=16, channels=4)).double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64) * 2 - 1
    guide = LangevinGuide(model, num_steps=3, step_size=0.1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    assert guide.latents["z"].dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model.parameters())
    params = [pyro.param(name) for name in pyro.get_param_store().keys()]
    assert params and all(p.dtype == torch.float64 for p in params)
