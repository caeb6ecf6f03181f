"""The samplers (pyro_lfbm.infer.samplers) and the one chain driver (pyro_lfbm.infer.chain):
ULA and MALA reproduce hand-written references bit for bit, plug into the guide and the kernel,
and each unadjusted scheme's long-run variance on N(0, σ²) is its exact, derived stationary variance."""


import pyro
import pytest
import torch
from pyro.infer import MCMC

from pyro_lfbm import LangevinGuide, LangevinKernel
from pyro_lfbm.infer import DivergencePolicy, LangevinDivergenceError, run_chain
from pyro_lfbm.infer.samplers import MALA, ULA
from pyro_lfbm.infer.samplers import ula as ula_module
from tests.test_langevin import FastLinearGaussian, LinearGaussian

PRECISION = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)


def gaussian(latents):
    """Rows z_b ~ N(0, P⁻¹) (B,)."""
    z = latents["z"]
    return -0.5 * ((z @ PRECISION) * z).sum(-1)


def grad_gaussian(z):
    return -(z @ PRECISION)


def reference_ula(z, steps, s, generator):
    """The paper's update written out: z + s²/2 ∇log p + s ξ."""
    for _ in range(steps):
        z = z + 0.5 * s**2 * grad_gaussian(z) + s * torch.randn(z.shape, generator=generator, dtype=z.dtype)
    return z


def reference_mala(z, steps, s, generator):
    """MALA written out from its definition: the ULA proposal, then one uniform per row."""
    def log_q(a, b):  # log q(a | b) per row, up to a constant
        return -((a - b - 0.5 * s**2 * grad_gaussian(b)) ** 2).sum(-1) / (2 * s**2)

    accepted_total = torch.zeros(z.shape[0], dtype=z.dtype)
    for _ in range(steps):
        proposal = z + 0.5 * s**2 * grad_gaussian(z) + s * torch.randn(z.shape, generator=generator, dtype=z.dtype)
        log_alpha = gaussian({"z": proposal}) - gaussian({"z": z}) + log_q(z, proposal) - log_q(proposal, z)
        accept = torch.rand(z.shape[0], generator=generator, dtype=z.dtype).log() < log_alpha
        z = torch.where(accept[:, None], proposal, z)
        accepted_total += accept
    return z, accepted_total


