"""LangevinKernel on constrained, global and hierarchical latents, against exact posteriors and NUTS."""

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size

from pyro_lfbm import LangevinKernel

F64 = torch.float64


def mc_tolerance(samples: torch.Tensor, sd: torch.Tensor, k: float = 4.0) -> torch.Tensor:
    """k Monte-Carlo standard errors of the mean of ``samples`` (S, ...) from one chain: k sd / sqrt(ESS)."""
    ess = effective_sample_size(samples.unsqueeze(0), chain_dim=0, sample_dim=1)
    return k * sd / ess.clamp(min=1.0).sqrt()


# ---- global constrained site: Gamma-Poisson ---------------------------------------------------
X_POISSON = torch.tensor([3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 3.0, 4.0], dtype=F64)


def gamma_poisson(x):
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), torch.tensor(1.0, dtype=x.dtype)))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Poisson(lam), obs=x)


def test_global_gamma_poisson_matches_the_exact_posterior_in_float64():
    kernel = LangevinKernel(gamma_poisson)
    mcmc = MCMC(kernel, num_samples=1500, warmup_steps=300, disable_progbar=True)
    mcmc.run(X_POISSON)
    lam = mcmc.get_samples()["lam"]
    assert lam.shape == (1500,) and lam.dtype == F64 and (lam > 0).all()  # constrained values, float64
    # the kernel moved u = log(lam): its parameters are unconstrained
    assert kernel.sites.global_names == ["lam"] and not kernel.sites.local_names
    assert kernel.initial_params["lam"].dtype == F64
    a, b = 2.0 + X_POISSON.sum(), 1.0 + len(X_POISSON)  # Gamma(a, b) posterior
    mean, var = a / b, a / b**2
    assert (lam.mean() - mean).abs() < mc_tolerance(lam, var.sqrt()), (lam.mean(), mean)
    # variance: the mean of (lam - mean)², with sd ≈ sqrt(2) var for a near-Gaussian posterior
    sq = (lam - mean) ** 2
    assert (sq.mean() - var).abs() < mc_tolerance(sq, 1.5 * var), (sq.mean(), var)
    assert kernel.acceptance_rate > 0.3


# ---- local constrained site: Beta-Binomial, one p per row ------------------------------------
N_TRIALS = 10
X_BINOMIAL = torch.tensor([0.0, 3.0, 7.0, 10.0, 5.0, 2.0, 9.0, 4.0] * 5)


def beta_binomial(x):
    with pyro.plate("data", len(x)):
        p = pyro.sample("p", dist.Beta(2.0, 3.0))
        pyro.sample("x", dist.Binomial(N_TRIALS, p), obs=x)


def test_local_beta_binomial_matches_the_exact_posterior_of_every_row():
    kernel = LangevinKernel(beta_binomial)
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=300, disable_progbar=True)
    mcmc.run(X_BINOMIAL)
    p = mcmc.get_samples()["p"]  # (S, 40)
    assert p.shape == (1000, 40) and ((p > 0) & (p < 1)).all()
    alpha, beta = 2.0 + X_BINOMIAL, 3.0 + N_TRIALS - X_BINOMIAL
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    # 40 independent rows: standardised errors of the means, averaged, are ~N(0, 1/40) in MC units
    z = (p.mean(0) - mean) / mc_tolerance(p, var.sqrt(), k=1.0)
    assert z.abs().max() < 4.5, z
    assert z.mean().abs() < 4 / 40**0.5, z.mean()
    ratio = p.var(0) / var
    assert (ratio.mean() - 1).abs() < 0.06, ratio  # pooled over rows
    assert abs(kernel.acceptance_rate - 0.574) < 0.1, kernel.acceptance_rate


# ---- hierarchical: a global mean and per-row latents --------------------------------------------
X_HIER = torch.tensor([2.8, 0.8, -0.3, 1.5, 0.2, 2.1], dtype=F64)
TAU, SIGMA, PRIOR_SD = 1.0, 0.8, 5.0


def hierarchical(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_SD))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(mu, TAU))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x)


def exact_hierarchical(x):
    """The Gaussian posterior of (mu, z_1..z_B): precision and mean of the joint."""
    b = len(x)
    precision = torch.zeros(b + 1, b + 1, dtype=F64)
    precision[0, 0] = 1 / PRIOR_SD**2 + b / TAU**2
    precision[0, 1:] = precision[1:, 0] = -1 / TAU**2
    precision[1:, 1:] = torch.eye(b, dtype=F64) * (1 / TAU**2 + 1 / SIGMA**2)
    cov = torch.linalg.inv(precision)
    shift = torch.cat([torch.zeros(1, dtype=F64), x / SIGMA**2])
    return cov @ shift, cov


