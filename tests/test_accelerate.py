"""The fused and compiled chains (pyro_lfbm.infer.accelerate) compute the eager reference's numbers."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_lfbm import FlowPrior, GaussianPrior, LangevinGuide, LatentModel
from pyro_lfbm.infer import short_run_langevin
from pyro_lfbm.infer.accelerate import (
    CompiledLangevin,
    FusedLangevinGuide,
    compile_times,
    fused_log_joint,
    gaussian_log_likelihood,
)
from pyro_lfbm.nets import MNISTGenerator
from pyro_lfbm.priors import EnergyPrior


def _model(prior="flow", latent_dim=6, seed=0, train=False, pixel_likelihood="gaussian"):
    """A small LFBM; every prior parameter perturbed away from its identity initialisation."""
    torch.manual_seed(seed)
    priors = {
        "flow": lambda: FlowPrior(latent_dim, num_steps=2, hidden_dim=16),
        "flow_permute": lambda: FlowPrior(latent_dim, num_steps=2, hidden_dim=16, permutation="permute"),
        "flow_mixture": lambda: FlowPrior(latent_dim, num_steps=2, hidden_dim=16, num_components=3),
        "gaussian": lambda: GaussianPrior(latent_dim),
        "ebm": lambda: EnergyPrior(latent_dim, hidden_dims=(16, 16), num_prior_steps=3),
    }
    model = LatentModel(priors[prior](), MNISTGenerator(latent_dim, hidden_dim=32, channels=8),
                        pixel_likelihood=pixel_likelihood)
    with torch.no_grad():
        for p in model.prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.train(train)


def _data(batch=5, latent_dim=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1, torch.randn(batch, latent_dim, generator=g)


def _eager_chain(model, x, z0, steps, noise=True, seed=7, mask=None):
    """The reference: the library's short_run_langevin on model.log_joint, parameters frozen."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        fn = lambda lat: model.log_joint(x, mask, z=lat["z"])  # noqa: E731
        return short_run_langevin(fn, {"z": z0}, steps, 0.1, noise=noise,
                                  generator=torch.Generator().manual_seed(seed)).position["z"]
    finally:
        for p in frozen:
            p.requires_grad_(True)


@pytest.mark.parametrize("masked", [False, True])
def test_gaussian_log_likelihood_is_pyros_value_exactly(masked):
    x, _ = _data()
    mean = torch.tanh(torch.randn_like(x))
    mask = (torch.rand(1, 1, 28, 28) > 0.3) if masked else None
    reference = dist.Normal(mean, 0.3)
    if masked:
        reference = reference.mask(mask)
    expected = reference.to_event(3).log_prob(x)
    assert torch.equal(gaussian_log_likelihood(x, mean, 0.3, mask), expected)


@pytest.mark.parametrize("prior, pixel_likelihood", [("flow", "gaussian"), ("flow_permute", "gaussian"),
                                                     ("flow_mixture", "gaussian"), ("gaussian", "gaussian"),
                                                     ("ebm", "gaussian"), ("flow", "bernoulli")])
@pytest.mark.parametrize("train", [False, True])
def test_fused_log_joint_equals_the_models(prior, pixel_likelihood, train):
    from pyro_lfbm._context import posterior_inference

    model = _model(prior, train=train, pixel_likelihood=pixel_likelihood)
    x, z = _data()
    mask = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    fused = fused_log_joint(model)
    reference_model = copy.deepcopy(model)  # train-mode BatchNorm moves its statistics on every call
    for m in (None, mask):
        with posterior_inference():  # the chain's setting (the energy prior adds no contrastive term)
            expected = reference_model.log_joint(x, m, z=z)
        torch.testing.assert_close(fused(x, z, m), expected, atol=1e-4, rtol=1e-6)
    if not train:
        assert torch.equal(fused(x, z), model.log_joint(x, z=z))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("pixel_likelihood", ["gaussian", "bernoulli"])
