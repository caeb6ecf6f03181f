"""LangevinKernel: dual-averaging step sizes during warmup, and divergences reported like NUTS."""

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import MCMC

from pyro_lfbm import LangevinKernel
from pyro_lfbm.infer.divergence import LangevinDivergenceError
from pyro_lfbm.infer.mala import MALA_OPTIMAL_ACCEPT_PROB


def rows_model(x):
    """z_b ~ N(0, I_2), x_b ~ N(A z_b, 0.3²): a Gaussian posterior per row, with unequal scales."""
    a = torch.tensor([[2.0, 0.0], [0.5, 1.0]], dtype=x.dtype)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ a.T, 0.3).to_event(1), obs=x)


def run(kernel, x, num_samples=300, warmup_steps=200):
    steps = []
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True,
                hook_fn=lambda k, params, stage, i: steps.append((stage, k.step_size)))
    mcmc.run(x)
    return mcmc, steps


@pytest.mark.parametrize("target", [MALA_OPTIMAL_ACCEPT_PROB, 0.85])
def test_warmup_adapts_the_step_size_to_the_target_acceptance_then_freezes_it(target):
    x = torch.randn(100, 2)
    kernel = LangevinKernel(rows_model, step_size=0.005, target_accept_prob=target)
    mcmc, steps = run(kernel, x)
    assert abs(kernel.acceptance_rate - target) < 0.06, (kernel.acceptance_rate, target)
    warm = [s for stage, s in steps if stage == "Warmup"]
    after = {s for stage, s in steps if stage == "Sample"}
    assert len(set(warm)) > 10 and len(after) == 1  # adapted during warmup, frozen afterwards
    assert after.pop() > 0.05  # far from the initial 0.005, which accepts nearly everything
    assert mcmc.diagnostics()["step size"]["chain 0"] == kernel.step_size


def test_higher_target_gives_a_smaller_step_and_no_adaptation_keeps_the_step():
    x = torch.randn(100, 2)
    sizes = {}
    for target in (0.4, 0.9):
        kernel = LangevinKernel(rows_model, step_size=0.1, target_accept_prob=target)
        run(kernel, x)
        sizes[target] = kernel.step_size
    assert sizes[0.9] < 0.7 * sizes[0.4], sizes
    fixed = LangevinKernel(rows_model, step_size=0.005, adapt_step_size=False)
    run(fixed, x, num_samples=50)
    assert fixed.step_size == 0.005 and fixed.acceptance_rate > 0.97
    # without warmup the given step size is used as it is, even when adapting
    kernel = LangevinKernel(rows_model, step_size=0.005)
    run(kernel, x, num_samples=5, warmup_steps=0)
    assert kernel.step_size == 0.005


def test_global_block_adapts_its_own_step_size():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    kernel = LangevinKernel(model, step_size=0.01, global_step_size=0.01)
    mcmc, _ = run(kernel, torch.randn(50) + 3.0, num_samples=600, warmup_steps=300)
    diag = mcmc.diagnostics()
    assert abs(diag["acceptance rate"]["chain 0"] - MALA_OPTIMAL_ACCEPT_PROB) < 0.08
    assert abs(diag["global acceptance rate"]["chain 0"] - MALA_OPTIMAL_ACCEPT_PROB) < 0.15
    # the global mean is pinned by 50 rows: its step size is its own, smaller than the rows'
    assert kernel.global_step_size < kernel.step_size


