"""Underdamped Langevin, OBABO (pyro_lfbm.infer.samplers.underdamped): the exact stationary variance of
the unadjusted scheme for every friction, γ = ∞ is ULA, and the adjusted form (generalised HMC) is exact,
in the driver and in Pyro's MCMC through LangevinKernel."""

import pytest
import torch
from pyro.infer import MCMC

from pyro_lfbm import LangevinGuide, LangevinKernel
from pyro_lfbm.infer import run_chain
from pyro_lfbm.infer.samplers import ULA
from pyro_lfbm.infer.samplers import underdamped
from pyro_lfbm.infer.samplers.underdamped import UnderdampedLangevin
from tests.test_langevin import FastLinearGaussian, LinearGaussian
from tests.test_samplers import SIGMA2, gaussian, long_run_variance


@pytest.mark.parametrize("friction", [1.0, 5.0])
def test_unadjusted_stationary_variance_is_the_derived_value_for_every_friction(friction):
    h = 1.5  # v = σ² / (1 - h²/(4σ²)) = 2.783, far from σ² = 2
    v = underdamped.stationary_variance(SIGMA2, h)
    assert v == pytest.approx(SIGMA2 / (1 - h**2 / (4 * SIGMA2)))
    assert long_run_variance(UnderdampedLangevin(friction=friction), h) == pytest.approx(v, abs=0.06)


def test_verlet_conserves_the_modified_energy_of_the_derivation():
    """The fact the stationary variance rests on: BAB on N(0, σ²) keeps p²/2 + (1 - h²/(4σ²)) z²/(2σ²)."""
    h, z, p = 1.3, torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)

    def energy(z, p):
        return p * p / 2 + (1 - h * h / (4 * SIGMA2)) * z * z / (2 * SIGMA2)

    start = energy(z, p)
    for _ in range(20):
        p = p - 0.5 * h * z / SIGMA2
        z = z + h * p
        p = p - 0.5 * h * z / SIGMA2
        assert float(energy(z, p)) == pytest.approx(float(start), rel=1e-12)


def test_momentum_is_stationary_standard_normal():
    chains = 4000
    state, _ = run_chain(lambda l: -0.5 * l["z"].pow(2).sum(-1) / SIGMA2, {"z": torch.zeros(chains, 1, dtype=torch.float64)},
                         200, 1.5, sampler=UnderdampedLangevin(friction=1.0), evaluate_final=True,
                         generator=torch.Generator().manual_seed(1))
    assert float(state.momentum["z"].var()) == pytest.approx(1.0, abs=0.08)


def test_infinite_friction_is_ula():
    z0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, _ = run_chain(gaussian, {"z": z0}, 1, 0.6, sampler=ULA(), generator=torch.Generator().manual_seed(1))
    sampler = UnderdampedLangevin(friction=float("inf"))
    state = sampler.init({"z": z0}, gaussian, generator=torch.Generator().manual_seed(9))
    b, _ = sampler.step(state, gaussian, 0.6, generator=torch.Generator().manual_seed(1), evaluate=False)
    torch.testing.assert_close(a.position["z"], b.position["z"], rtol=0, atol=1e-12)


def test_adjusted_form_is_exact():
    sampler = UnderdampedLangevin(friction=1.0, adjust=True)
    assert sampler.adjusted
    assert long_run_variance(sampler, 1.5) == pytest.approx(SIGMA2, abs=0.06)
    _, info = run_chain(gaussian, {"z": torch.zeros(50, 2, dtype=torch.float64)}, 30, 1.2, sampler=sampler,
                        track_acceptance=True, generator=torch.Generator().manual_seed(0))
    assert 0.2 < float(info.acceptance_prob.mean()) < 0.99  # the test rejects


def test_adjusted_kernel_matches_the_exact_posterior():
    lg = FastLinearGaussian(latent_dim=2, obs_dim=3, sigma=0.5)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    kernel = LangevinKernel(lg, step_size=0.2, sampler=UnderdampedLangevin(friction=1.0, adjust=True))
    mcmc = MCMC(kernel, num_samples=1500, warmup_steps=300, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]
    mean, cov = lg.posterior(x)
    assert (z.mean(0) - mean).abs().mean() < 0.05
    torch.testing.assert_close(z.var(0).mean(0), torch.diagonal(cov), rtol=0.12, atol=0)
    assert 0.3 < kernel.acceptance_rate < 1.0


def test_guide_runs_underdamped_chains_and_keeps_the_momentum():
    lg = LinearGaussian()
    x = torch.randn(4, 5)
    guide = LangevinGuide(lg.model, num_steps=20, step_size=0.3, sampler=UnderdampedLangevin(friction=2.0))
    z = guide.infer(x)["z"]
    assert z.shape == (4, 3) and torch.isfinite(z).all()
    assert set(guide.last_state.momentum) == {"z"}
    with pytest.raises(ValueError, match="friction"):
        UnderdampedLangevin(friction=0.0)
