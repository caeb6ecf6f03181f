"""compile=True: any Pyro model's chain (LangevinGuide) and MCMC kernel (LangevinKernel) run from a
traced log density give the eager numbers; each prior supplies its own tensor log density."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC

from pyro_lfbm import GaussianPrior, LangevinGuide, LangevinKernel, LatentModel
from pyro_lfbm.infer import MALA
from pyro_lfbm.infer.accelerate import CompiledLangevin, fused_log_joint
from pyro_lfbm.infer.samplers.preconditioned import PreconditionedLangevin
from pyro_lfbm.infer.samplers.underdamped import UnderdampedLangevin
from pyro_lfbm.infer.traced import traced_log_density
from pyro_lfbm.nets import MNISTGenerator
from pyro_lfbm.priors.base import LatentPrior
from tests.test_langevin import FastLinearGaussian, LinearGaussian


def constrained_model(lg):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, scale[:, None]).to_event(1), obs=x)

    return model


def global_model(lg):
    """A global latent (outside the plate) next to the local ones: the kernel's two blocks."""

    def model(x):
        shift = pyro.sample("shift", dist.Normal(torch.zeros(5), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b + shift, lg.sigma).to_event(1), obs=x)

    return model


SAMPLERS = {
    "ula": lambda: None,
    "mala": MALA,
    "preconditioned": PreconditionedLangevin,
    "underdamped": UnderdampedLangevin,
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_compiled_guide_is_the_eager_guide_for_generic_and_constrained_models_and_new_data(sampler):
    lg = LinearGaussian()
    for num_sites, model in ((1, lg.model), (2, constrained_model(lg))):
        compiled = LangevinGuide(model, num_steps=15, step_size=0.05, compile=True, sampler=SAMPLERS[sampler]())
        eager = LangevinGuide(model, num_steps=15, step_size=0.05, sampler=SAMPLERS[sampler]())
        for seed in (0, 1):  # a second call with other data traces afresh (no stale data)
            x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))
            pyro.set_rng_seed(seed)
            a = eager.infer(x)
            pyro.set_rng_seed(seed)
            b = compiled.infer(x)
            assert set(a) == set(b) and len(a) == num_sites
            for name in a:
                assert not torch.equal(a[name], torch.zeros_like(a[name]))
                torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)


def test_the_compile_flag_is_kept_and_shown():
    guide = LangevinGuide(LinearGaussian().model, num_steps=3, step_size=0.1, compile=True)
    assert guide.compile
    assert "compile=True" in repr(guide)


def test_compiled_guide_evaluates_the_model_once_per_call():
    lg = LinearGaussian()
    runs = []

    def counted(x):
        runs.append(1)
        lg.model(x)

    guide = LangevinGuide(counted, num_steps=10, step_size=0.2, compile=True)
    x = torch.randn(4, 5)
    guide.infer(x)
    first = len(runs)
    guide.infer(x)
    # per call: site discovery runs the model, then one traced evaluation; the 10 steps run the graph
    assert len(runs) - first == first <= 3


@pytest.mark.parametrize("which", ["fast", "generic", "global"])
def test_compiled_kernel_is_the_eager_kernel(which):
    lg = FastLinearGaussian(3, 5, 0.7)
    model = {"fast": lg, "generic": lg.model, "global": global_model(lg)}[which]
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    runs = []
    for compile in (False, True):
        kernel = LangevinKernel(model, step_size=0.2, compile=compile)
        torch.manual_seed(1)
        mcmc = MCMC(kernel, num_samples=20, warmup_steps=10, disable_progbar=True)
        mcmc.run(x)
        runs.append((mcmc.get_samples(), kernel))
    (a, eager), (b, compiled) = runs
    assert compiled._traced and not eager._traced
    assert set(compiled._traced) == ({"local", "global"} if which == "global" else {"local"})
    assert 0 < compiled.acceptance_rate < 1
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)
    assert compiled.step_size == pytest.approx(eager.step_size, rel=1e-5)


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


# -- each prior supplies its own tensor log density -------------------------------------------------
class StudentPrior(LatentPrior):
    """A user's prior: independent Student-t(ν = 4) coordinates (its distribution and, optionally,
    its plain tensor log density)."""

    def dist(self):
        return dist.StudentT(4.0, self.base_loc, self.base_scale).to_event(1)


class FusedStudentPrior(StudentPrior):
    calls = 0

    def tensor_log_prob_fn(self):
        base = dist.StudentT(4.0, 0.0, 1.0)
        const = float(base.log_prob(torch.tensor(0.0)))

        def log_prob(z):
            FusedStudentPrior.calls += 1
            return (const - 2.5 * torch.log1p(z * z / 4.0)).sum(-1)

        return log_prob


def test_a_user_prior_with_tensor_log_prob_fn_gets_the_fused_path_and_one_without_the_eager_code():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    z0 = torch.randn(3, 5)
    trajectories = []
    for prior_class in (StudentPrior, FusedStudentPrior):
        torch.manual_seed(4)
        model = LatentModel(prior_class(5), MNISTGenerator(5, hidden_dim=16, channels=4)).eval()
        reference = model.log_joint(x, None, z=z0)
        FusedStudentPrior.calls = 0
        torch.testing.assert_close(fused_log_joint(model)(x, z0), reference, rtol=1e-5, atol=1e-3)
        chain = CompiledLangevin(model, step_size=0.05, compile=False)
        trajectories.append(chain.run(x, z0, 5, generator=torch.Generator().manual_seed(2)))
        if prior_class is FusedStudentPrior:
            assert FusedStudentPrior.calls == 1 + 5  # its own code, for the value and every step
        else:
            assert FusedStudentPrior.calls == 0  # StudentPrior.log_prob (the distribution) ran
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=0, atol=1e-5)


def test_the_library_priors_supply_their_tensor_log_density():
    from pyro_lfbm import FlowPrior
    from pyro_lfbm.priors import EnergyPrior

    torch.manual_seed(0)
    z = torch.randn(4, 3)
    for prior in (GaussianPrior(3), FlowPrior(3, num_steps=2, hidden_dim=8), EnergyPrior(3, hidden_dims=(8,))):
        fn = prior.tensor_log_prob_fn()
        expected = prior.dist().unnormalised_log_prob(z) if isinstance(prior, EnergyPrior) else prior.log_prob(z)
        torch.testing.assert_close(fn(z), expected)
    assert StudentPrior(3).tensor_log_prob_fn() is None
