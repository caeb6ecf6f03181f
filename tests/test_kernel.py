import torch
from pyro.infer import MCMC

from pyro_lfbm import LangevinKernel
from tests.test_langevin import FastLinearGaussian, LinearGaussian


def test_mala_per_example_acceptance_and_conjugate_posterior():
    lg = FastLinearGaussian(latent_dim=4, obs_dim=6, sigma=0.5)
    model = lg
    x = torch.randn(100, 6)  # batch 100: a single global accept/reject would almost never accept
    kernel = LangevinKernel(model, step_size=0.25, adjust=True)
    mcmc = MCMC(kernel, num_samples=2000, warmup_steps=300, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]  # (S, B, D)
    assert z.shape == (2000, 100, 4)
    assert kernel.acceptance_rate > 0.5, kernel.acceptance_rate
    mean, cov = lg.posterior(x)
    # posterior means of all 100 examples, and the shared posterior variances
    assert (z.mean(0) - mean).abs().mean() < 0.08
    assert (z.mean(0) - mean).mean().abs() < 0.03  # no systematic shift
    assert torch.allclose(z.var(0).mean(0), torch.diagonal(cov), rtol=0.12), (z.var(0).mean(0), torch.diagonal(cov))


def test_generic_path_kernel_equals_fast_path_kernel():
    fast = FastLinearGaussian(4, 6, 0.5)
    x = torch.randn(10, 6)
    runs = []
    for model in (fast, fast.model):
        kernel = LangevinKernel(model, step_size=0.25, adjust=True)
        kernel.initial_params = {"z": torch.zeros(10, 4)}
        torch.manual_seed(1)
        mcmc = MCMC(kernel, num_samples=30, warmup_steps=0, disable_progbar=True)
        mcmc.run(x)
        assert kernel._fast == (model is fast)
        runs.append(mcmc.get_samples()["z"])
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


def test_global_rejection_would_collapse_but_per_example_does_not():
    """The same step size with per-example MH keeps acceptance flat as the batch grows."""
    lg = LinearGaussian(4, 6, 0.5)
    rates = []
    for batch in (1, 100):
        kernel = LangevinKernel(lg.model, step_size=0.25, adjust=True, adapt_step_size=False)
        MCMC(kernel, num_samples=200, warmup_steps=50, disable_progbar=True).run(torch.randn(batch, 6))
        rates.append(kernel.acceptance_rate)
    assert abs(rates[0] - rates[1]) < 0.15, rates


def test_unadjusted_kernel_always_moves():
    lg = LinearGaussian()
    kernel = LangevinKernel(lg.model, step_size=0.1, adjust=False)
    mcmc = MCMC(kernel, num_samples=50, warmup_steps=10, disable_progbar=True)
    mcmc.run(torch.randn(3, 5))
    assert kernel.acceptance_rate == 1.0
    z = mcmc.get_samples()["z"]
    assert (z[1:] != z[:-1]).all()


def test_mala_reference_adapts_its_step_and_matches_the_exact_posterior():
    from pyro_lfbm.infer.baselines import mala_reference
    from pyro_lfbm.infer.mala import MALA_OPTIMAL_ACCEPT_PROB
    from tests.test_evaluation import exact_posterior, linear_gaussian, sample_images

    model = linear_gaussian()
    x = sample_images(model, 6)
    mean, cov = exact_posterior(model, x)
    ref = mala_reference(model, x, num_samples=600, warmup_steps=200, step_size=0.01, progress=False)
    assert ref.samples.shape == (600, 6, 2)
    assert abs(ref.acceptance_rate - MALA_OPTIMAL_ACCEPT_PROB) < 0.1 and ref.step_size > 0.05  # adapted from 0.01
    assert ref.divergences == 0
    # one evaluation per iteration, plus the initial check and the step-size search (a few)
    assert 800 < ref.gradient_evaluations < 800 + 30
    assert torch.allclose(ref.samples.mean(0), mean, atol=0.12)
    assert torch.allclose(ref.samples.var(0).mean(0), cov.diagonal(), rtol=0.2)


def test_float64_latent_model_runs_in_float64_end_to_end():
    from tests.test_evaluation import linear_gaussian, sample_images

    model = linear_gaussian()
    x = sample_images(model, 4)
    model = model.double()
    kernel = LangevinKernel(model)
    mcmc = MCMC(kernel, num_samples=20, warmup_steps=20, disable_progbar=True)
    mcmc.run(x.double())
    assert kernel._fast  # LatentModel.log_joint
    assert kernel.initial_params["z"].dtype == torch.float64
    info = kernel._last_info["local"]
    assert info.acceptance_prob.dtype == info.proposal.log_density.dtype == torch.float64
    assert mcmc.get_samples()["z"].dtype == torch.float64
