"""The second-stage density of the codes (:func:`pyro_lfbm.train.refit.refit_prior`) and the anomaly
score it adds (``prior_refit``)."""

import math

import pytest
import torch

from pyro_lfbm.priors import EnergyPrior, FlowPrior, GaussianPrior, TopDownPrior
from pyro_lfbm.train.refit import refit_prior


def _gaussian_codes(n, seed=0):
    """n codes from N(m, Σ) in R^3 and the exact entropy of that Gaussian (nats)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([[0.5, 0.0, 0.0], [0.3, 0.2, 0.0], [-0.2, 0.1, 0.8]])
    mean = torch.tensor([1.0, -2.0, 0.5])
    codes = torch.randn(n, 3, generator=g) @ scale.T + mean
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * scale @ scale.T)
    return codes, float(entropy)


def test_a_flow_refit_to_gaussian_codes_reaches_their_entropy_and_leaves_the_prior_alone():
    torch.manual_seed(0)
    prior = FlowPrior(3, num_steps=2, hidden_dim=16)
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    codes, entropy = _gaussian_codes(4000)
    fit = refit_prior(prior, codes, epochs=60, lr=1e-2, batch_size=200, seed=0)
    fresh, _ = _gaussian_codes(4000, seed=1)
    with torch.no_grad():
        nll = float(-fit.prior.log_prob(fresh).mean())
    # a Gaussian is exactly representable (ActNorm and the LU mixer are affine): the cross-entropy on fresh
    # codes is the entropy plus a small fitting error; the starting prior is far from it
    assert entropy <= nll + 0.02 and nll < entropy + 0.1, (nll, entropy)
    assert fit.history[0]["validation_nll"] > entropy + 1
    assert all(torch.equal(before[k], v) for k, v in prior.state_dict().items())
    assert fit.prior is not prior and not fit.prior.training


def test_the_kept_state_is_the_best_validation_epoch_and_patience_stops_the_fit():
    torch.manual_seed(0)
    codes, _ = _gaussian_codes(1000)
    fit = refit_prior(FlowPrior(3, num_steps=1, hidden_dim=8), codes, epochs=40, lr=0.3, batch_size=100, patience=2, seed=3)
    nlls = [row["validation_nll"] for row in fit.history]
    assert [row["epoch"] for row in fit.history] == list(range(len(fit.history)))
    assert fit.best_epoch == min(range(len(nlls)), key=nlls.__getitem__)
    assert len(fit.history) - 1 == 40 or len(fit.history) - 1 - fit.best_epoch == 2
    validation = codes[torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:100]]
    with torch.no_grad():
        assert float(-fit.prior.log_prob(validation).mean()) == pytest.approx(nlls[fit.best_epoch], rel=1e-5)


def test_the_same_seed_refits_the_same_prior():
    codes, _ = _gaussian_codes(600)
    prior = FlowPrior(3, num_steps=1, hidden_dim=8)
    a, b = (refit_prior(prior, codes, epochs=3, batch_size=100, seed=5) for _ in range(2))
    assert a.history[-1]["validation_nll"] == b.history[-1]["validation_nll"]
    assert all(torch.equal(a.prior.state_dict()[k], v) for k, v in b.prior.state_dict().items())


@pytest.mark.parametrize("prior, codes, settings, message", [
    (GaussianPrior(3), torch.randn(500, 3), {}, "no parameters"),
    (EnergyPrior(3, hidden_dims=(8,)), torch.randn(500, 3), {}, "unnormalised"),
    (TopDownPrior([FlowPrior(2, num_steps=1, hidden_dim=4), EnergyPrior(1, hidden_dims=(4,))]), torch.randn(500, 3), {},
     "unnormalised"),
    (FlowPrior(3, num_steps=1, hidden_dim=4), torch.randn(500, 4), {}, r"shape \(N, 3\)"),
    (FlowPrior(3, num_steps=1, hidden_dim=4), torch.full((500, 3), math.nan), {}, "NaN"),
    (FlowPrior(3, num_steps=1, hidden_dim=4), torch.randn(1, 3), {}, "at least 2"),
    (FlowPrior(3, num_steps=1, hidden_dim=4), torch.randn(500, 3), {"patience": 0}, "patience"),
    (FlowPrior(3, num_steps=1, hidden_dim=4), torch.randn(500, 3), {"validation_fraction": 1.0}, "validation_fraction"),
])
def test_bad_input_is_refused_in_one_line_before_fitting(prior, codes, settings, message):
    with pytest.raises(ValueError, match=message) as err:
        refit_prior(prior, codes, **settings)
    assert "\n" not in str(err.value)


def test_a_top_down_prior_of_flows_has_a_normalised_density():
    assert TopDownPrior([FlowPrior(2, num_steps=1, hidden_dim=4), FlowPrior(2, num_steps=1, hidden_dim=4)]).normalised_density
    assert not EnergyPrior(2).normalised_density and GaussianPrior(2).normalised_density


def test_the_refit_score_is_minus_the_refit_density_at_the_scored_z_and_keeps_running_statistics(tmp_path):
    from pyro_lfbm.tasks.anomaly import run_anomaly
    from pyro_lfbm.train.presets import get_preset
    from tests.conftest import scored_at_the_encoders_z, smooth_noise_split

    split = smooth_noise_split()
    preset = scored_at_the_encoders_z(get_preset("tiny", "flow", "encoder", model="hierarchical"))
    plain = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", batchnorm=("train", "eval"))
    refit = run_anomaly(preset, split, seed=1, trained_checkpoint=tmp_path / "c.pt", batchnorm=("train", "eval"),
                        refit_epochs=2)
    for mode in ("train", "eval"):
        assert set(refit.scores_by_mode[mode]) == set(plain.scores_by_mode[mode]) | {"prior_refit"}
        for name, score in plain.scores_by_mode[mode].items():  # the train-mode pass over the training images
            torch.testing.assert_close(refit.scores_by_mode[mode][name], score)  # moved no running statistic
    torch.testing.assert_close(refit.scores_by_mode["train"]["prior_refit"],
                               -refit.refits["train"].prior.log_prob(refit.latents).detach())
    assert refit.refits["eval"].history[0]["validation_nll"] != refit.refits["train"].history[0]["validation_nll"]
    assert {row["score"] for row in refit.rows} >= {"prior_refit"}
    with pytest.raises(ValueError, match="flow prior"):
        run_anomaly(preset.with_prior("gaussian"), split, refit_epochs=2)