def test_ula_in_the_driver_is_the_hand_written_loop_bit_for_bit():
    z0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state, info = run_chain(gaussian, {"z": z0}, 30, 0.7, sampler=ULA(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(state.position["z"], reference_ula(z0, 30, 0.7, torch.Generator().manual_seed(1)))
    assert info.gradient_evaluations == 30  # the last move is not evaluated
    default, _ = run_chain(gaussian, {"z": z0}, 30, 0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(default.position["z"], state.position["z"])


def test_mala_in_the_driver_is_the_hand_written_algorithm_bit_for_bit():
    z0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state, info = run_chain(gaussian, {"z": z0}, 40, 1.1, sampler=MALA(), generator=torch.Generator().manual_seed(2),
                            track_acceptance=True)
    expected, accepted = reference_mala(z0, 40, 1.1, torch.Generator().manual_seed(2))
    assert torch.equal(state.position["z"], expected)
    assert 0 < int(accepted.sum()) < 6 * 40  # the step is large enough for both outcomes
    assert torch.allclose(state.log_density, gaussian(state.position))  # evaluated at the kept position
    assert info.gradient_evaluations == 41 and info.acceptance_prob.shape == (6,)


def test_guide_and_kernel_take_a_sampler_and_the_defaults_are_ula_and_mala():
    lg = FastLinearGaussian()
    x = torch.randn(5, 5)
    runs = []
    for sampler in (None, ULA()):
        pyro.set_rng_seed(3)
        runs.append(LangevinGuide(lg, num_steps=10, sampler=sampler).infer(x)["z"])
    assert torch.equal(runs[0], runs[1])
    pyro.set_rng_seed(3)
    guide = LangevinGuide(lg, num_steps=10, step_size=0.4, sampler=MALA())
    z = guide.infer(x)["z"]
    pyro.set_rng_seed(3)
    z0 = torch.randn(5, 3)
    state, _ = run_chain(lambda l: lg.log_joint(x, **l), {"z": z0}, 10, 0.4, sampler=MALA())
    assert torch.equal(z, state.position["z"])
    with pytest.raises(ValueError, match="sampler=ULA\\(noise=False\\)"):
        LangevinGuide(lg, noise=False, sampler=MALA())

    samples = {}
    for name, kwargs in (("mala", {}), ("mala_given", {"sampler": MALA()}), ("ula", {"adjust": False}),
                         ("ula_given", {"sampler": ULA()})):
        pyro.set_rng_seed(6)
        kernel = LangevinKernel(LinearGaussian().model, step_size=0.3, target_accept_prob=0.574, **kwargs)
        mcmc = MCMC(kernel, num_samples=20, warmup_steps=10, disable_progbar=True)
        mcmc.run(x)
        samples[name] = mcmc.get_samples()["z"]
    assert torch.equal(samples["mala"], samples["mala_given"])
    assert torch.equal(samples["ula"], samples["ula_given"])
    assert not torch.equal(samples["mala"], samples["ula"])


def test_backoff_works_for_any_sampler_and_raise_names_the_step():
    c = torch.tensor([1.0, 1.0, 40.0, 40.0, 1.0])

    def quartic(latents):
        return -(c * latents["z"].pow(4).sum(-1))

    for sampler in (ULA(), MALA()):
        with pytest.raises(LangevinDivergenceError, match=r"at step \d+ of 12"):
            run_chain(quartic, {"z": torch.ones(5, 1)}, 12, 0.5, sampler=sampler,
                      on_divergence=DivergencePolicy(max_log_density_drop=1e3), generator=torch.Generator().manual_seed(0))
        backoff = DivergencePolicy("backoff", max_backoffs=30, max_log_density_drop=1e3)
        state, info = run_chain(quartic, {"z": torch.ones(5, 1)}, 12, 0.5, sampler=sampler, on_divergence=backoff,
                                generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(state.position["z"]).all()
        assert info.divergences[[0, 1, 4]].eq(0).all() and info.divergences[[2, 3]].gt(0).all()
        assert torch.allclose(info.step_size, 0.5 * 0.5 ** info.divergences.float())


# ---------------------------------------------------------------------------------------------
# Stationary variances on N(0, σ²)
# ---------------------------------------------------------------------------------------------
SIGMA2 = 2.0


def long_run_variance(sampler, step_size, chains=4000, burn=100, keep=300, seed=0):
    """The empirical variance of ``chains`` 1-d chains on N(0, σ²), pooled over ``keep`` steps after ``burn``."""
    moments = []

    def record(k, state):
        if k > burn:
            moments.append(state.position["z"].pow(2).mean())

    run_chain(lambda l: -0.5 * l["z"].pow(2).sum(-1) / SIGMA2, {"z": torch.zeros(chains, 1, dtype=torch.float64)},
              burn + keep + 1, step_size, sampler=sampler, generator=torch.Generator().manual_seed(seed),
              callback=record)
    return float(torch.stack(moments[:keep]).mean())


def test_ula_stationary_variance_is_the_derived_biased_value():
    s = 1.5  # h = s² = 2.25: v = σ² / (1 - h / (4σ²)) = 2.783, far from σ² = 2
    v = ula_module.stationary_variance(SIGMA2, s)
    assert v == pytest.approx(SIGMA2 / (1 - s**2 / (4 * SIGMA2)))
    # the AR(1) recursion z' = (1 - h/(2σ²)) z + s ξ: v = h / (1 - a²)
    a = 1 - s**2 / (2 * SIGMA2)
    assert v == pytest.approx(s**2 / (1 - a * a))
    assert long_run_variance(ULA(), s) == pytest.approx(v, abs=0.04)
    with pytest.raises(ValueError, match="stable"):
        ula_module.stationary_variance(SIGMA2, 3.0)


def test_mala_long_run_variance_is_exact():
    assert long_run_variance(MALA(), 1.5) == pytest.approx(SIGMA2, abs=0.05)
