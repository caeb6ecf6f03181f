"""A prior registered by a user is built, trained and reported by name like the built-in ones."""

import pyro.distributions as dist
import pytest
import torch

from pyro_lfbm.harness.formatting import other_priors, prior_label
from pyro_lfbm.priors import EnergyPrior, FlowPrior, GaussianPrior, LatentPrior
from pyro_lfbm.train import PRIOR_KINDS, PriorKind, get_preset, register_prior
from pyro_lfbm.train.presets import ModelConfig, prior_names
from pyro_lfbm.train.recipe import build


class LaplacePrior(LatentPrior):
    def dist(self):
        return dist.Laplace(self.base_loc, self.base_scale).to_event(1)


@pytest.fixture
def laplace():
    kind = register_prior(PriorKind("laplace", "Laplace", "LLM", lambda c: LaplacePrior(c.latent_dim),
                                    prior_lr_fraction=0.5))
    yield kind
    del PRIOR_KINDS["laplace"]


def test_the_built_in_priors_build_by_name_and_keep_their_labels():
    expected = {"flow": FlowPrior, "ebm": EnergyPrior, "gaussian": GaussianPrior}
    for name, cls in expected.items():
        assert type(ModelConfig(prior=name, latent_dim=4, flow_steps=1, flow_width=8, ebm_hidden=8).build_prior()) is cls
    assert prior_names() == ("flow", "ebm", "gaussian") and other_priors() == ("ebm", "gaussian")
    assert get_preset("cpu", "ebm").learn.optim.prior_lr == get_preset("cpu").learn.optim.lr / 5  # LEBM's own rate


def test_a_registered_prior_is_built_trained_and_named(laplace):
    preset = get_preset("tiny", "laplace")
    assert preset.learn.optim.prior_lr == preset.learn.optim.lr * 0.5
    recipe = build(preset)
    assert isinstance(recipe.model.prior, LaplacePrior)
    x = torch.rand(preset.learn.batch_size, *preset.model.image_shape) * 2 - 1
    metrics = recipe.trainer.step(x)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert prior_label("laplace") == "Laplace (LLM)" and prior_label("laplace", model=False) == "Laplace"
    assert prior_names()[-1] == "laplace" and "laplace" in other_priors()


def test_unknown_and_duplicate_priors_are_refused(laplace):
    with pytest.raises(ValueError, match="unknown prior 'nope'; choose one of flow, ebm, gaussian, laplace"):
        ModelConfig(prior="nope").check()
    with pytest.raises(ValueError, match="registered already"):
        register_prior(laplace)
