"""The one training recipe (pyro_lfbm.train.recipe): every guide kind equals the hand-written SVI
setup it stands for, and the recipe leaves the caller's RNG and param store alone."""

from dataclasses import FrozenInstanceError, replace

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_lfbm.infer import EncoderGuide, HybridGuide, LangevinGuide
from pyro_lfbm.nets import make_encoder
from pyro_lfbm.train import build, fit_preset, get_preset, isolated, run_tag, train_recipe
from pyro_lfbm.train.svi import SVITrainer, fit


def blobs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.nn.functional.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=28, mode="bilinear"))


def hand_written(kind, preset, x, seed=3):
    """The SVI run each preset kind stands for, written out: model, guide, Adam with decay, 2 batches."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = preset.model.build()
    m, learn = preset.model, preset.learn
    encoder = None
    if kind in ("encoder", "hybrid"):
        encoder = EncoderGuide(make_encoder(m.image_shape, m.latent_dim, hidden_dim=m.generator_hidden,
                                            channels=m.generator_channels, batch_norm=m.batch_norm))
    guide = {"langevin": lambda: LangevinGuide(model, num_steps=learn.num_steps, step_size=learn.step_size),
             "encoder": lambda: encoder,
             "hybrid": lambda: HybridGuide(model, encoder, num_steps=preset.guide.hybrid_steps,
                                           step_size=learn.step_size)}[kind]()
    svi = SVI(model, guide, learn.optim.build(), Trace_ELBO())
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003))
    for b in range(x.shape[0] // learn.batch_size):
        svi.step(x[order[b * learn.batch_size:(b + 1) * learn.batch_size]])
    return model, guide


@pytest.mark.parametrize("prior, kind", [("flow", "langevin"), ("gaussian", "langevin"), ("flow", "encoder"),
                                         ("gaussian", "encoder"), ("flow", "hybrid")])
def test_each_preset_kind_is_its_hand_written_svi_run(prior, kind):
    preset = get_preset("tiny", prior, kind)
    preset = replace(preset, learn=replace(preset.learn, batch_size=20, epochs=1, num_steps=2))
    x = blobs(40)
    expected, _ = hand_written(kind, preset, x)
    with isolated(seed=3):
        recipe = build(preset)
        model, guide, trainer = recipe
        assert isinstance(trainer, SVITrainer) and trainer.model is model and trainer.guide is guide
        assert type(guide) is {"langevin": LangevinGuide, "encoder": EncoderGuide, "hybrid": HybridGuide}[kind]
        assert (recipe.encoder_guide is None) == (kind == "langevin")
        history = train_recipe(recipe, x, seed=3, progress=False)
    assert len(history.epochs) == 1
    for (name, got), (_, want) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(got, want), name


def test_fit_drives_the_recipes_own_trainer_and_refuses_another_models():
    preset = get_preset("tiny", "flow")
    preset = replace(preset, learn=replace(preset.learn, batch_size=20, epochs=1, num_steps=2))
    x = blobs(40)
    with isolated(seed=3):
        recipe = build(preset)
        calls = []
        step = recipe.trainer.step
        recipe.trainer.step = lambda *batch: calls.append(1) or step(*batch)
        train_recipe(recipe, x, seed=3, progress=False)
        assert len(calls) == 2  # the trainer build() made is the one the loop stepped
        other = build(preset)
        with pytest.raises(ValueError, match="trainer must be an SVITrainer of this model and guide"):
            fit(recipe.model, recipe.guide, x, epochs=1, batch_size=20, trainer=other.trainer, progress=False)
        with pytest.raises(ValueError, match="pass optim and loss to the SVITrainer"):
            fit(recipe.model, recipe.guide, x, epochs=1, batch_size=20, trainer=recipe.trainer, loss=Trace_ELBO(),
                progress=False)


def test_the_recipe_leaves_the_callers_rng_and_param_store_alone(tmp_path):
    pyro.param("mine", torch.ones(2))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    preset = get_preset("tiny", "flow")
    preset = replace(preset, learn=replace(preset.learn, batch_size=20))
    model, history = fit_preset(preset, blobs(40), seed=1, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert list(pyro.get_param_store().keys()) == ["mine"]
    # the same seed gives the same model, whatever the caller's RNG state
    torch.manual_seed(999)
    again, _ = fit_preset(preset, blobs(40), seed=1, checkpoint_dir=None, progress=False)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_presets_are_frozen_and_langevin_presets_keep_their_checkpoint_names():
    preset = get_preset("tiny", "flow")
    with pytest.raises(FrozenInstanceError):
        preset.model.latent_dim = 4
    assert "guide" not in preset.to_dict()                   # configs and run tags of Langevin runs unchanged
    vae = get_preset("tiny", "flow", "encoder")
    assert vae.to_dict()["guide"] == {"kind": "encoder", "hybrid_steps": 5} and run_tag(vae, {}) != run_tag(preset, {})
    assert preset.with_epochs(3).learn.epochs == 3 and preset.with_epochs(None) is preset
    with pytest.raises(ValueError, match="unknown guide"):
        get_preset("tiny", "flow", "amortised")
    with pytest.raises(ValueError, match="hybrid_steps"):
        preset.with_guide("hybrid", hybrid_steps=-1)


def test_build_with_a_compiled_chain_gives_the_fused_guide_for_langevin_recipes_only():
    from pyro_lfbm.infer.accelerate import FusedLangevinGuide

    with isolated(0):
        recipe = build(get_preset("tiny", "flow"), compile_chain=True)
    assert type(recipe.guide) is FusedLangevinGuide and recipe.trainer.guide is recipe.guide
    assert recipe.guide.num_steps == get_preset("tiny", "flow").learn.num_steps
    with isolated(0):
        eager = build(get_preset("tiny", "flow"))
    assert type(eager.guide) is LangevinGuide
    with isolated(0):
        encoder = build(replace(get_preset("tiny", "flow"), guide=replace(get_preset("tiny", "flow").guide, kind="encoder")),
                        compile_chain=True)
    assert isinstance(encoder.guide, EncoderGuide)


@pytest.mark.parametrize("sampler", ["preconditioned", "underdamped"])
def test_a_langevin_preset_with_another_sampler_is_its_hand_written_svi_run(sampler):
    from pyro_lfbm.infer.samplers import sampler_by_name

    preset = get_preset("tiny", "flow").with_guide("langevin", sampler=sampler)
    preset = replace(preset, learn=replace(preset.learn, batch_size=20, epochs=1, num_steps=2))
    assert preset.to_dict()["guide"]["sampler"] == sampler  # checkpoints record it (and refuse a ULA run's)
    x = blobs(40)
    pyro.clear_param_store()
    torch.manual_seed(3)
    expected = preset.model.build()
    guide = LangevinGuide(expected, num_steps=2, step_size=preset.learn.step_size, sampler=sampler_by_name(sampler))
    svi = SVI(expected, guide, preset.learn.optim.build(), Trace_ELBO())
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3 * 100_003))
    for b in range(2):
        svi.step(x[order[b * 20:(b + 1) * 20]])
    ula = None
    for name in (sampler, "ula"):
        p = preset if name == sampler else get_preset("tiny", "flow")
        p = replace(p, learn=replace(p.learn, batch_size=20, epochs=1, num_steps=2))
        with isolated(seed=3):
            recipe = build(p)
            train_recipe(recipe, x, seed=3, progress=False)
        if name == sampler:
            assert type(recipe.guide.sampler) is type(sampler_by_name(sampler))
            for (key, got), (_, want) in zip(recipe.model.state_dict().items(), expected.state_dict().items()):
                assert torch.equal(got, want), key
            trained = recipe.model
        else:
            assert recipe.guide.sampler is None
            ula = recipe.model
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), ula.state_dict().values()))


def test_the_sampler_option_is_checked_in_one_line():
    with pytest.raises(ValueError, match="unknown sampler 'hmc'; choose one of ula, preconditioned, underdamped"):
        get_preset("tiny", "flow").with_guide("langevin", sampler="hmc")
    with pytest.raises(ValueError, match="option of the langevin guide"):
        get_preset("tiny", "flow").with_guide("encoder", sampler="underdamped")


@pytest.mark.parametrize("prior, kind, warns", [("ebm", "encoder", True), ("ebm", "hybrid", True), ("ebm", "langevin", False),
                                               ("flow", "encoder", False)])
def test_the_energy_prior_with_an_encoder_warns_that_it_can_diverge(prior, kind, warns):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(get_preset("tiny", prior, kind))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "can diverge" in str(w.message)]
    assert len(messages) == (1 if warns else 0)
    assert not warns or f"with the {kind} guide" in messages[0]
