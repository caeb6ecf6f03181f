"""The guide's chain machinery: divergence guard, step_size="auto", persistent chains."""


import pytest
import torch
import pyro
import pyro.distributions as dist

from pyro_lfbm import GaussianPrior, LangevinGuide, LatentModel
from pyro_lfbm.infer import (
    DivergencePolicy,
    LangevinDivergenceError,
    find_latent_sites,
    langevin_move,
    run_chain,
    short_run_langevin,
)
from pyro_lfbm.infer.adaptation import StepSizeAdaptation, window_ends
from pyro_lfbm.infer.langevin import MAX_LOG_DENSITY_DROP
from pyro_lfbm.nets import MNISTGenerator
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.svi import OptimConfig, fit
from tests.test_guide_idioms import LinearGaussian, _repeated_obs_model


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------
def quartic(curvature):
    """log p(z) = -c_b z_b⁴ per row: large steps overflow float32 after a few moves."""
    return lambda latents: -(curvature * latents["z"].pow(4).sum(-1))


def test_divergence_raises_naming_site_step_step_size_and_rows():
    c = torch.tensor([1.0, 1.0, 1e6, 1e6, 1.0])
    with pytest.raises(LangevinDivergenceError, match=r"at step \d+ of 10 \(step size 0\.5\): .* in 2 of 5 rows"):
        run_chain(quartic(c), {"z": torch.ones(5, 1)}, 10, 0.5, noise=False)

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.factor("stiff", -1e8 * z**4)

    with pytest.raises(LangevinDivergenceError, match=r"LangevinGuide chain over site\(s\) \['z'\] diverged at step \d+ of 20 \(step size 1\).* in \d of 3 rows"):
        LangevinGuide(model, num_steps=20, step_size=1.0)(torch.zeros(3))
    # the default short_run_langevin checks too, and so does the early-stopping loop
    with pytest.raises(LangevinDivergenceError):
        short_run_langevin(quartic(c), {"z": torch.ones(5, 1)}, 10, 0.5, noise=False)
    with pytest.raises(LangevinDivergenceError):
        short_run_langevin(quartic(c), {"z": torch.ones(5, 1)}, 10, 0.5, noise=False, tolerance=1e-6)


def test_backoff_returns_diverged_rows_to_their_last_finite_position_and_halves_their_step():
    c = torch.tensor([1.0, 1e3, 1.0, 1e3])
    z0 = torch.ones(4, 1)
    policy = DivergencePolicy("backoff", max_log_density_drop=MAX_LOG_DENSITY_DROP)
    state, info = run_chain(quartic(c), {"z": z0}, 12, 0.5, noise=False, on_divergence=policy, evaluate_final=True)
    z = state.position["z"]
    assert torch.isfinite(z).all()
    assert info.divergences.tolist()[0] == 0 and info.divergences.tolist()[2] == 0
    assert (info.divergences[[1, 3]] > 0).all()
    assert torch.equal(info.step_size, 0.5 / 2.0 ** info.divergences.to(info.step_size.dtype))
    # Replay by hand: a move to a non-finite log density, or one that lowers it by more than 1000,
    # is undone (the row stays put) and the row's step halves.
    for row in range(4):
        zr, s, backoffs = z0[row].clone(), 0.5, 0
        for _ in range(12):
            new = langevin_move(zr, -4 * c[row] * zr**3, s, noise=False)
            before, after = -c[row] * zr.pow(4).sum(), -c[row] * new.pow(4).sum()
            if torch.isfinite(after) and torch.isfinite(-4 * c[row] * new**3).all() and before - after <= 1000:
                zr = new
            else:
                s, backoffs = s / 2, backoffs + 1
        assert backoffs == int(info.divergences[row]), row
        assert torch.allclose(z[row], zr), (row, z[row], zr)