def wall_model(x):
    """log p has a factor log(2 - |z|): NaN beyond |z| = 2, a region a large step jumps into."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("wall", torch.log(2.0 - z.abs()))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


@pytest.mark.parametrize("adjust", [True, False])
def test_divergent_rows_are_rejected_counted_and_reported_like_nuts(adjust, capsys):
    x = torch.randn(40)
    kernel = LangevinKernel(wall_model, step_size=1.2, adjust=adjust, adapt_step_size=False)
    kernel.initial_params = {"z": torch.zeros(40)}
    counted = {"Warmup": 0, "Sample": 0}
    logged = []

    def hook(k, params, stage, i):
        counted[stage] += int(k._last_info["local"].is_divergent.sum())
        logged.append(k.logging()["divergences"])

    mcmc = MCMC(kernel, num_samples=100, warmup_steps=20, disable_progbar=True, hook_fn=hook)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]
    assert torch.isfinite(z).all() and (z.abs() < 2).all()  # diverged rows stayed at their last finite position
    diag = mcmc.diagnostics()
    divergences = diag["divergences"]["chain 0"]
    assert counted["Sample"] > 10 and len(divergences) == counted["Sample"]
    assert diag["warmup divergences"]["chain 0"] == counted["Warmup"] > 0
    assert all(0 <= i < 100 for i in divergences) and divergences == sorted(divergences)
    assert logged[-1] == str(counted["Warmup"] + counted["Sample"]) == str(kernel.num_divergences)
    mcmc.summary()
    assert f"Number of divergences: {counted['Sample']}" in capsys.readouterr().out


def test_small_steps_do_not_diverge():
    kernel = LangevinKernel(wall_model, step_size=0.05, adapt_step_size=False)
    kernel.initial_params = {"z": torch.zeros(40)}
    mcmc = MCMC(kernel, num_samples=50, warmup_steps=0, disable_progbar=True)
    mcmc.run(torch.randn(40))
    assert mcmc.diagnostics()["divergences"]["chain 0"] == []


def test_non_finite_initial_position_raises_before_sampling():
    kernel = LangevinKernel(wall_model)
    z0 = torch.zeros(40)
    z0[[3, 7]] = 3.0
    kernel.initial_params = {"z": z0}
    with pytest.raises(LangevinDivergenceError, match="2 of 40 rows"):
        MCMC(kernel, num_samples=5, warmup_steps=5, disable_progbar=True).run(torch.randn(40))


def test_bad_arguments_are_refused_at_construction():
    for kwargs, match in (({"step_size": 0.0}, "step_size"), ({"step_size": float("nan")}, "step_size"),
                          ({"target_accept_prob": 1.0}, "target_accept_prob"),
                          ({"global_step_size": -1.0}, "global_step_size")):
        with pytest.raises(ValueError, match=match):
            LangevinKernel(rows_model, **kwargs)


# ---------------------------------------------------------------------------------------------
# ULA (adjust=False): nothing is rejected, so the adapted step must keep the bias small
# ---------------------------------------------------------------------------------------------
ULA_SIGMA = 0.5  # z_b ~ N(0, 1), x_b ~ N(z_b, ULA_SIGMA²): p(z_b | x_b) = N(x_b / (1 + σ²), σ² / (1 + σ²))


def scalar_rows_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, ULA_SIGMA), obs=x)


def ula_variance_ratio(step_size=0.2, **kernel_kwargs):
    """(pooled posterior variance of 400 one-dimensional rows / the exact one, the kernel); the
    ratio's Monte Carlo error is about 1 % (1500 draws of each row, effective size ~ 80 at s = 0.2)."""
    x = torch.linspace(-2.0, 2.0, 400)
    kernel = LangevinKernel(scalar_rows_model, step_size=step_size, adjust=False, **kernel_kwargs)
    mcmc = MCMC(kernel, num_samples=1500, warmup_steps=300, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]  # (1500, 400)
    exact = ULA_SIGMA**2 / (1 + ULA_SIGMA**2)
    return z.var(0).mean().item() / exact, kernel


@pytest.mark.parametrize("step_size", [0.2, 0.4])
def test_ula_stationary_variance_is_the_exact_discretisation_bias(step_size):
    """For N(m, v) the move u + (s²/2)∇log p + s ξ is u ↦ (1 - s²/(2v)) u + s ξ around m, an AR(1)
    chain with stationary variance v / (1 - s²/(4v)): 5.3 % above v at s = 0.2, 25 % at s = 0.4."""
    ratio, kernel = ula_variance_ratio(step_size, adapt_step_size=False)
    v = ULA_SIGMA**2 / (1 + ULA_SIGMA**2)
    predicted = 1 / (1 - step_size**2 / (4 * v))
    assert kernel.step_size == step_size
    assert abs(ratio / predicted - 1) < 0.03, (ratio, predicted)


def test_ula_adapts_to_a_small_bias_by_default():
    """MALA's target 0.574 would give ULA a variance 20x the exact one here; the default ULA target
    (0.995) keeps it within 10 % (about 5 %), and the frozen step obeys the discretisation formula."""
    from pyro_lfbm.infer.kernel import ULA_TARGET_ACCEPT_PROB

    ratio, kernel = ula_variance_ratio()
    assert kernel.target_accept_prob == ULA_TARGET_ACCEPT_PROB == 0.995
    v = ULA_SIGMA**2 / (1 + ULA_SIGMA**2)
    predicted = 1 / (1 - kernel.step_size**2 / (4 * v))
    assert abs(ratio - 1) < 0.07 and abs(ratio / predicted - 1) < 0.03, (ratio, predicted, kernel.step_size)
    # MALA keeps its own default target
    assert LangevinKernel(scalar_rows_model).target_accept_prob == MALA_OPTIMAL_ACCEPT_PROB


def test_the_default_target_follows_the_sampler_not_the_adjust_flag():
    """``sampler=ULA()`` (or any unadjusted sampler) gets ULA's small-bias target; adjusted samplers MALA's."""
    from pyro_lfbm.infer.kernel import ULA_TARGET_ACCEPT_PROB
    from pyro_lfbm.infer.samplers import MALA, ULA
    from pyro_lfbm.infer.samplers.underdamped import UnderdampedLangevin

    assert LangevinKernel(scalar_rows_model, sampler=ULA()).target_accept_prob == ULA_TARGET_ACCEPT_PROB
    assert LangevinKernel(scalar_rows_model, sampler=MALA()).target_accept_prob == MALA_OPTIMAL_ACCEPT_PROB
    assert LangevinKernel(scalar_rows_model, sampler=UnderdampedLangevin()).target_accept_prob == ULA_TARGET_ACCEPT_PROB
    assert LangevinKernel(scalar_rows_model, sampler=ULA(), target_accept_prob=0.9).target_accept_prob == 0.9
