"""LangevinGuide and LangevinKernel under the wrappers a Pyro user puts around them: torch.inference_mode,
JitTrace_ELBO, poutine.scale (KL annealing), pickling, and a global autoguide inside an outer plate.

Each test compares with an exact answer: the same run without the wrapper (bit for bit), or the
closed-form posterior of a conjugate Gaussian model.
"""

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import MCMC, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro import poutine

from pyro_lfbm import LangevinGuide
from pyro_lfbm.infer import DivergencePolicy, LangevinKernel, StepSizeAdaptation

SIGMA = 0.5  # x | z ~ N(z, SIGMA²), z ~ N(0, 1): p(z | x) = N(x / (1 + SIGMA²), SIGMA² / (1 + SIGMA²))


def normal_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x)


def hierarchical(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x)


# ---------------------------------------------------------------------------------------------
# torch.inference_mode: the chain needs gradients; it runs as under torch.no_grad
# ---------------------------------------------------------------------------------------------
def _guide_calls(model, guide_kwargs):
    """{what: result} of guide.infer, Predictive, SVI.evaluate_loss and a persistent guide's two calls,
    each from seed 0 (run inside whatever grad context the caller sets)."""
    x = torch.linspace(-1.0, 2.0, 6)
    if torch.is_inference_mode_enabled():
        x = x.clone()  # data made inside inference mode: an inference tensor
        assert x.is_inference()
    out = {}
    pyro.set_rng_seed(0)
    guide = LangevinGuide(model, num_steps=5, step_size=0.3, **guide_kwargs())
    out["infer"] = guide.infer(x)["z"]
    pyro.set_rng_seed(0)
    guide = LangevinGuide(model, num_steps=5, step_size=0.3, **guide_kwargs())
    out["predictive"] = Predictive(model, guide=guide, num_samples=3, return_sites=["z"])(x)["z"]
    pyro.set_rng_seed(0)
    guide = LangevinGuide(model, num_steps=5, step_size=0.3, **guide_kwargs())
    out["loss"] = torch.tensor(SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()).evaluate_loss(x))
    pyro.set_rng_seed(0)
    guide = LangevinGuide(model, num_steps=5, step_size=0.3, persistent=6, **guide_kwargs())
    guide.set_positions(torch.arange(6))
    guide.infer(x)
    out["persistent"] = guide.infer(x)["z"]  # starts from the first call's latents
    return out


@pytest.mark.parametrize("which", ["local", "global_guide"])
def test_guide_under_inference_mode_equals_no_grad(which):
    if which == "local":
        model, kwargs = normal_model, dict
    else:
        model = hierarchical
        kwargs = lambda: {"global_guide": AutoNormal(poutine.block(hierarchical, expose=["mu"]))}  # noqa: E731
    with torch.no_grad():
        expected = _guide_calls(model, kwargs)
    pyro.clear_param_store()
    with torch.inference_mode():
        got = _guide_calls(model, kwargs)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
        assert not got[key].requires_grad


def test_kernel_under_inference_mode_equals_no_grad():
    x = torch.linspace(-1.0, 2.0, 6)

    def run():
        pyro.set_rng_seed(0)
        mcmc = MCMC(LangevinKernel(hierarchical, step_size=0.3), num_samples=20, warmup_steps=10, disable_progbar=True)
        mcmc.run(x.clone())
        return mcmc.get_samples()

    with torch.no_grad():
        expected = run()
    with torch.inference_mode():
        got = run()
    assert set(got) == {"mu", "z"}
    for name in got:
        assert torch.equal(got[name], expected[name]), name


# ---------------------------------------------------------------------------------------------
# Pickling: a guide that has run on a model with a pyro.param
# ---------------------------------------------------------------------------------------------
def param_model(x):
    loc = pyro.param("loc", torch.tensor(0.3))
    scale = pyro.param("scale", torch.tensor(1.2), constraint=torch.distributions.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(loc, scale))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x)