def test_fused_eager_chain_is_the_reference_trajectory(train, noise, pixel_likelihood):
    model = _model(train=train, pixel_likelihood=pixel_likelihood)
    reference = copy.deepcopy(model)
    x, z0 = _data()
    expected = _eager_chain(reference, x, z0, 10, noise=noise)
    chain = CompiledLangevin(model, step_size=0.1, noise=noise, compile=False)
    z = chain.run(x, z0, 10, generator=torch.Generator().manual_seed(7))
    assert (expected - z0).abs().max() > 0.01  # the chain moved
    torch.testing.assert_close(z, expected, atol=2e-5, rtol=0)
    for a, b in zip(model.generator.buffers(), reference.generator.buffers()):  # BatchNorm statistics too
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def _compiled_matches_eager(backend, train):
    model = _model(train=train)
    reference = copy.deepcopy(model)
    x, z0 = _data()
    expected = _eager_chain(reference, x, z0, 8)
    chain = CompiledLangevin(model, step_size=0.1, backend=backend, label=f"test-{backend}")
    before = len(compile_times())
    torch._dynamo.utils.counters.clear()
    z = chain.run(x, z0, 8, generator=torch.Generator().manual_seed(7))
    assert not torch._dynamo.utils.counters["graph_break"], "the value and gradient must trace into one graph"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled (not an eager fallback)
    # float rounding differs (fused kernels sum in another order); the trajectory is the same
    torch.testing.assert_close(z, expected, atol=1e-3, rtol=1e-4)
    assert (z - expected).abs().max() < 0.01 * (expected - z0).abs().max()
    for a, b in zip(model.generator.buffers(), reference.generator.buffers()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-4)
    # the warm-up was paid once and recorded; a second run reuses the compiled code
    new = compile_times()[before:]
    assert len(new) == 1 and new[0]["label"] == f"test-{backend}" and new[0]["seconds"] > 0
    again = chain.run(x, z0, 8, generator=torch.Generator().manual_seed(7))
    assert len(compile_times()) == before + 1
    # with train-mode BatchNorm the running statistics moved between the runs; the chain did not depend on them
    torch.testing.assert_close(again, z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("train", [False, True])
def test_traced_chain_matches_eager(train):
    """torch.compile with the aot_eager backend: the whole value-and-gradient traced into one graph."""
    _compiled_matches_eager("aot_eager", train)


@pytest.mark.slow
def test_inductor_compiled_chain_matches_eager_with_a_fixed_noise_stream():
    """inductor on the CPU (generated C++ kernels), train-mode BatchNorm included."""
    _compiled_matches_eager("inductor", train=True)


# Biases that feed a train-mode BatchNorm have an exact gradient of zero (the normalisation removes
# them); Adam turns the float rounding left in that gradient into steps of ±lr, which differ with the
# summation order. They, and the running means they shift, are compared only in the image order,
# where the fused chain computes the library's numbers in the same order.
_BIASES_BEFORE_BATCHNORM = ("generator.fc.0.bias", "generator.fc.1.running_mean", "generator.fc.3.bias",
                            "generator.fc.4.running_mean", "generator.deconv.0.bias", "generator.deconv.1.running_mean")


@pytest.mark.parametrize("native_order", [False, True])
def test_fused_guide_trains_like_the_library_guide(native_order):
    """Two SVI steps of Algorithm 1: LangevinGuide vs FusedLangevinGuide, same seed, same result."""
    x, _ = _data(batch=6)
    params = {}
    for name in ("library", "fused", "traced"):
        pyro.clear_param_store()
        model = _model(train=True)
        if name == "library":
            guide = LangevinGuide(model, num_steps=5, step_size=0.1)
        else:
            guide = FusedLangevinGuide(model, num_steps=5, step_size=0.1, compile=name == "traced", backend="aot_eager",
                                       native_order=native_order)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        pyro.set_rng_seed(5)
        losses = [svi.step(x) for _ in range(2)]
        params[name] = (losses, {k: v.detach().clone() for k, v in model.state_dict().items()})
    ref_losses, ref_state = params["library"]
    for name in ("fused", "traced"):
        losses, state = params[name]
        assert losses == pytest.approx(ref_losses, rel=1e-4)
        for key, value in ref_state.items():
            if native_order and key in _BIASES_BEFORE_BATCHNORM:
                continue
            torch.testing.assert_close(state[key].float(), value.float(), atol=1e-4, rtol=1e-4, msg=f"{name}: {key}")


def test_fused_guide_gradient_is_the_autograd_gradient():
    model = _model()
    x, z = _data()
    guide = FusedLangevinGuide(model, num_steps=1, compile=False)
    from pyro_lfbm.infer import find_latent_sites

    sites = find_latent_sites(model, (x,), {})
    fn = guide.log_density_fn(sites, (x,), {})
    leaf = z.clone().requires_grad_(True)
    weights = torch.rand(5)
    (fn({"z": leaf}) * weights).sum().backward()
    ref = z.clone().requires_grad_(True)
    (model.log_joint(x, z=ref) * weights).sum().backward()
    torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-4, rtol=1e-5)
    # BatchNorm on batch statistics couples the rows: only the batch sum's gradient is available
    model.train()
    fn = guide.log_density_fn(sites, (x,), {})
    leaf = z.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="batch sum"):
        (fn({"z": leaf}) * weights).sum().backward()