def test_hierarchical_global_mean_and_rows_match_the_exact_posterior_and_nuts():
    kernel = LangevinKernel(hierarchical)
    mcmc = MCMC(kernel, num_samples=700, warmup_steps=200, disable_progbar=True)
    mcmc.run(X_HIER)
    samples = mcmc.get_samples()
    assert kernel.sites.global_names == ["mu"] and kernel.sites.local_names == ["z"]
    draws = torch.cat([samples["mu"].unsqueeze(-1), samples["z"]], -1)  # (S, 1 + B)
    mean, cov = exact_hierarchical(X_HIER)
    sd = cov.diagonal().sqrt()
    assert ((draws.mean(0) - mean).abs() < mc_tolerance(draws, sd)).all(), (draws.mean(0), mean)
    sq = (draws - mean) ** 2  # E(draw - mean)² = var; sd of the square ≈ sqrt(2) var for a Gaussian
    assert ((sq.mean(0) - sd**2).abs() < mc_tolerance(sq, 1.5 * sd**2)).all(), (sq.mean(0), sd**2)
    # Pyro's NUTS on the same model agrees with the kernel within both chains' Monte-Carlo error
    nuts = MCMC(NUTS(hierarchical), num_samples=250, warmup_steps=120, disable_progbar=True)
    nuts.run(X_HIER)
    ref = nuts.get_samples()
    ref_draws = torch.cat([ref["mu"].unsqueeze(-1), ref["z"]], -1)
    tol = (mc_tolerance(draws, sd, 1.0) ** 2 + mc_tolerance(ref_draws, sd, 1.0) ** 2).sqrt() * 4
    assert ((draws.mean(0) - ref_draws.mean(0)).abs() < tol).all()
    assert torch.allclose(draws.std(0), ref_draws.std(0), rtol=0.25)
    diag = mcmc.diagnostics()
    assert "global acceptance rate" in diag and "global step size" in diag


N_OBS = 3  # observations per row


