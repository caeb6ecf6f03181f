import pytest
import torch
import pyro
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

from pyro_lfbm.metrics.evaluation import langevin_trajectory
from pyro_lfbm.infer import short_run_langevin
from pyro_lfbm.infer.baselines import fit_autonormal, mala_reference
from pyro_lfbm.infer.encoder_guide import EncoderGuide, encode_dataset
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.encoder import fit_encoder
from pyro_lfbm.infer.hybrid import HybridGuide, hybrid_infer_dataset
from pyro_lfbm.nets import MNISTEncoder
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.svi import OptimConfig, fit
from tests.test_evaluation import exact_posterior, linear_gaussian, sample_images
from tests.test_training import tiny_data


def tiny_model_and_guide(prior="flow"):
    preset = get_preset("tiny", prior)
    model = preset.model.build()
    guide = EncoderGuide(MNISTEncoder(preset.model.latent_dim, hidden_dim=32, channels=8))
    return model, guide


@torch.no_grad()
def elbo(model, guide, x, particles=4):
    pyro.set_rng_seed(123)
    return -Trace_ELBO(num_particles=particles).loss(model, guide, x) / x.shape[0]


@pytest.mark.parametrize("prior", ["flow", "gaussian"])
def test_encoder_guide_trains_jointly_and_its_elbo_improves(prior):
    model, guide = tiny_model_and_guide(prior)
    x = tiny_data(50)
    model.eval(), guide.eval()
    before = elbo(model, guide, x)
    model.train(), guide.train()
    history = fit(model, guide, x, epochs=3, batch_size=25, optim=OptimConfig(lr=3e-3), progress=False)
    model.eval(), guide.eval()
    after = elbo(model, guide, x)
    assert after > before + 50, (before, after)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    names = pyro.get_param_store().keys()
    assert any(n.startswith("encoder") for n in names) and any(n.startswith("generator") for n in names)


def test_guide_has_the_model_structure_and_works_with_predictive():
    model, guide = tiny_model_and_guide()
    model.eval(), guide.eval()
    x = tiny_data(6)
    tr = poutine.trace(guide).get_trace(x)
    site = tr.nodes["z"]
    assert site["value"].shape == (6, 8) and site["fn"].event_shape == (8,)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    samples = Predictive(model, guide=guide, num_samples=3, return_sites=["z"])(x)
    assert samples["z"].shape == (3, 6, 8)
    # the masked input is what the encoder sees
    mask = torch.zeros_like(x)
    assert torch.allclose(guide.mean(x, mask), guide.mean(torch.zeros_like(x)))


def test_bad_encoders_are_one_line_errors():
    with pytest.raises(ValueError, match="deterministic"):
        EncoderGuide(MNISTEncoder(4, hidden_dim=8, channels=4, deterministic=True))
    with pytest.raises(TypeError, match="nn.Module"):
        EncoderGuide(lambda x: x)
    model, guide = tiny_model_and_guide()
    with pytest.raises(ValueError, match="epochs"):
        fit_encoder(model, guide, tiny_data(10), epochs=0)
    with pytest.raises(TypeError, match="EncoderGuide"):
        HybridGuide(model, guide.encoder)


def test_hybrid_first_state_is_the_encoder_mean_and_then_refines():
    model, guide = tiny_model_and_guide()
    model.eval(), guide.eval()
    x = tiny_data(12)
    mu = guide.mean(x)
    assert torch.equal(HybridGuide(model, guide, num_steps=0).infer(x)["z"], mu)
    traj = langevin_trajectory(model, x, [0, 4], init=guide.mean, step_size=0.1, progress=False)
    assert torch.equal(traj[0][0], mu)
    hybrid = HybridGuide(model, guide, num_steps=4, step_size=0.1, noise=False).infer(x)["z"]
    direct = short_run_langevin(lambda lat: model.log_joint(x, z=lat["z"]), {"z": mu}, 4, 0.1, noise=False)
    assert torch.allclose(hybrid, direct.position["z"], atol=1e-6)
    assert torch.allclose(hybrid, traj[4][0], atol=1e-6)
    assert (model.log_joint(x, z=hybrid) > model.log_joint(x, z=mu)).float().mean() > 0.9
    result = hybrid_infer_dataset(model, guide, x, num_steps=0, batch_size=5, progress=False)
    # batches of 5 against one batch of 12: BLAS kernels may differ by batch size in the last bits
    assert torch.allclose(result.z, mu, rtol=1e-5, atol=1e-6) and result.gradient_evaluations == 0


def test_hybrid_training_moves_model_and_encoder_towards_the_chains(tmp_path):
    model, guide = tiny_model_and_guide()
    hybrid = HybridGuide(model, guide, num_steps=3, step_size=0.1)
    x = tiny_data(50)
    enc0 = [p.detach().clone() for p in guide.parameters()]
    gen0 = [p.detach().clone() for p in model.generator.parameters()]
    history = fit(model, hybrid, x, epochs=2, batch_size=25, optim=OptimConfig(lr=3e-3), progress=False,
                  checkpoint=Checkpointing(tmp_path / "h.pt"))
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert any(not torch.equal(a, b) for a, b in zip(enc0, guide.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(gen0, model.generator.parameters()))
    ckpt = torch.load(tmp_path / "h.pt", weights_only=False)
    assert any(k.startswith("encoder_guide.encoder") for k in ckpt["trainer"]["guide"])
    # the encoder now predicts the refined latents better than at the start of training
    model.eval(), guide.eval()
    z = hybrid.infer(x)["z"]
    assert guide.distribution(x).log_prob(z).mean() > -50


def test_fit_encoder_to_a_frozen_model_leaves_the_model_alone():
    model, guide = tiny_model_and_guide()
    x = tiny_data(50)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval(), guide.eval()
    before = elbo(model, guide, x)
    losses = fit_encoder(model, guide, x, epochs=2, batch_size=25, lr=3e-3, progress=False)
    guide.eval()
    assert elbo(model, guide, x) > before and losses[-1] < losses[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.requires_grad for p in model.parameters())
    result = encode_dataset(guide, x, model, batch_size=40, progress=False)
    assert result.z.shape == (50, 8) and result.log_joint.shape == (50,) and result.gradient_evaluations == 0


def test_autonormal_and_mala_recover_a_linear_gaussian_posterior():
    model = linear_gaussian()
    x = sample_images(model, 6)
    mean, cov = exact_posterior(model, x)
    fitted = fit_autonormal(model, x, num_steps=500, lr=0.05, num_particles=1, progress=False)
    assert torch.allclose(fitted.loc, mean, atol=0.1), (fitted.loc, mean)
    assert fitted.gradient_evaluations == 500
    # mean-field: the fitted scales are the exact conditional std 1/sqrt(precision_ii)
    cond = torch.linalg.inv(cov).diagonal().rsqrt()
    assert torch.allclose(fitted.scale, cond.expand(6, 2), rtol=0.25)
    ref = mala_reference(model, x, num_samples=800, warmup_steps=100, step_sizes=(0.5, 0.3, 0.1), progress=False)
    assert ref.samples.shape == (800, 6, 2) and ref.acceptance_rate > 0.4
    assert torch.allclose(ref.samples.mean(0), mean, atol=0.12)
    # a second fit with another batch size does not reuse the first guide's parameters
    assert fit_autonormal(model, x[:3], num_steps=2, progress=False).loc.shape == (3, 2)
