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
from pyro_lfbm.infer import LangevinKernel

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
    guide = LangevinGuide(param_model, num_steps=5, step_size="auto", adapt_calls=4, persistent=6)
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
        results.append((first, copy(x)["z"], copy.step_size, copy.adapted_calls))
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
        assert other[2:] == results[0][2:] and results[0][3] == 4


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