def hierarchical_scale(x):
    """Unknown mean and scale (HalfNormal, a constrained global site) shared by the rows; N_OBS observations per row."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_SD))
    tau = pyro.sample("tau", dist.HalfNormal(torch.tensor(2.0, dtype=x.dtype)))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, tau))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), SIGMA).to_event(1), obs=x)


def grid_posterior(x):
    """Exact posterior moments of hierarchical_scale by quadrature on a (mu, tau) grid, z integrated analytically:
    x̄_b | mu, tau ~ N(mu, tau² + σ²/n), and z_b | mu, tau, x is Gaussian."""
    mu = torch.linspace(-8, 10, 700, dtype=F64)[:, None, None]
    tau = torch.linspace(1e-4, 9, 700, dtype=F64)[None, :, None]
    xbar = x.mean(-1)
    log_post = (dist.Normal(0.0, PRIOR_SD).log_prob(mu) + dist.HalfNormal(2.0).log_prob(tau)
                + dist.Normal(mu, (tau**2 + SIGMA**2 / N_OBS).sqrt()).log_prob(xbar).sum(-1, keepdim=True))
    w = (log_post - log_post.max()).exp()
    w = w / w.sum()
    prec = 1 / tau**2 + N_OBS / SIGMA**2
    z_mean = (mu / tau**2 + N_OBS * xbar / SIGMA**2) / prec  # (M, T, B)
    moments = {}
    for name, value, second in (("mu", mu, mu**2), ("tau", tau, tau**2), ("z", z_mean, z_mean**2 + 1 / prec)):
        m = (w * value).sum((0, 1))
        moments[name] = (m, ((w * second).sum((0, 1)) - m**2).sqrt())
    return moments


def test_hierarchical_with_a_constrained_global_scale_matches_quadrature():
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 1, generator=gen, dtype=F64) * 1.5 + 1.0) + SIGMA * torch.randn(6, N_OBS, generator=gen, dtype=F64)
    kernel = LangevinKernel(hierarchical_scale)
    mcmc = MCMC(kernel, num_samples=800, warmup_steps=200, disable_progbar=True)
    mcmc.run(x)
    got = mcmc.get_samples()
    assert (got["tau"] > 0).all() and got["tau"].dtype == F64
    assert kernel.sites.global_names == ["mu", "tau"]
    for name, (mean, sd) in grid_posterior(x).items():
        draws = got[name].reshape(800, -1)
        mean, sd = mean.reshape(-1), sd.reshape(-1)
        assert ((draws.mean(0) - mean).abs() < mc_tolerance(draws, sd)).all(), (name, draws.mean(0), mean)
        sq = (draws - mean) ** 2  # tau's posterior is skewed: allow 3 sd² for the square's sd
        assert ((sq.mean(0) - sd**2).abs() < mc_tolerance(sq, 3 * sd**2)).all(), (name, sq.mean(0), sd**2)


def test_initial_params_are_unconstrained_and_cast_to_the_model_dtype():
    kernel = LangevinKernel(gamma_poisson, adapt_step_size=False, step_size=0.2)
    kernel.initial_params = {"lam": torch.tensor(1.0)}  # float32, u = log(lam) = 1 -> lam = e
    mcmc = MCMC(kernel, num_samples=1, warmup_steps=0, disable_progbar=True)
    mcmc.run(X_POISSON)
    assert kernel.initial_params["lam"].dtype == F64
    assert kernel.transforms["lam"].inv(kernel.initial_params["lam"]).item() == pytest.approx(torch.e)
    with pytest.raises(ValueError, match="lacks the latent sites"):
        k = LangevinKernel(hierarchical)
        k.initial_params = {"z": torch.zeros(6, dtype=F64)}
        MCMC(k, num_samples=1, warmup_steps=0, disable_progbar=True).run(X_HIER)


def test_subsampled_data_plate_with_global_sites_is_refused():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=3) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])
            pyro.sample("z", dist.Normal(mu, 1.0))

    with pytest.raises(ValueError, match="subsampled.*global latent sites"):
        MCMC(LangevinKernel(model), num_samples=2, warmup_steps=0, disable_progbar=True).run(torch.randn(10))


def test_data_plate_at_dim_minus_2_with_an_inner_plate():
    """Rows are the data plate's elements whatever its dim; the inner plate's elements belong to the row."""
    sigma = 0.5

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("feature", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.LogNormal(0.0, 1.0))  # constrained, one per (row, feature)
            pyro.sample("x", dist.Normal(z.log(), sigma), obs=x)  # log z ~ N(0, 1): conjugate in log space

    x = torch.randn(30, 2)
    kernel = LangevinKernel(model)
    mcmc = MCMC(kernel, num_samples=800, warmup_steps=150, disable_progbar=True)
    mcmc.run(x)
    assert kernel._row_dims == {"z": 0} and kernel._last_info["local"].is_accepted.shape == (30,)
    z = mcmc.get_samples()["z"]
    assert z.shape == (800, 30, 2) and (z > 0).all()
    log_z = z.log()
    post_var = 1 / (1 + 1 / sigma**2)
    post_mean = x / sigma**2 * post_var
    err = (log_z.mean(0) - post_mean) / mc_tolerance(log_z, torch.tensor(post_var).sqrt(), 1.0)
    assert err.abs().max() < 4.5 and err.mean().abs() < 4 / 60**0.5
    assert abs(log_z.var(0).mean() / post_var - 1) < 0.08


def test_rows_coupled_through_the_model_are_refused():
    def coupled(x):  # every row's mean is the mean of all rows' z: rows are not independent chains
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.mean().expand(len(x)), 1.0), obs=x)

    def total(x):  # an observation outside the plate depends on the local z
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.sample("sum", dist.Normal(z.sum(), 1.0), obs=x.sum())

    for model, match in ((coupled, "depends on other rows"), (total, "outside the data plate depends on the local site 'z'")):
        with pytest.raises(ValueError, match=match):
            MCMC(LangevinKernel(model), num_samples=2, warmup_steps=0, disable_progbar=True).run(torch.randn(5))


def test_batchnorm_in_train_mode_is_refused_on_the_fast_path():
    from tests.test_evaluation import linear_gaussian, sample_images

    model = linear_gaussian()
    x = sample_images(model, 4)
    model.generator = torch.nn.Sequential(model.generator, torch.nn.BatchNorm2d(x.shape[1]))
    model.train()
    with pytest.raises(ValueError, match="BatchNorm in train mode"):
        MCMC(LangevinKernel(model), num_samples=2, warmup_steps=0, disable_progbar=True).run(x)
    model.eval()
    MCMC(LangevinKernel(model), num_samples=2, warmup_steps=0, disable_progbar=True).run(x)


def test_subsampled_local_only_model_targets_the_minibatch_drawn_at_setup():
    def model(x):
        with pyro.plate("data", len(x), subsample_size=5) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])

    x = torch.linspace(-3, 3, 20)
    kernel = LangevinKernel(model)
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=200, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]
    idx = kernel.sites.plate.subsample
    assert z.shape == (1000, 5) and idx.shape == (5,)
    post_var = 1 / (1 + 1 / 0.5**2)
    post_mean = x[idx] / 0.5**2 * post_var  # the unscaled posterior of those 5 rows, the same minibatch every step
    assert ((z.mean(0) - post_mean).abs() < mc_tolerance(z, torch.tensor(post_var).sqrt())).all(), (z.mean(0), post_mean)
