"""Speed features must not change results (issue 6).

The fast path (``model.log_joint``), the generic Pyro-trace path and the anchor-style reference
loop of ``benchmarks.anchor`` (two ``autograd.grad`` per step, float64 determinant)
give the same Langevin trajectory on the same start and noise; so do early stopping with a zero
tolerance and the compiled step.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_lfbm import FlowPrior, LangevinGuide, LatentModel
from pyro_lfbm.infer import find_latent_sites, per_example_log_joint, short_run_langevin
from pyro_lfbm.infer.accelerate import CompiledLangevin
from pyro_lfbm.nets import MNISTGenerator
from pyro_lfbm.transforms import LULinear
import benchmarks

ATOL = 2e-5


def _bench():
    return benchmarks


def _model(latent_dim=6, seed=0):
    """A small LFBM with every flow parameter perturbed away from its identity initialisation."""
    torch.manual_seed(seed)
    model = LatentModel(FlowPrior(latent_dim, num_steps=2, hidden_dim=16), MNISTGenerator(latent_dim, hidden_dim=32, channels=8))
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _generic(model):
    def pyro_model(x, mask=None):
        return model(x, mask)

    return pyro_model


def _data(batch=5, latent_dim=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1, torch.randn(batch, latent_dim, generator=g)


@pytest.mark.parametrize("noise", [True, False])
def test_fast_generic_and_anchor_loops_give_the_same_trajectory(noise):
    bench = _bench()
    model = _model()
    x, z0 = _data()
    steps, s = 15, 0.1
    sites = find_latent_sites(model, (x,), {})
    runs = {}
    fast = lambda lat: model.log_joint(x, z=lat["z"])  # noqa: E731
    generic = lambda lat: per_example_log_joint(_generic(model), lat, (x,), {}, sites.plate)  # noqa: E731
    for name, fn in [("fast", fast), ("generic", generic)]:
        gen = torch.Generator().manual_seed(7)
        runs[name] = short_run_langevin(fn, {"z": z0}, steps, s, noise=noise, generator=gen).position["z"]
    gen = torch.Generator().manual_seed(7)
    flow = bench.AnchorFlow(model.prior)
    runs["anchor"] = bench.anchor_langevin(model.generator, flow, x, z0, steps, s, model.sigma, noise=noise, rng=gen)
    assert (runs["fast"] - z0).abs().max() > 0.01  # the chain moved
    torch.testing.assert_close(runs["generic"], runs["fast"], atol=ATOL, rtol=0)
    torch.testing.assert_close(runs["anchor"], runs["fast"], atol=ATOL, rtol=0)


def test_guide_fast_and_generic_paths_agree_and_restore_parameters():
    model = _model()
    x, z0 = _data()
    out = {}
    for name, m in [("fast", model), ("generic", _generic(model))]:
        guide = LangevinGuide(m, num_steps=12, step_size=0.1, init=lambda x: {"z": z0})
        assert guide.uses_fast_path == (name == "fast")
        pyro.set_rng_seed(3)
        out[name] = guide.infer(x)["z"]
    torch.testing.assert_close(out["generic"], out["fast"], atol=ATOL, rtol=0)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after the chain
    assert pyro.enable_validation  # validation state untouched
    from pyro.infer.util import is_validation_enabled

    assert is_validation_enabled()


def test_anchor_log_density_equals_the_flow_prior():
    bench = _bench()
    model = _model()
    _, z = _data()
    torch.testing.assert_close(bench.AnchorFlow(model.prior).log_prob(z), model.prior.log_prob(z), atol=1e-4, rtol=1e-5)


def test_zero_tolerance_is_the_plain_loop_and_stopped_rows_do_not_move():
    model = _model()
    x, z0 = _data(batch=6)
    plain = LangevinGuide(model, num_steps=10, noise=False, init=lambda x: {"z": z0}).infer(x)["z"]
    guide = LangevinGuide(model, num_steps=10, noise=False, init=lambda x: {"z": z0}, tolerance=0.0)
    torch.testing.assert_close(guide.infer(x)["z"], plain, atol=ATOL, rtol=0)
    assert guide.last_state.steps.tolist() == [10] * 6
    # a huge tolerance stops every row at its first evaluation
    stopped = LangevinGuide(model, num_steps=10, noise=False, init=lambda x: {"z": z0}, tolerance=1e9)
    torch.testing.assert_close(stopped.infer(x)["z"], z0)
    assert stopped.last_state.steps.tolist() == [1] * 6


def test_early_stopping_with_and_without_row_restriction_agree():
    model = _model()
    x, z0 = _data(batch=8)
    fn = lambda lat: model.log_joint(x, z=lat["z"])  # noqa: E731
    norms = short_run_langevin(fn, {"z": z0}, 0, 0.1, evaluate_final=True).grad["z"].norm(dim=1)
    tol = norms.median().item() * 0.5  # some rows stop sooner than others
    full = short_run_langevin(fn, {"z": z0}, 40, 0.1, noise=False, tolerance=tol)

    def restrict(rows):
        return lambda lat: model.log_joint(x[rows], z=lat["z"])

    sub = short_run_langevin(fn, {"z": z0}, 40, 0.1, noise=False, tolerance=tol, restrict=restrict)
    torch.testing.assert_close(sub.position["z"], full.position["z"], atol=ATOL, rtol=0)
    assert torch.equal(sub.steps, full.steps)
    assert sub.steps.min() < sub.steps.max() or sub.steps.max() < 40
    # rows that stopped early sit where the plain loop was after the same number of steps
    # (a row evaluated k < 40 times stopped at its k-th evaluation, so it moved k - 1 times)
    trajectory = [z0]
    for _ in range(40):
        trajectory.append(short_run_langevin(fn, {"z": trajectory[-1]}, 1, 0.1, noise=False).position["z"])
    for row in range(8):
        k = int(sub.steps[row])
        candidates = [k - 1] if k < 40 else [39, 40]
        assert any(torch.allclose(sub.position["z"][row], trajectory[c][row], atol=ATOL) for c in candidates), row


def test_compiled_step_matches_eager_on_cpu():
    model = _model()
    x, z0 = _data()
    eager = short_run_langevin(lambda lat: model.log_joint(x, z=lat["z"]), {"z": z0}, 5, 0.1, generator=torch.Generator().manual_seed(2))
    compiled = CompiledLangevin(model, step_size=0.1, backend="eager").run(x, z0, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(compiled, eager.position["z"], atol=ATOL, rtol=0)
    assert all(p.requires_grad for p in model.parameters())


def test_flow_distribution_matches_transformed_distribution():
    prior = _model().prior
    z = torch.randn(7, 6)
    reference = dist.TransformedDistribution(prior.base_dist(), [prior.flow.inv])
    d = prior.dist()
    torch.testing.assert_close(d.log_prob(z), reference.log_prob(z), atol=1e-4, rtol=1e-5)
    expanded = d.expand((3, 7))
    assert expanded.batch_shape == (3, 7) and expanded.event_shape == (6,)
    assert expanded.log_prob(z).shape == (3, 7)
    assert d.sample((4,)).shape == (4, 6) and d.support.event_dim == 1


def test_lu_weight_cache_follows_parameter_updates():
    t = LULinear(4)
    x = torch.randn(3, 4)
    for p in t.parameters():
        p.requires_grad_(False)
    w1 = t.weight
    assert t.weight is w1  # cached while frozen
    with torch.no_grad():
        t.upper_entries.add_(0.5)  # in-place update: version bump
    w2 = t.weight
    assert w2 is not w1 and not torch.allclose(w1, w2)
    torch.testing.assert_close(t(x), x @ t._assemble().T)
    for p in t.parameters():
        p.requires_grad_(True)
    assert t.weight.requires_grad  # never the cached constant when a gradient can flow


def test_anchor_with_the_official_modules_is_the_same_chain():
    """The anchor's reference generator (nn.ConvTranspose2d) computes the library generator's images."""
    model = _model()
    x, z0 = _data()
    official = benchmarks.reference_generator(model.generator)
    assert not any(type(m).__name__ == "PixelShuffleConvTranspose2d" for m in official.modules())
    flow = benchmarks.AnchorFlow(model.prior)
    runs = [benchmarks.anchor_langevin(g, flow, x, z0, 10, 0.1, model.sigma, rng=torch.Generator().manual_seed(1))
            for g in (official, model.generator)]
    torch.testing.assert_close(runs[0], runs[1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("permutation", ["lu", "permute"])
def test_flow_log_prob_is_the_transform_loop_bit_for_bit(permutation):
    """FlowPrior.log_prob skips Pyro's transform machinery; its value and gradient are unchanged."""
    torch.manual_seed(0)
    prior = FlowPrior(6, num_steps=3, hidden_dim=16, permutation=permutation)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(9, 6, requires_grad=True)
    x, log_det = z, 0.0
    for part in prior.flow.parts:
        y = part(x)
        log_det = log_det + part.log_abs_det_jacobian(x, y)
        x = y
    expected = prior.base_dist().log_prob(x) + log_det
    got = prior.log_prob(z)
    assert torch.equal(got, expected)
    g_expected, = torch.autograd.grad(expected.sum(), z)
    g_got, = torch.autograd.grad(got.sum(), z)
    torch.testing.assert_close(g_got, g_expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected z of shape \(\.\.\., 6\)"):
        prior.log_prob(torch.zeros(3, 5))


def test_gaussian_prior_log_prob_is_the_distributions_bit_for_bit():
    from pyro_lfbm import GaussianPrior

    prior = GaussianPrior(5)
    z = torch.randn(4, 3, 5)
    assert torch.equal(prior.log_prob(z), prior.dist().log_prob(z))
    with pytest.raises(ValueError):
        prior.log_prob(torch.full((2, 5), float("nan")))  # the support check still runs under validation