def test_backoff_gives_up_after_max_backoffs():
    def only_at_one(latents):  # finite at z = 1 only: every move diverges
        z = latents["z"]
        return torch.where(z == 1.0, -(z**2), torch.full_like(z, float("nan"))).sum(-1)

    policy = DivergencePolicy("backoff", max_backoffs=2)
    state, info = run_chain(only_at_one, {"z": torch.ones(2, 1)}, 2, 0.5, noise=False, on_divergence=policy,
                            evaluate_final=True)
    assert torch.equal(state.position["z"], torch.ones(2, 1)) and info.divergences.tolist() == [2, 2]
    with pytest.raises(LangevinDivergenceError, match="halved the maximum number of times"):
        run_chain(only_at_one, {"z": torch.ones(2, 1)}, 3, 0.5, noise=False, on_divergence=policy, evaluate_final=True)


def test_guide_backoff_counts_divergences_and_returns_finite_latents():
    def model(x):
        with pyro.plate("data", 6):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.factor("stiff", -x * z**2)

    # rows with x = 1e4 have posterior sd 0.007 and need s < 0.014: s = 0.5 explodes there
    x = torch.tensor([0.01, 1e4, 0.01, 1e4, 0.01, 0.01])
    guide = LangevinGuide(model, num_steps=30, step_size=0.5,
                          on_divergence=DivergencePolicy("backoff", max_log_density_drop=1000.0))
    z = guide(x)["z"]
    info = guide.last_info
    assert guide.divergences == int(info.divergences.sum()) > 0
    assert (info.divergences[[0, 2, 4, 5]] == 0).all() and (info.divergences[[1, 3]] > 0).all()
    assert torch.equal(info.step_size, 0.5 / 2.0 ** info.divergences.to(info.step_size.dtype))
    assert (info.step_size[[1, 3]] < (2 / 1e4) ** 0.5).all()  # halved into the stable range s < sqrt(2 / x)
    assert torch.isfinite(z).all() and (z[[1, 3]].abs() < 0.05).all()
    with pytest.raises(LangevinDivergenceError, match="fell by more than 1000 in one move"):
        LangevinGuide(model, num_steps=30, step_size=0.5, on_divergence=DivergencePolicy(max_log_density_drop=1000.0))(x)
    with pytest.raises(ValueError, match="on_divergence"):
        LangevinGuide(model, on_divergence="ignore")
    with pytest.raises(ValueError, match="on_divergence"):
        run_chain(quartic(torch.ones(2)), {"z": torch.ones(2, 1)}, 1, 0.1, on_divergence=None)
    for bad, match in [(dict(max_backoffs=-1), "max_backoffs"), (dict(max_backoffs=True), "max_backoffs"),
                       (dict(max_log_density_drop=0.0), "max_log_density_drop"),
                       (dict(max_log_density_drop="1000"), "max_log_density_drop")]:
        with pytest.raises(ValueError, match=match):
            DivergencePolicy("backoff", **bad)


