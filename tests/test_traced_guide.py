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
from pyro_lfbm.infer.traced import compile_times, traced_log_density
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


def test_compiled_guide_records_once_per_signature_and_reuses_the_graph_for_new_data():
    lg = LinearGaussian()
    runs = []

    def counted(x):
        runs.append(1)
        lg.model(x)

    guide = LangevinGuide(counted, num_steps=10, step_size=0.2, compile=True)
    before = len(compile_times())
    guide.infer(torch.randn(4, 5))
    first = len(runs)
    eager = LangevinGuide(counted, num_steps=10, step_size=0.2)
    for seed in (1, 2):  # new data of the same shape: the same graph, with the new data as its input
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(seed))
        runs.clear()
        pyro.set_rng_seed(seed)
        b = guide.infer(x)
        # per call: site discovery and the first (validated) evaluation run the model; the steps run the graph.
        # The first call: discovery, the recording (its first evaluation) and a forward pass for the argument checks
        assert len(runs) == 2 and first == 3
        pyro.set_rng_seed(seed)
        torch.testing.assert_close(b["z"], eager.infer(x)["z"], rtol=0, atol=1e-5)
    assert len(compile_times()) == before + 1
    guide.infer(torch.randn(7, 5))  # a new shape: a second graph
    assert len(compile_times()) == before + 2


def subsampled_model(lg, data):
    def model():
        with pyro.plate("data", data.shape[0], subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=data[idx])

    return model


def test_compiled_guide_takes_each_calls_subsample_indices():
    lg = LinearGaussian()
    model = subsampled_model(lg, torch.randn(20, 5, generator=torch.Generator().manual_seed(0)))
    compiled = LangevinGuide(model, num_steps=10, step_size=0.1, compile=True)
    eager = LangevinGuide(model, num_steps=10, step_size=0.1)
    seen = set()
    for seed in range(3):
        pyro.set_rng_seed(seed)
        a = eager.infer()
        seen.add(tuple(eager._sites.subsamples["data"].tolist()))
        pyro.set_rng_seed(seed)
        torch.testing.assert_close(compiled.infer()["z"], a["z"], rtol=0, atol=1e-5)
    assert len(seen) == 3  # three different subsamples, one graph


class DecoderModel(torch.nn.Module):
    """A user's model with an nn.Module decoder (and, optionally, BatchNorm in it)."""

    def __init__(self, batch_norm=False):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Linear(3, 16)] + ([torch.nn.BatchNorm1d(16)] if batch_norm else []) + [torch.nn.Tanh(),
                                                                                                 torch.nn.Linear(16, 5)]
        self.decoder = torch.nn.Sequential(*layers)

    def forward(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_compiled_guide_trains_like_the_eager_guide(batch_norm):
    """SVI updates the parameters in place between calls: the compiled graph reads them where they
    live. BatchNorm in training mode writes its running statistics (the graph runs uncompiled,
    writes included); switching to eval mode records a new graph."""
    import copy

    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    results = []
    for compile in (False, True):
        pyro.clear_param_store()
        model = DecoderModel(batch_norm)
        guide = LangevinGuide(model, num_steps=5, step_size=0.05, compile=compile)
        svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
        pyro.set_rng_seed(0)
        losses = [svi.step(x) for _ in range(4)]
        model.eval()
        pyro.set_rng_seed(1)
        z = guide.infer(x)["z"]
        results.append((losses, copy.deepcopy(model.state_dict()), z))
    (la, sa, za), (lb, sb, zb) = results
    assert lb == pytest.approx(la, rel=1e-4)
    for name in sa:
        torch.testing.assert_close(sb[name], sa[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(zb, za, rtol=0, atol=1e-4)


def test_compiled_guide_pickles_and_compiles_again():
    import pickle

    lg = LinearGaussian()
    guide = LangevinGuide(lg.model, num_steps=5, step_size=0.1, compile=True)
    x = torch.randn(4, 5)
    guide.infer(x)
    copy = pickle.loads(pickle.dumps(guide))
    pyro.set_rng_seed(0)
    a = guide.infer(x)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(copy.infer(x)["z"], a["z"])


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


def test_compiled_guide_checks_every_calls_data_and_keys_on_non_tensor_arguments():
    def model(x, noise_scale=0.5):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True) * noise_scale).to_event(1), obs=x)

    compiled = LangevinGuide(model, num_steps=5, step_size=0.1, compile=True)
    eager = LangevinGuide(model, num_steps=5, step_size=0.1)
    good = torch.tensor([[0.0], [1.0], [1.0]])
    with pyro.validation_enabled(True):
        for call in range(2):  # the recording call and a call that reuses the graph
            with pytest.raises(ValueError, match="support"):
                compiled.infer(torch.tensor([[0.0], [2.0], [1.0]]) if call else good * 2)
            compiled.infer(good)
    for scale in (0.5, 2.0, 0.5):  # another value of a non-tensor argument is another graph
        pyro.set_rng_seed(0)
        a = eager.infer(good, noise_scale=scale)
        pyro.set_rng_seed(0)
        torch.testing.assert_close(compiled.infer(good, noise_scale=scale)["z"], a["z"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_compiled_guide_under_no_grad_and_inference_mode(context):
    lg = LinearGaussian()
    x = torch.randn(5, 5, generator=torch.Generator().manual_seed(4))
    compiled = LangevinGuide(lg.model, num_steps=8, step_size=0.1, compile=True)
    eager = LangevinGuide(lg.model, num_steps=8, step_size=0.1)
    wrapper = torch.no_grad if context == "no_grad" else torch.inference_mode
    for _ in range(2):  # the recording call, then a call of the recorded graph
        pyro.set_rng_seed(0)
        a = eager.infer(x)
        pyro.set_rng_seed(0)
        with wrapper():
            b = compiled.infer(x)
        torch.testing.assert_close(b["z"], a["z"], rtol=0, atol=1e-5)
