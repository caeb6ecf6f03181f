
import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO, Predictive

from pyro_lfbm import FlowPrior, LangevinGuide, LatentModel
from pyro_lfbm.infer import short_run_langevin
from pyro_lfbm.nets import MNISTGenerator
from tests.conftest import require_mnist


class LinearGaussian:
    """z ~ N(0, I_D), x | z ~ N(W z + b, σ² I_P): the exact posterior is Gaussian."""

    def __init__(self, latent_dim=3, obs_dim=5, sigma=0.7, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(obs_dim, latent_dim, generator=g) * 0.8
        self.b = torch.randn(obs_dim, generator=g)
        self.sigma, self.latent_dim = sigma, latent_dim

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        precision = torch.eye(self.latent_dim) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov / self.sigma**2  # cov symmetric
        return mean, cov


class FastLinearGaussian(LinearGaussian):
    """The same model offering the fast path."""

    def __call__(self, x):
        return self.model(x)

    def log_joint(self, x, *, z):
        return dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(z @ self.W.T + self.b, self.sigma).log_prob(x).sum(-1)


@pytest.mark.parametrize("fast", [False, True])
def test_long_chains_match_conjugate_posterior(fast):
    lg = FastLinearGaussian() if fast else LinearGaussian()
    model = lg if fast else lg.model
    x_one = torch.randn(1, 5) * 2
    x = x_one.expand(3000, 5)  # 3000 independent chains for the same observation
    guide = LangevinGuide(model, num_steps=1500, step_size=0.1)
    assert guide.uses_fast_path == fast
    z = guide.infer(x)["z"]
    mean, cov = lg.posterior(x_one)
    assert torch.allclose(z.mean(0), mean[0], atol=0.05), (z.mean(0), mean)
    emp_cov = torch.cov(z.T)
    assert torch.allclose(emp_cov, cov, atol=0.03 + 0.05 * cov.abs().max()), (emp_cov, cov)


def test_noise_free_chain_finds_posterior_mode():
    lg = LinearGaussian()
    x = torch.randn(4, 5)
    z = LangevinGuide(lg.model, num_steps=3000, step_size=0.1, noise=False).infer(x)["z"]
    assert torch.allclose(z, lg.posterior(x)[0], atol=1e-3)


def test_fast_generic_and_step_function_agree_on_same_noise():
    torch.manual_seed(0)
    lg = FastLinearGaussian()
    x = torch.randn(6, 5)
    z0 = torch.randn(6, 3)
    runs = []
    for fn in (lambda l: lg.log_joint(x, **l), lambda l: __import__("pyro_lfbm").infer.per_example_log_joint(
            lg.model, l, (x,), {}, __import__("pyro_lfbm").infer.find_latent_sites(lg.model, (x,), {}).plate)):
        gen = torch.Generator().manual_seed(5)
        runs.append(short_run_langevin(fn, {"z": z0}, 25, 0.1, generator=gen).position["z"])
    assert torch.allclose(runs[0], runs[1], atol=1e-5)
    # a hand-written loop of the paper's update gives the same trajectory
    gen = torch.Generator().manual_seed(5)
    z = z0.clone()
    for _ in range(25):
        zz = z.detach().requires_grad_(True)
        grad = torch.autograd.grad(lg.log_joint(x, z=zz).sum(), zz)[0]
        z = z + 0.5 * 0.1**2 * grad + 0.1 * torch.randn(z.shape, generator=gen)
    assert torch.allclose(runs[0], z, atol=1e-5)


def test_plate_subsampling_does_not_change_the_chain():
    lg = LinearGaussian()
    x = torch.randn(4, 5)

    def subsampled(x):
        with pyro.plate("data", 1000, subsample=torch.arange(4)):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    a = LangevinGuide(lg.model, num_steps=2000, step_size=0.1, noise=False).infer(x)["z"]
    b = LangevinGuide(subsampled, num_steps=2000, step_size=0.1, noise=False).infer(x)["z"]
    assert torch.allclose(a, b, atol=1e-4)


def test_guide_emits_delta_sites_in_the_data_plate_and_predictive_works():
    lg = LinearGaussian()
    x = torch.randn(8, 5)
    guide = LangevinGuide(lg.model, num_steps=5)
    trace = pyro.poutine.trace(guide).get_trace(x)
    site = trace.nodes["z"]
    assert isinstance(site["fn"], dist.Delta) and site["value"].shape == (8, 3)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    samples = Predictive(lg.model, guide=guide, num_samples=2, return_sites=["z"])(x)
    assert samples["z"].shape == (2, 8, 3)


def test_user_bernoulli_model_trains_through_generic_path():
    """A user's own model: Bernoulli likelihood, latent size 4, no log_joint."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 20))
    true_z = torch.randn(64, 4)
    with torch.no_grad():
        data = torch.bernoulli(torch.sigmoid(3 * torch.nn.Linear(4, 20)(true_z)))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("code", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    guide = LangevinGuide(model, num_steps=10, step_size=0.3)
    assert not guide.uses_fast_path
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(60)]
    assert guide.latents["code"].shape == (64, 4)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 100


def test_svi_on_real_mnist_lowers_loss_and_improves_reconstruction():
    from pyro_lfbm.data import load_images

    root = require_mnist()
    images, _ = load_images("mnist", root, split="train", download=False, limit=200).tensors
    x = images[:200]
    torch.manual_seed(0)
    model = LatentModel(FlowPrior(8, num_steps=2, hidden_dim=32), MNISTGenerator(8, hidden_dim=64, channels=16))
    guide = LangevinGuide(model, num_steps=10, step_size=0.1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 2e-3, "betas": (0.5, 0.999)}), Trace_ELBO())

    def recon_mse():
        model.eval()
        z = LangevinGuide(model, num_steps=30, step_size=0.1, noise=False).infer(x)["z"]
        with torch.no_grad():
            mse = (model.generator(z) - x).pow(2).mean().item()
        model.train()
        return mse

    before = recon_mse()
    losses = []
    for epoch in range(6):
        for batch in x.split(50):
            losses.append(svi.step(batch))
    after = recon_mse()
    assert sum(losses[-4:]) < sum(losses[:4])
    assert after < 0.8 * before, (before, after)


def test_step_validation():
    with pytest.raises(ValueError, match="num_steps"):
        LangevinGuide(lambda x: None, num_steps=-1)
    with pytest.raises(ValueError, match="step_size"):
        LangevinGuide(lambda x: None, step_size=0.0)

    def discrete(x):
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="discrete support"):
        LangevinGuide(discrete).infer(torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# The one Langevin move: the energy prior's negatives and CoopFlow's revision call it
# ---------------------------------------------------------------------------------------------
def test_energy_prior_negatives_follow_the_one_langevin_move_in_the_prior_dtype():
    from pyro_lfbm import EnergyPrior

    torch.manual_seed(0)
    prior = EnergyPrior(3, hidden_dims=(8,), num_prior_steps=7, prior_step_size=0.4)
    torch.manual_seed(1)
    negatives = prior.sample_negatives(5)
    # the update as LEBM writes it, from the same random stream
    torch.manual_seed(1)
    z = torch.randn(5, 3)
    for _ in range(7):
        zz = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((-prior.energy(zz) - 0.5 * (zz * zz).sum(-1)).sum(), zz)
        z = z + 0.5 * 0.4**2 * g + 0.4 * torch.randn_like(z)
    assert torch.equal(negatives, z)
    assert prior.double().sample_negatives(4).dtype == torch.float64


def test_coopflow_revision_is_the_clipped_official_update():
    from pyro_lfbm.train.coopflow import coopflow_preset

    torch.manual_seed(0)
    model = coopflow_preset("tiny").build()
    x0 = model.sample_flow(6)
    step = 15.0  # large enough (gradients ~1e-3 untrained) that the ±0.1 clip binds on some pixels
    revised = model.revise(x0, num_steps=12, step_size=step)
    # the official loop: x <- clamp(x + clamp((s²/2) ∇f, ±0.1), ±1)
    x, clipped = x0.detach(), 0
    for _ in range(12):
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.score(xx).sum(), xx)
        drift = 0.5 * step**2 * g
        clipped += int((drift.abs() > 0.1).sum())
        x = (x + drift.clamp(-0.1, 0.1)).clamp(-1.0, 1.0)
    assert clipped > 0
    # same trajectory up to float rounding (the clip is applied to the gradient, then scaled)
    assert (revised - x).abs().max() < 1e-6