def test_pickled_and_torch_saved_guide_infers_identically(tmp_path):
    import io
    import pickle

    x = torch.linspace(-1.0, 2.0, 6)
    guide = LangevinGuide(param_model, num_steps=5, step_size=StepSizeAdaptation(num_updates=4), persistent=6)
    svi = SVI(param_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(2):
        guide.set_positions(torch.arange(6))
        svi.step(x)  # adapting, persistent chains stored
    pickled = pickle.loads(pickle.dumps(guide))
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    results = []
    for copy in (guide, pickled, saved):
        pyro.set_rng_seed(1)
        copy.set_positions(torch.arange(6))
        first = copy.infer(x)["z"]
        copy.set_positions(torch.arange(6))
        results.append((first, copy(x)["z"], copy.step_size, copy.adaptation.updates))
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
        assert other[2:] == results[0][2:] and results[0][3] == 4


def test_a_guide_pickled_with_the_old_divergence_settings_loads_them_as_one_policy():
    import pickle

    guide = LangevinGuide(param_model, num_steps=5, step_size=0.1, on_divergence=DivergencePolicy("backoff", 3, 5.0))
    old = LangevinGuide(param_model, num_steps=5, step_size=0.1)
    # the layout before DivergencePolicy: three attributes
    old.__dict__.update(on_divergence="backoff", max_backoffs=3, max_log_density_drop=5.0)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.on_divergence == guide.on_divergence == DivergencePolicy("backoff", 3, 5.0)
    assert "max_backoffs" not in restored.__dict__ and "max_log_density_drop" not in restored.__dict__
    x = torch.linspace(-1.0, 2.0, 6)
    pyro.set_rng_seed(0)
    expected = guide(x)["z"]
    pyro.set_rng_seed(0)
    assert torch.equal(restored(x)["z"], expected)


# ---------------------------------------------------------------------------------------------
# JitTrace_ELBO: a traced guide would be replayed frozen from the second step; refused
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("loss", ["JitTrace_ELBO", "JitTraceGraph_ELBO"])
def test_jit_traced_elbo_is_refused_with_one_error(loss):
    x = torch.linspace(-1.0, 2.0, 6)
    guide = LangevinGuide(normal_model, num_steps=5, step_size=0.3)
    svi = SVI(normal_model, guide, pyro.optim.Adam({"lr": 0.1}), getattr(pyro.infer, loss)())
    with pytest.raises(RuntimeError, match=r"LangevinGuide cannot run under torch.jit.trace \(JitTrace_ELBO.*use Trace_ELBO"):
        svi.step(x)
    # and nothing is left behind: the same guide then runs under Trace_ELBO
    loss = SVI(normal_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()).step(x)
    assert guide.latents["z"].shape == (6,) and loss == loss


# ---------------------------------------------------------------------------------------------
# poutine.scale (KL annealing): the chain targets p(x | z) p(z)^β; only subsampling is divided out
# ---------------------------------------------------------------------------------------------
N_ALL, BETA = 40, 0.2


def annealed_model(x, idx=None, beta=BETA, subsample_size=None):
    """z ~ N(0, 1) scaled by β (KL annealing, as in Pyro's DMM example), x | z ~ N(z, SIGMA²):
    p(x | z) p(z)^β is N(z; m, v) with 1/v = 1/SIGMA² + β and m = v x / SIGMA²."""
    with pyro.plate("data", N_ALL, subsample_size=subsample_size, subsample=idx) as i:
        with poutine.scale(scale=beta):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=x[i])


def annealed_posterior(x, beta=BETA):
    var = 1.0 / (1.0 / SIGMA**2 + beta)
    return var * x / SIGMA**2, var