def test_a_large_finite_drop_is_not_a_divergence_by_default():
    """A finite drop of the log density, however large, is not a divergence unless asked for: the
    paper's chain from N(0, I) on MNIST (σ = 0.3, s = 0.1) loses more than 1000 in some early
    moves and recovers. Here the stationary noise alone lowers log p by more than 1 per move."""
    def model(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.factor("stiff", -x * z**2)

    x = torch.tensor([1e4, 1e4])  # s = 0.0135 is stable (s < sqrt(2 / x)); z0 ~ N(0, 1) starts far out
    torch.manual_seed(0)
    z = LangevinGuide(model, num_steps=30, step_size=0.0135)(x)["z"]
    assert torch.isfinite(z).all() and (z.abs() < 0.1).all()
    torch.manual_seed(0)
    with pytest.raises(LangevinDivergenceError, match="fell by more than 1 in one move"):
        LangevinGuide(model, num_steps=30, step_size=0.0135, on_divergence=DivergencePolicy(max_log_density_drop=1.0))(x)


# ---------------------------------------------------------------------------------------------
# step_size="auto"
# ---------------------------------------------------------------------------------------------
def _acceptance_at(model, x, step, seed=123):
    sites = find_latent_sites(model, (x,), {})
    fn = LangevinGuide(model).log_density_fn(sites, (x,), {})
    torch.manual_seed(seed)
    _, info = run_chain(fn, {"z": torch.randn(x.shape[0], 2)}, 20, step, track_acceptance=True,
                        on_divergence="backoff")
    return float(info.acceptance_prob.mean())


@pytest.mark.parametrize("target", [0.75, 0.9])
def test_auto_step_size_reaches_its_target_acceptance_then_freezes(target):
    lg = LinearGaussian()
    model = _repeated_obs_model(lg)
    x = torch.randn(200, 3) * 2
    guide = LangevinGuide(model, num_steps=20, step_size=StepSizeAdaptation(target, num_updates=50))
    for _ in range(50):
        guide.infer(x)
    assert not guide.adapting and guide.adaptation.updates == 50
    frozen = guide.step_size
    assert abs(_acceptance_at(model, x, frozen) - target) < 0.05, (frozen, _acceptance_at(model, x, frozen))
    guide.infer(x)
    assert guide.step_size == frozen  # frozen: no more updates
    # recorded in the state dict; a fresh guide that loads it goes on with the frozen step
    other = LangevinGuide(model, num_steps=20, step_size=StepSizeAdaptation(target, num_updates=50))
    other.load_state_dict(guide.state_dict())
    assert other.step_size == frozen and not other.adapting


def far_posterior_model(x):
    """z_b ~ N(0, 10²), x_b ~ N(z_b, 1): p(z_b | x_b) = N(100 x_b / 101, 100 / 101), far from the
    chain's N(0, 1) start. 20 steps of the paper's s = 0.1 cover a Langevin time of 0.1 and leave z
    near its start; an adapted step reaches the posterior mean."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_the_default_step_size_adapts_and_reaches_a_posterior_a_fixed_small_step_does_not():
    x = torch.full((400,), 8.0)
    mean = 100 * 8.0 / 101
    guide = LangevinGuide(far_posterior_model)  # no step size: "auto"
    assert guide.auto and guide.adapting and guide.num_steps == 20
    for _ in range(40):
        z = guide.infer(x)["z"]
    assert guide.step_size > 0.5 and abs(z.mean().item() - mean) < 0.15, (guide.step_size, z.mean())
    fixed = LangevinGuide(far_posterior_model, step_size=0.1).infer(x)["z"]
    assert abs(fixed.mean().item() - mean) > 5.0
    # gradient ascent has no acceptance rate to adapt to: its default is the paper's test-time 0.1
    for kwargs in ({"noise": False}, {"noise": False, "tolerance": 1e-3}):
        ascent = LangevinGuide(far_posterior_model, **kwargs)
        assert not ascent.auto and ascent.step_size == 0.1


def test_presets_pass_the_papers_step_size_explicitly():
    """Changing the guide's default does not change the paper's runs: every preset's guide keeps 0.1."""
    from pyro_lfbm.train.presets import PRESETS, PRIORS, get_preset
    from pyro_lfbm.train.recipe import build

    for name in PRESETS:
        for prior in PRIORS:
            learn = get_preset(name, prior).learn
            assert learn.step_size == learn.test_step_size == 0.1, (name, prior)
    recipe = build(get_preset("tiny", "flow"))  # the recipe hands the preset's step to the guide
    assert isinstance(recipe.guide, LangevinGuide) and not recipe.guide.auto and recipe.guide.step_size == 0.1


def test_auto_step_size_validation_and_windows():
    with pytest.raises(ValueError, match="noise=True"):
        LangevinGuide(lambda x: None, step_size="auto", noise=False)
    with pytest.raises(ValueError, match="'auto'"):
        LangevinGuide(lambda x: None, step_size="adaptive")
    with pytest.raises(ValueError, match="target_accept_prob"):
        StepSizeAdaptation(target_accept_prob=1.5)
    with pytest.raises(ValueError, match="num_updates"):
        StepSizeAdaptation(num_updates=0)
    with pytest.raises(ValueError, match="noise=True"):
        LangevinGuide(lambda x: None, step_size=StepSizeAdaptation(), noise=False)
    assert sorted(window_ends(200)) == [10, 30, 70]  # windows of 10, 20, 40, then 130 to the end
    assert sorted(window_ends(25)) == []


# ---------------------------------------------------------------------------------------------
# Persistent chains
# ---------------------------------------------------------------------------------------------
def test_persistent_chain_continues_from_the_last_latents_of_each_example():
    lg = LinearGaussian()
    model = _repeated_obs_model(lg)
    X = torch.randn(8, 3) * 2
    z0 = torch.randn(8, 2)
    init = lambda x, pos=None: {"z": z0[guide_positions[0]]}  # noqa: E731  (unseen rows start here)
    guide_positions = [None]

    def call(guide, positions):
        guide_positions[0] = positions
        guide.set_positions(positions)
        return guide.infer(X[positions])["z"]

    guide = LangevinGuide(model, num_steps=5, step_size=0.1, noise=False, init=init, persistent=8)
    first = torch.arange(0, 4)
    call(guide, first)
    mixed = torch.tensor([2, 3, 4, 5])  # rows 2, 3 seen before, rows 4, 5 new
    z = call(guide, mixed)
    # noise-free: 5 + 5 steps from z0 for the seen rows, 5 steps from z0 for the new ones
    ten = LangevinGuide(model, num_steps=10, step_size=0.1, noise=False, init=lambda x: {"z": z0[[2, 3]]}).infer(X[[2, 3]])["z"]
    five = LangevinGuide(model, num_steps=5, step_size=0.1, noise=False, init=lambda x: {"z": z0[[4, 5]]}).infer(X[[4, 5]])["z"]
    assert torch.allclose(z[:2], ten, atol=1e-6) and torch.allclose(z[2:], five, atol=1e-6)
    assert guide.chains.num_visited == 6
    with pytest.raises(ValueError, match="set_positions"):
        LangevinGuide(model, persistent=8).infer(X[:4])
    with pytest.raises(ValueError, match="4 positions were set for a batch of 3"):
        g = LangevinGuide(model, persistent=8)
        g.set_positions(torch.arange(4))
        g.infer(X[:3])


def test_persistent_chains_use_a_subsampled_data_plate_indices():
    lg = LinearGaussian()
    X = torch.randn(50, 3)

    def model(X, idx):
        with pyro.plate("data", 50, subsample=idx):
            z = pyro.sample("z", lg.prior())
            pyro.sample("x", lg.likelihood(z), obs=X[idx])

    guide = LangevinGuide(model, num_steps=2, step_size=0.1, persistent=50)
    guide(X, torch.tensor([3, 7, 9]))
    assert guide.chains.visited.nonzero().flatten().tolist() == [3, 7, 9]
    assert torch.equal(guide.chains.values["z"][[3, 7, 9]], guide.latents["z"])


def test_persistent_chains_are_saved_and_training_resumes_exactly(tmp_path):
    """fit() passes dataset positions; 2 epochs straight == 1 epoch, checkpoint, resume for the 2nd."""
    x = torch.rand(12, 1, 28, 28) * 2 - 1

    def run(epochs, resume, path):
        pyro.clear_param_store()
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        model = LatentModel(GaussianPrior(3), MNISTGenerator(3, hidden_dim=8, channels=2, batch_norm=False))
        guide = LangevinGuide(model, num_steps=3, step_size=0.1, persistent=12)
        fit(model, guide, x, epochs=epochs, batch_size=4, optim=OptimConfig(lr=1e-3),
            checkpoint=Checkpointing(path, resume), progress=False)
        return model, guide

    straight_model, straight = run(2, False, tmp_path / "a.pt")
    run(1, False, tmp_path / "b.pt")
    resumed_model, resumed = run(2, True, tmp_path / "b.pt")
    assert straight.chains.num_visited == 12
    assert torch.equal(straight.chains.values["z"], resumed.chains.values["z"])
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