def test_fused_chain_rejects_other_models_in_one_line():
    with pytest.raises(TypeError, match="needs a LatentModel"):
        CompiledLangevin(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="num_steps"):
        CompiledLangevin(_model(), compile=False).run(*_data(), num_steps=-1)


def test_compiled_chain_runs_the_one_driver_with_its_divergence_check():
    """CompiledLangevin.run is run_chain on the fused target: an unstable step size raises (or backs off)."""
    from pyro_lfbm.infer import LangevinDivergenceError, run_chain
    from pyro_lfbm.infer.modes import frozen_parameters

    model = _model()
    x, z0 = _data()
    chain = CompiledLangevin(model, step_size=30.0, noise=False, compile=False, label="test-divergence")
    with pytest.raises(LangevinDivergenceError, match="test-divergence diverged at step"):
        chain.run(x, z0, 40)
    z = chain.run(x, z0, 40, on_divergence="backoff")
    assert torch.isfinite(z).all()
    stable = CompiledLangevin(model, step_size=0.1, compile=False)
    # as run() does: with the parameters frozen autograd takes other kernels, which can differ in the last bit
    with torch.no_grad(), frozen_parameters(model):
        state, info = run_chain(stable.target(x), {"z": z0}, 4, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state.position["z"], stable.run(x, z0, 4, generator=torch.Generator().manual_seed(0)))
    assert info.gradient_evaluations == 4


@pytest.mark.parametrize("mask_shape", [(5, 1, 28, 28), (1, 1, 28, 28), (28, 28), (5, 1, 1, 1)])
def test_native_order_chain_takes_every_mask_the_model_takes(mask_shape):
    """Images and masks are reordered once per chain; the value and gradient are the model's."""
    model = _model()
    x, z = _data()
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(3)) > 0.4
    chain = CompiledLangevin(model, compile=False)
    assert chain.native_order
    value, grad = chain.value_and_grad(x, z, mask)
    leaf = z.clone().requires_grad_(True)
    expected = model.log_joint(x, mask, z=leaf)
    expected.sum().backward()
    torch.testing.assert_close(value, expected.detach(), atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(grad, leaf.grad, atol=1e-4, rtol=1e-5)
    # the masked chain, in native order and in image order, follows the eager reference
    z_native = chain.run(x, z, 6, mask=mask, generator=torch.Generator().manual_seed(7))
    z_image = CompiledLangevin(model, compile=False, native_order=False).run(x, z, 6, mask=mask,
                                                                              generator=torch.Generator().manual_seed(7))
    expected_z = _eager_chain(model, x, z, 6, mask=mask)
    torch.testing.assert_close(z_image, expected_z, atol=2e-5, rtol=0)
    torch.testing.assert_close(z_native, expected_z, atol=2e-5, rtol=0)


def test_a_chain_that_cannot_compile_warns_once_and_runs_eagerly():
    model = _model(train=True)
    reference = copy.deepcopy(model)
    x, z0 = _data()
    chain = CompiledLangevin(model, step_size=0.1, label="test-no-compiler")

    def broken(*args):
        for b in model.generator.buffers():  # a half-done call must not leave its trace
            b.add_(1)
        raise RuntimeError("InductorError: CppCompileError: C++ compiler not found")

    chain._grad_and_value = broken
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*C\\+\\+ compiler not found.*runs eagerly"):
        z = chain.run(x, z0, 5, generator=torch.Generator().manual_seed(7))
    assert not chain.compiled and "compiler not found" in chain.compile_error
    torch.testing.assert_close(z, _eager_chain(reference, x, z0, 5), atol=2e-5, rtol=0)
    for a, b in zip(model.generator.buffers(), reference.generator.buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # a genuine error in the inputs is still raised, not hidden by the fallback
    with pytest.raises(ValueError, match="1, 28, 28"):
        CompiledLangevin(model, label="test-bad-input").run(x[:, :, :20], z0, 1)


def test_compiled_dataset_inference_is_the_eager_inference():
    from pyro_lfbm.infer import infer_dataset

    model = _model(train=False)
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    results = {}
    for compile in (False, True):
        torch.manual_seed(0)
        results[compile] = infer_dataset(model, x, num_steps=6, step_size=0.1, batch_size=5, progress=False, compile=compile)
    torch.testing.assert_close(results[True].z, results[False].z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[True].log_joint, results[False].log_joint, atol=1e-2, rtol=1e-5)
