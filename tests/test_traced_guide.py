"""TracedLangevinGuide: any Pyro model's chain run from a traced log density gives the eager chain's numbers."""

import pyro
import pyro.distributions as dist
import torch

from pyro_lfbm import LangevinGuide
from pyro_lfbm.infer.accelerate import TracedLangevinGuide, traced_log_density
from tests.test_langevin import LinearGaussian


def constrained_model(lg):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, scale[:, None]).to_event(1), obs=x)

    return model


def test_traced_chain_is_the_eager_chain_for_generic_and_constrained_models_and_new_data():
    lg = LinearGaussian()
    for model in (lg.model, constrained_model(lg)):
        traced = TracedLangevinGuide(model, num_steps=15, step_size=0.2)
        eager = LangevinGuide(model, num_steps=15, step_size=0.2)
        for seed in (0, 1):  # a second call with other data traces afresh (no stale data)
            x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))
            pyro.set_rng_seed(seed)
            a = eager.infer(x)
            pyro.set_rng_seed(seed)
            b = traced.infer(x)
            assert set(a) == set(b)
            for name in a:
                torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_traced_log_density_traces_once_per_signature():
    calls = []

    def fn(latents):
        calls.append(1)
        return -0.5 * latents["z"].pow(2).sum(-1)

    traced = traced_log_density(fn)
    z = torch.randn(4, 2)
    for _ in range(3):
        torch.testing.assert_close(traced({"z": z}), fn({"z": z}))
    assert len(calls) == 1 + 3  # one trace, then the three direct reference calls only
    traced({"z": torch.randn(5, 2)})
    assert len(calls) == 5  # a new shape is traced again
