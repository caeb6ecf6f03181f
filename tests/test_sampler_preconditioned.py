"""Preconditioned Langevin (pyro_lfbm.infer.samplers.preconditioned): exact stationary variance with a
fixed preconditioner, G = 1 reproduces ULA, and pSGLD's adaptive G reaches a badly scaled posterior
that ULA at its largest stable step does not."""

import pytest
import torch

from pyro_lfbm import LangevinGuide
from pyro_lfbm.infer import run_chain
from pyro_lfbm.infer.samplers import ULA
from pyro_lfbm.infer.samplers import preconditioned
from pyro_lfbm.infer.samplers.preconditioned import PreconditionedLangevin
from tests.test_langevin import FastLinearGaussian
from tests.test_samplers import SIGMA2, gaussian, long_run_variance


def test_fixed_preconditioner_stationary_variance_is_the_derived_value():
    s, g = 2.0, 0.5  # s²G = 2: v = σ² / (1 - s²G / (4σ²)) = 2.667
    v = preconditioned.stationary_variance(SIGMA2, s, g)
    assert v == pytest.approx(SIGMA2 / (1 - s**2 * g / (4 * SIGMA2)))
    assert long_run_variance(PreconditionedLangevin(inverse_mass=g), s) == pytest.approx(v, abs=0.04)


def test_unit_preconditioner_is_ula():
    z0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, _ = run_chain(gaussian, {"z": z0}, 20, 0.6, sampler=ULA(), generator=torch.Generator().manual_seed(1))
    b, _ = run_chain(gaussian, {"z": z0}, 20, 0.6, sampler=PreconditionedLangevin(inverse_mass=1.0),
                     generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.position["z"], b.position["z"], rtol=0, atol=1e-12)


def test_psgld_reaches_a_badly_scaled_gaussian_that_ula_does_not():
    """N(0, diag(0.1², 10²)): ULA is stable only for s < 2 · 0.1; pSGLD's G ≈ 1/√E[g²] ∝ σ per
    coordinate. Its adaptive G makes it biased (the dropped Γ term, and G follows z): about 10 %
    on the large coordinate at α = 0.999 (about 50 % at pSGLD's α = 0.99)."""
    scale = torch.tensor([0.1, 10.0], dtype=torch.float64)

    def fn(latents):
        return -0.5 * (latents["z"] / scale).pow(2).sum(-1)

    z0 = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sampler = PreconditionedLangevin(alpha=0.999)
    state, info = run_chain(fn, {"z": z0}, 1500, 0.3, sampler=sampler, generator=torch.Generator().manual_seed(0))
    var = state.position["z"].var(0)
    assert var[1] == pytest.approx(100.0, rel=0.2)
    assert 0.01 < float(var[0]) < 0.016  # G[0] s² / (4σ²) < 1/3: at most ULA's bias at that step
    g = sampler.preconditioner("z", state.position["z"], state.second_moment).mean(0)
    assert float(g[1] / g[0]) > 50  # the preconditioner separates the scales
    ula, _ = run_chain(fn, {"z": z0}, 1500, 0.19, generator=torch.Generator().manual_seed(0))
    assert ula.position["z"].var(0)[1] < 60.0  # still far from 100


def test_guide_runs_the_preconditioned_sampler():
    lg = FastLinearGaussian()
    x = torch.randn(4, 5)
    guide = LangevinGuide(lg, num_steps=500, step_size=0.2, sampler=PreconditionedLangevin(inverse_mass=1.0))
    torch.manual_seed(0)
    z = guide.infer(x)["z"]
    assert z.shape == (4, 3) and torch.isfinite(z).all()
    assert type(guide.last_state).__name__ == "PreconditionedState"


def test_checks():
    with pytest.raises(ValueError, match="alpha"):
        PreconditionedLangevin(alpha=1.5)
    with pytest.raises(ValueError, match="inverse_mass"):
        PreconditionedLangevin(inverse_mass=-1.0)