def test_log_joint_keeps_the_user_scale_and_divides_out_subsampling_only():
    from pyro_lfbm.infer import find_latent_sites, log_joint_terms

    x = torch.linspace(-2.0, 2.0, N_ALL, dtype=torch.float64)
    z = torch.linspace(0.5, -0.5, 8, dtype=torch.float64)
    weights = torch.linspace(0.1, 0.8, 8, dtype=torch.float64)
    for beta in (BETA, weights):  # a number, and one weight per example of the minibatch
        args, kwargs = (x,), {"beta": beta, "subsample_size": 8}
        sites = find_latent_sites(annealed_model, args, kwargs)
        i = sites.plate.subsample
        assert sites.plate.size == N_ALL and i.shape == (8,)
        local, _ = log_joint_terms(annealed_model, {"z": z}, args, kwargs, sites)
        exact = beta * dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, SIGMA).log_prob(x[i])
        assert torch.allclose(local, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("subsample_size", [None, 10])
def test_guide_gradient_ascent_reaches_the_annealed_posterior_mode(subsample_size):
    x = torch.linspace(-2.0, 2.0, N_ALL)
    guide = LangevinGuide(annealed_model, num_steps=400, step_size=0.3, noise=False)
    guide(x, subsample_size=subsample_size)  # emits the Delta sites in the replayed plate
    i = guide._sites.plate.subsample if subsample_size else torch.arange(N_ALL)
    mode, _ = annealed_posterior(x[i])
    assert torch.allclose(guide.latents["z"], mode, atol=1e-5)
    assert not torch.allclose(guide.latents["z"], annealed_posterior(x[i], beta=1.0)[0], atol=1e-2)


def test_kernel_samples_the_annealed_posterior():
    x = torch.linspace(-2.0, 2.0, N_ALL)
    mcmc = MCMC(LangevinKernel(annealed_model, step_size=0.5), num_samples=400, warmup_steps=100, disable_progbar=True)
    mcmc.run(x)
    z = mcmc.get_samples()["z"]  # (400, N_ALL)
    mean, var = annealed_posterior(x)
    # the posterior mean is x / (1 + SIGMA² β) (0.95 x; 0.8 x without β); pooled over 40 examples
    slope = (z.mean(0) * x).sum() / (x * x).sum()
    assert abs(slope.item() - (mean / x)[0].item()) < 0.03, slope
    assert abs(z.var(0).mean().item() / var - 1) < 0.08, z.var(0).mean().item() / var  # MALA is exact


# ---------------------------------------------------------------------------------------------
# A global latent inside an outer plate, given its own autoguide (the guide's error message's pattern)
# ---------------------------------------------------------------------------------------------
GROUPS, PER_GROUP = 4, 5


def grouped(x, subsample_size=None):
    """mu_g ~ N(0, 1) per group (outer plate "feat"), z_gn ~ N(mu_g, 1), x_gn ~ N(z_gn, SIGMA²):
    given mu, the mode of z_gn is (mu_g + x_gn / SIGMA²) / (1 + 1 / SIGMA²)."""
    with pyro.plate("feat", GROUPS, subsample_size=subsample_size, dim=-2) as g:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", PER_GROUP, dim=-1):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, SIGMA), obs=x[g])


@pytest.mark.parametrize("subsample_size", [None, 2])
def test_global_guide_inside_an_outer_plate(subsample_size):
    x = torch.linspace(-2.0, 2.0, GROUPS * PER_GROUP).reshape(GROUPS, PER_GROUP)
    global_guide = AutoNormal(poutine.block(grouped, expose=["mu"]))
    guide = LangevinGuide(grouped, num_steps=150, step_size=0.3, noise=False, global_guide=global_guide)
    svi = SVI(grouped, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        loss = svi.step(x, subsample_size)  # was: "Multiple sample sites named 'feat'"
        assert torch.isfinite(torch.tensor(loss))
    trace = poutine.trace(guide).get_trace(x, subsample_size)
    g, mu, z = trace.nodes["feat"]["value"], trace.nodes["mu"]["value"], trace.nodes["z"]["value"]
    assert g.shape == (subsample_size or GROUPS,) and mu.shape == (g.shape[0], 1) and z.shape == (g.shape[0], PER_GROUP)
    # the chain's locals belong to the groups the global guide drew, given its mu
    exact = (mu + x[g] / SIGMA**2) / (1 + 1 / SIGMA**2)
    assert torch.allclose(z, exact, atol=1e-5)
    # the model replays the guide's groups
    model_trace = poutine.trace(poutine.replay(grouped, trace=trace)).get_trace(x, subsample_size)
    assert torch.equal(model_trace.nodes["feat"]["value"], g)
