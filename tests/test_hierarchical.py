"""The hierarchical latent model (latents at three generator layers, one joint flow prior): its log
joint against hand-written arithmetic, the joint flow density against a brute-force Jacobian, the
guides' chains over several sites, and the anomaly command end to end (train, save, resume, score)."""

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn
from torch.autograd.functional import jacobian

import pyro.distributions as dist

from pyro_lfbm import FlowPrior, GaussianPrior, HierarchicalLatentModel, LangevinGuide
from pyro_lfbm.priors import LatentPrior
from pyro_lfbm.infer import EncoderGuide, HybridGuide
from pyro_lfbm.infer.accelerate import FusedLangevinGuide
from pyro_lfbm.data import heldout_digit_split
from pyro_lfbm.infer.dataset import batched_log_joint_terms, infer_dataset
from pyro_lfbm.metrics import conditional_prior_draws, lower_layer_likelihood_ratio
from pyro_lfbm.tasks.anomaly import load_trained_model
from pyro_lfbm.nets import HierarchicalMNISTGenerator, MNISTEncoder
from pyro_lfbm.train import build, get_preset, isolated
from pyro_lfbm.train.presets import MODELS, PRESETS
from tests.conftest import experiment_script, require_mnist

REPO = Path(__file__).resolve().parents[1]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class LinearTanh(nn.Module):
    """A hand-checkable generator: z (B, 3) -> tanh(z W^T + b) as (B, 1, 2, 2)."""

    latent_dim, image_shape = 3, (1, 2, 2)

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[0.5, -1.0, 0.25], [1.5, 0.0, -0.5], [-0.75, 0.5, 1.0], [0.2, 0.3, -0.4]],
                                                dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([0.1, -0.2, 0.0, 0.3], dtype=torch.float64))

    def forward(self, z):
        return torch.tanh(z @ self.weight.T + self.bias).reshape(*z.shape[:-1], 1, 2, 2)


def tiny_model(sigma=0.5):
    return HierarchicalLatentModel(GaussianPrior(3).double(), LinearTanh(), sigma=sigma, latent_dims=(1, 1, 1))


def hand_log_joint(z1, z2, z3, x, sigma, mask=None):
    """log N(z; 0, I) + Σ_pixels log N(x; tanh(W z + b), σ²), written out for the tiny model (one example)."""
    w = [[0.5, -1.0, 0.25], [1.5, 0.0, -0.5], [-0.75, 0.5, 1.0], [0.2, 0.3, -0.4]]
    b = [0.1, -0.2, 0.0, 0.3]
    z = [z1, z2, z3]
    total = sum(-v * v / 2 - HALF_LOG_2PI for v in z)
    for i in range(4):
        if mask is not None and not mask[i]:
            continue
        mean = math.tanh(sum(w[i][j] * z[j] for j in range(3)) + b[i])
        total += -((x[i] - mean) ** 2) / (2 * sigma**2) - math.log(sigma) - HALF_LOG_2PI
    return total


def test_log_joint_is_the_hand_written_sum_on_a_tiny_case():
    model = tiny_model(sigma=0.5)
    z = torch.tensor([[0.3, -1.2, 0.7], [-0.5, 0.4, 2.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, -0.1, 0.9, -0.6], [0.0, 0.5, -0.3, 0.4]], dtype=torch.float64).reshape(2, 1, 2, 2)
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool).reshape(2, 1, 2, 2)
    for m in (None, mask):
        expected = torch.tensor([hand_log_joint(*z[b].tolist(), x[b].flatten().tolist(), 0.5,
                                                None if m is None else m[b].flatten().tolist()) for b in range(2)],
                                dtype=torch.float64)
        layers = {"z1": z[:, :1], "z2": z[:, 1:2], "z3": z[:, 2:]}
        assert torch.allclose(model.log_joint(x, m, **layers), expected, atol=1e-12, rtol=0)
        terms = model.log_joint_terms(x, z, m)
        assert torch.allclose(terms["prior"] + terms["likelihood"], expected, atol=1e-12, rtol=0)
        # the Pyro model: three latent sites of log probability 0, the joint prior as one factor, the likelihood
        trace = poutine.trace(poutine.condition(model, data=layers)).get_trace(x, m)
        trace.compute_log_prob()
        sites = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "data"]
        assert sites == ["z1", "z2", "z3", "prior", "x"]
        assert all(torch.equal(trace.nodes[n]["log_prob"], torch.zeros(2, dtype=torch.float64)) for n in ("z1", "z2", "z3"))
        assert torch.allclose(sum(trace.nodes[n]["log_prob"] for n in sites), expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        model.log_joint(x, z1=z[:, :1], z2=z[:, 1:2])
    with pytest.raises(ValueError, match="sum to"):
        HierarchicalLatentModel(GaussianPrior(4), LinearTanh(), latent_dims=(1, 1, 1))


def flow_model(seed=0):
    """A float64 hierarchical MNIST model with a flow prior whose parameters all moved from their init."""
    torch.manual_seed(seed)
    prior = FlowPrior(7, num_steps=2, hidden_dim=8)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = HierarchicalLatentModel(prior, HierarchicalMNISTGenerator((3, 2, 2), hidden_dim=16, channels=4), latent_dims=(3, 2, 2))
    return model.double().eval()


def test_the_joint_flow_density_over_all_layers_is_exact():
    """log p(z₁, z₂, z₃) = log N(f(z); 0, I) + log|det ∂f/∂z| over the concatenation, the Jacobian by brute force."""
    model = flow_model()
    z = torch.randn(4, 7, dtype=torch.float64)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    f = model.prior.flow
    brute = torch.stack([-0.5 * f(row).pow(2).sum() - 7 * HALF_LOG_2PI + torch.linalg.slogdet(jacobian(f, row))[1] for row in z])
    assert torch.allclose(model.log_joint_terms(x, z)["prior"], brute, atol=1e-10, rtol=0)
    layers = model.split_latents(z)
    assert torch.allclose(model.log_joint(x, **layers) - model.log_joint_terms(x, z)["likelihood"], brute, atol=1e-10, rtol=0)
    # a prior sample of the Pyro model is one joint draw of the flow, handed out layer by layer
    torch.manual_seed(5)
    trace = poutine.trace(model).get_trace(x)
    torch.manual_seed(5)
    joint = model.prior.sample((4,))
    assert torch.equal(torch.cat([trace.nodes[n]["value"] for n in ("z1", "z2", "z3")], -1), joint)


def test_the_generator_injects_each_layer_where_it_says():
    gen = HierarchicalMNISTGenerator((3, 2, 2), hidden_dim=0, channels=4, batch_norm=False).double()
    z = torch.randn(2, 7, dtype=torch.float64)
    z1, z2, z3 = z[:, :3], z[:, 3:5], z[:, 5:]
    h7 = torch.relu(gen.fc(z1) + gen.inject7(z2)).view(2, 4, 7, 7)
    up = nn.functional.conv_transpose2d(h7, gen.up14.weight, gen.up14.bias, stride=2)
    h14 = torch.relu(up + gen.inject14(z3).view(2, 2, 14, 14))
    expected = torch.tanh(nn.functional.conv_transpose2d(h14, gen.up28.weight, gen.up28.bias, stride=2))
    assert torch.allclose(gen(z), expected, atol=1e-12)
    for cols in (slice(0, 3), slice(3, 5), slice(5, 7)):  # every layer changes the image
        moved = z.clone()
        moved[:, cols] += 1.0
        assert not torch.allclose(gen(moved), gen(z))


def test_the_guides_chains_move_every_site_by_the_gradient_of_the_log_joint():
    model = flow_model()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1
    z0 = torch.randn(3, 7, dtype=torch.float64)
    init = lambda *args: model.split_latents(z0)  # noqa: E731
    step = 0.3
    # one noise-free step is z + s²/2 ∇_z log p(x, z), for every layer at once
    leaf = z0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_joint(x, **model.split_latents(leaf)).sum(), leaf)
    expected = z0 + step**2 / 2 * grad
    for guide in (LangevinGuide(model, num_steps=1, step_size=step, noise=False, init=init),
                  LangevinGuide(model, num_steps=1, step_size=step, noise=False, init=init, use_fast_path=False),
                  FusedLangevinGuide(model, num_steps=1, step_size=step, noise=False, init=init, compile=False)):
        out = guide.infer(x)
        assert set(out) == {"z1", "z2", "z3"}
        assert torch.allclose(model.join_latents(out), expected, atol=1e-10, rtol=0)
        for name, value in model.split_latents(z0).items():
            assert (out[name] - value).abs().min() > 0, name  # every coordinate of every layer moved
    # with noise, the chains move every site; conditioning the top layer leaves it where it is (a site alone)
    torch.manual_seed(0)
    top = torch.zeros(3, 3, dtype=torch.float64)
    conditioned = poutine.condition(model, data={"z1": top})
    out = LangevinGuide(conditioned, num_steps=5, step_size=0.1).infer(x)
    assert set(out) == {"z2", "z3"} and all(v.abs().min() > 0 for v in out.values())
    # the data-set inference returns the concatenated latent, and its terms at it
    result = infer_dataset(model, x, num_steps=2, step_size=0.1, batch_size=2, progress=False)
    assert result.z.shape == (3, 7) and set(model.split_latents(result.z)) == {"z1", "z2", "z3"}
    terms = model.log_joint_terms(x, result.z)
    assert torch.allclose(result.log_joint, terms["prior"] + terms["likelihood"], atol=1e-10)


def test_the_encoder_and_hybrid_guides_give_one_gaussian_site_per_layer():
    model = flow_model().float()
    encoder = EncoderGuide(MNISTEncoder(7, hidden_dim=16, channels=4), site=("z1", "z2", "z3"), sizes=(3, 2, 2)).eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    trace = poutine.trace(encoder).get_trace(x)
    assert [trace.nodes[n]["value"].shape for n in ("z1", "z2", "z3")] == [(4, 3), (4, 2), (4, 2)]
    loc, scale = encoder.encode(x)
    q = torch.distributions.Normal(loc, scale)
    joint = torch.cat([trace.nodes[n]["value"] for n in ("z1", "z2", "z3")], -1)
    trace.compute_log_prob()
    assert torch.allclose(sum(trace.nodes[n]["log_prob"] for n in ("z1", "z2", "z3")), q.log_prob(joint).sum(-1), atol=1e-5)
    # the ELBO of the encoder guide at one draw z ~ q: log p(x, z) - log q(z | x), as Trace_ELBO scores its traces
    model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(x)
    elbo = model_trace.log_prob_sum() - trace.log_prob_sum()
    expected = (model.log_joint(x, **model.split_latents(joint)) - q.log_prob(joint).sum(-1)).sum()
    assert torch.allclose(elbo, expected, rtol=1e-6)
    loss = Trace_ELBO().differentiable_loss(model, encoder, x)
    loss.backward()  # the ELBO's gradient reaches every part: encoder, flow prior, generator
    for part in (encoder, model.prior, model.generator):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.requires_grad), part
    # the hybrid guide starts at the encoder mean of every layer
    hybrid = HybridGuide(model, encoder, num_steps=0)
    assert torch.equal(model.join_latents(hybrid.infer(x)), loc.detach())
    with pytest.raises(ValueError, match="sum to"):
        EncoderGuide(MNISTEncoder(7, hidden_dim=16, channels=4), site=("z1", "z2"), sizes=(3, 3))


def readme_presets():
    text = (REPO / "docs" / "guide" / "main_command.md").read_text()  # the README's main-command details
    found = re.search(r"--preset \{([a-z,-]+)\}", text)
    assert found, "docs/guide/main_command.md names the presets as --preset {a,b,c}"
    return found.group(1).split(",")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("guide", ["langevin", "encoder", "hybrid"])
def test_each_preset_named_in_the_readme_builds_and_trains_one_batch(model, guide):
    names = readme_presets()
    assert set(names) == set(PRESETS)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    for name in names:
        if PRESETS[name]().learn.test_steps == 0 and guide == "langevin":  # scored at an encoder's z: needs one
            with pytest.raises(ValueError, match="no encoder"):
                get_preset(name, "flow", guide, model).check()
            continue
        preset = get_preset(name, "flow", guide, model)
        preset = replace(preset, learn=replace(preset.learn, batch_size=4, num_steps=1))
        with isolated(0):
            recipe = build(preset)
            before = [p.detach().clone() for p in recipe.model.parameters()]
            loss = recipe.trainer.step(x)["loss"]
            assert math.isfinite(loss), (name, model, guide)
            assert any(not torch.equal(a, b) for a, b in zip(before, recipe.model.parameters())), (name, model, guide)
        if model == "hierarchical":
            dims = preset.model.layer_dims
            assert len(dims) == 3 and sum(dims) == recipe.model.latent_dim == recipe.model.prior.latent_dim


def run_anomaly(*args):
    cmd = [sys.executable, str(REPO / "experiments" / "anomaly.py"), "--heldout", "7", "--model", "hierarchical", "--preset",
           "tiny", "--limit-train", "150", "--limit-test", "60", "--test-batch-size", "30", "--batchnorm", "eval",
           "--chain", "eager", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_anomaly_command_trains_saves_resumes_and_scores_the_hierarchical_model(tmp_path):
    root = str(require_mnist())
    run_anomaly("--epochs", "2", "--data-root", root, "--out", str(tmp_path / "full"))
    run_dir = tmp_path / "full" / "heldout7-flow-hierarchical-seed1"
    table = pd.read_csv(run_dir / "metrics.csv")
    assert set(table.score) == {"joint", "recon", "prior"} and set(table.model) == {"hierarchical"}
    assert json.loads((run_dir / "run.json").read_text())["config"]["model"]["layer_dims"] == [8, 4, 4]
    scores = torch.load(run_dir / "scores.pt")
    assert torch.allclose(scores["joint"], scores["recon"] + scores["prior"])
    ckpt = tmp_path / "full" / "checkpoints" / "lfbm-flow-hierarchical-heldout7-seed1-tiny.pt"
    # the saved latents are those of the scores: the trained model's terms at them give the scores again
    assert scores["z"].shape == (60, 16) and scores["latent_dims"].tolist() == [8, 4, 4]
    preset = get_preset("tiny", "flow", "langevin", "hierarchical")
    with isolated(0):
        model = build(preset).model
    load_trained_model(model, ckpt)
    split = heldout_digit_split(root, heldout=7, seed=1).subset(150, 60, seed=1)
    terms = batched_log_joint_terms(model, split.test_x, scores["z"])  # eval mode, as --batchnorm eval scored
    assert torch.allclose(-terms["likelihood"], scores["recon"], rtol=1e-5) and torch.allclose(-terms["prior"], scores["prior"], rtol=1e-5)
    # one epoch, then --resume to two: the uninterrupted run's model and scores
    run_anomaly("--epochs", "1", "--data-root", root, "--out", str(tmp_path / "part"))
    run_anomaly("--epochs", "2", "--resume", "--overwrite", "--data-root", root, "--out", str(tmp_path / "part"))
    resumed = torch.load(tmp_path / "part" / "heldout7-flow-hierarchical-seed1" / "scores.pt")
    assert torch.allclose(resumed["joint"], scores["joint"], rtol=1e-5)
    # scoring the saved checkpoint again gives the same scores, and --llr-layers adds Havtorn's ratios beside them
    run_anomaly("--eval-only", str(ckpt), "--llr-layers", "1", "2", "--data-root", root, "--out", str(tmp_path / "again"))
    again = torch.load(tmp_path / "again" / "heldout7-flow-hierarchical-seed1" / "scores.pt")
    assert torch.equal(again["joint"], scores["joint"])
    assert again["llr1"].shape == again["llr2"].shape == (60,) and bool(torch.isfinite(again["llr2"]).all())
    rows = pd.read_csv(tmp_path / "again" / "heldout7-flow-hierarchical-seed1" / "metrics.csv")
    assert set(rows.score) == {"joint", "recon", "prior", "llr1", "llr2"}
    # the decision-function comparison carries the ratios, alone (the run's AUPRC) and beside the prior term
    decision = subprocess.run([sys.executable, str(REPO / "experiments" / "anomaly_decision.py"),
                               str(tmp_path / "again" / "heldout7-flow-hierarchical-seed1"), "--data-root", root,
                               "--out", str(tmp_path / "decision")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert decision.returncode == 0, decision.stderr
    compared = pd.read_csv(tmp_path / "decision" / "decision.csv").set_index("score").auprc
    assert {"z(prior)+z(llr1)", "z(prior)+z(llr2)"} <= set(compared.index)
    assert compared["llr2"] == pytest.approx(rows.set_index("score").auprc["llr2"])


def test_the_hierarchical_command_defaults_to_the_eager_chain_and_names_its_runs(tmp_path):
    anomaly = experiment_script("anomaly")
    from pyro_lfbm.harness.anomaly_experiment import checkpoint_name, run_folder_name, run_variant

    def config(*args):
        return anomaly.run_config(anomaly.build_parser().parse_args(["--preset", "tiny", "--out", str(tmp_path), *args]))

    assert config().chain == "compiled" and config("--model", "hierarchical").chain == "eager"
    assert config("--model", "hierarchical", "--chain", "compiled").chain == "compiled"
    cfg = config("--model", "hierarchical", "--guide", "encoder")
    assert run_folder_name(7, "flow", 1, run_variant(cfg)) == "heldout7-flow-hierarchical-encoder-seed1"
    assert checkpoint_name(cfg) == "lfbm-flow-hierarchical-encoder-heldout7-seed1-tiny.pt"
    assert checkpoint_name(config()) == "lfbm-flow-heldout7-seed1-tiny.pt"  # LFBM runs keep their names
    # --set layer_dims resizes the layers (the joint latent follows) of the model that is built
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset

    narrow = anomaly_preset(config("--model", "hierarchical", "--set", "layer_dims=8,2,2"))
    with isolated(0):
        model = build(narrow).model
    assert model.latent_dims == (8, 2, 2) and model.prior.latent_dim == narrow.model.latent_dim == 12


def test_the_hierarchical_preset_brings_its_model_guide_sigma_and_decision_function(tmp_path):
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset, checkpoint_name, run_folder_name, run_recipe, run_variant

    anomaly = experiment_script("anomaly")

    def config(*args):
        return anomaly.run_config(anomaly.build_parser().parse_args(["--preset", "cpu-hierarchical", "--out", str(tmp_path), *args]))

    cfg = config()
    preset = anomaly_preset(cfg)
    assert (cfg.model, cfg.guide, cfg.chain) == ("hierarchical", "encoder", "eager")
    assert preset.model.layer_dims == (20, 10, 10) and preset.model.latent_dim == 40 and preset.model.sigma == 0.5
    # the flow's size, chosen on development digits (results/anomaly/hierarchical_flow_capacity/)
    assert (preset.model.flow_steps, preset.model.flow_width) == (10, 128)
    assert (preset.learn.epochs, preset.learn.test_steps, preset.guide.kind, preset.score) == (40, 0, "encoder", "prior")
    assert run_folder_name(7, "flow", 1, run_variant(cfg)) == "heldout7-flow-hierarchical-encoder-seed1"
    assert checkpoint_name(cfg) == "lfbm-flow-hierarchical-encoder-heldout7-seed1-cpu-hierarchical.pt"
    assert run_recipe(vars(cfg)) == "cpu-hierarchical"  # the preset's own model and guide go unnamed
    flat = config("--model", "latent")
    assert anomaly_preset(flat).model.layer_dims == () and anomaly_preset(flat).model.latent_dim == 20
    assert (flat.chain, run_recipe(vars(flat))) == ("compiled", "cpu-hierarchical latent")
    assert get_preset("cpu-hierarchical", "flow", "hybrid").guide.kind == "hybrid"
    with pytest.raises(ValueError, match="decision function 'iwae'"):
        replace(preset, score="iwae").check()


def test_the_hierarchical_preset_prints_its_decision_function(tmp_path):
    root = str(require_mnist())
    cmd = [sys.executable, str(REPO / "experiments" / "anomaly.py"), "--preset", "cpu-hierarchical", "--epochs", "1",
           "--limit-train", "100", "--limit-test", "40", "--no-progress", "--data-root", root, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    headline = [line for line in proc.stdout.splitlines() if line.startswith("AUPRC")]
    assert [line.split(", BatchNorm")[0] for line in headline] == ["AUPRC (−log p(z)"] * 2  # both BatchNorm modes
    assert "heldout7-flow-hierarchical-encoder-seed1" in proc.stdout


def test_a_bernoulli_likelihood_is_one_set_option_of_the_command_and_is_recorded(tmp_path):
    root = str(require_mnist())
    anomaly = experiment_script("anomaly")
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset
    from pyro_lfbm.harness.cli import UsageError

    def config(*args):
        return anomaly.run_config(anomaly.build_parser().parse_args(["--out", str(tmp_path), *args]))

    preset = anomaly_preset(config("--preset", "cpu-hierarchical", "--set", "pixel_likelihood=bernoulli"))
    assert preset.to_dict()["model"]["pixel_likelihood"] == "bernoulli"
    assert "pixel_likelihood" not in get_preset("cpu-hierarchical").to_dict()["model"]  # Gaussian configs unchanged
    with isolated(0):
        model = build(preset).model
    assert model.pixel_likelihood == "bernoulli" and "pixel_likelihood='bernoulli'" in repr(model)
    with pytest.raises(UsageError, match="unknown pixel_likelihood 'poisson'; choose one of gaussian, bernoulli"):
        anomaly_preset(config("--set", "pixel_likelihood=poisson"))
    cmd = [sys.executable, str(REPO / "experiments" / "anomaly.py"), "--preset", "cpu-hierarchical", "--epochs", "1",
           "--set", "pixel_likelihood=bernoulli", "--limit-train", "100", "--limit-test", "40", "--no-progress",
           "--data-root", root, "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "heldout7-flow-hierarchical-encoder-seed1"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["model"]["pixel_likelihood"] == "bernoulli"
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert rows.auprc.notna().all() and len(rows)


@pytest.mark.parametrize("preset, score", [("cpu-hierarchical", "prior"), ("cpu-hybrid", "joint")])
def test_the_ranked_images_follow_the_presets_decision_function(tmp_path, monkeypatch, preset, score):
    from pyro_lfbm.harness import anomaly_experiment
    from pyro_lfbm.tasks.anomaly import AnomalyResult

    cfg = anomaly_experiment.AnomalyRunConfig(preset=preset)
    n = 6
    scores = {"joint": torch.arange(n, dtype=torch.float), "recon": torch.rand(n),
              "prior": -torch.arange(n, dtype=torch.float)}
    result = AnomalyResult(rows=[{"score": "joint", "auprc": 0.5}], scores=scores, is_anomaly=torch.tensor([0, 1] * 3),
                           test_x=torch.zeros(n, 1, 28, 28), scores_by_mode={"eval": scores})
    ranked = []
    monkeypatch.setattr(anomaly_experiment, "save_ranked_grid", lambda images, by, path: ranked.append((by, path.name)))
    anomaly_experiment.save_anomaly_run(result, cfg, tmp_path / "run")
    assert len(ranked) == 1 and ranked[0][1] == "ranked.png" and ranked[0][0] is scores[score]


def test_conditional_prior_draws_follow_the_flows_conditional_by_quadrature():
    """MALA draws of z₂ given z₁ under a 2-d flow whose parameters all moved: their mean and variance are
    those of p(z₂ | z₁) ∝ p(z₁, z₂) integrated on a grid (here means near −3.7, 0.1 and 4.0, variances
    near 3.9: far from the chains' N(0, 1) start)."""
    torch.manual_seed(1)
    prior = FlowPrior(2, num_steps=2, hidden_dim=8).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.2 * torch.randn_like(p))
    given = torch.tensor([[-1.0], [0.3], [1.5]], dtype=torch.float64)
    grid = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    draws, acceptance = conditional_prior_draws(prior, given, 1, num_samples=4000, num_warmup=200, num_steps=200,
                                                generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 3, 1) and 0.4 < float(acceptance.mean()) < 0.8  # adapted toward 0.574
    for b in range(3):
        with torch.no_grad():
            log_p = prior.log_prob(torch.stack([given[b, 0].expand_as(grid), grid], -1))
        w = torch.softmax(log_p, 0)
        mean, var = float((w * grid).sum()), float((w * grid**2).sum() - (w * grid).sum() ** 2)
        d = draws[:, b, 0]
        se = math.sqrt(var / 4000)
        assert abs(float(d.mean()) - mean) < 5 * se, (b, float(d.mean()), mean)
        assert abs(float(d.var()) / var - 1) < 5 * math.sqrt(2 / 4000), (b, float(d.var()), var)


class CorrelatedGaussianPrior(LatentPrior):
    """N(0, Σ) over R³ with a narrow, correlated Σ: its conditionals are Gaussians in closed form."""

    def __init__(self, cov):
        super().__init__(3)
        self.register_buffer("cov", cov)

    def dist(self):
        return dist.MultivariateNormal(torch.zeros(3, dtype=self.cov.dtype), covariance_matrix=self.cov)


def test_conditional_prior_draws_adapt_to_a_narrow_conditional_and_match_its_closed_form():
    """Given z₁, (z₂, z₃) ~ N(Σ₂₁ Σ₁₁⁻¹ z₁, Σ₂₂ − Σ₂₁ Σ₁₁⁻¹ Σ₁₂), conditional standard deviations near 0.03 and 0.05:
    the default first step of 0.1 rejects most moves there, the adapted one does not."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.05, 0.0], [-0.5, 0.02, 0.04]], dtype=torch.float64)
    cov = a @ a.T
    prior = CorrelatedGaussianPrior(cov)
    given = torch.tensor([[0.7], [-1.3]], dtype=torch.float64)
    draws, acceptance = conditional_prior_draws(prior, given, 2, num_samples=4000, generator=torch.Generator().manual_seed(1))
    assert 0.4 < float(acceptance.mean()) < 0.8
    cond_cov = cov[1:, 1:] - cov[1:, :1] @ cov[:1, 1:] / cov[0, 0]
    for b in range(2):
        mean = (cov[1:, 0] / cov[0, 0]) * given[b, 0]
        d = draws[:, b]
        se = cond_cov.diagonal().sqrt() / math.sqrt(4000)
        assert bool(((d.mean(0) - mean).abs() < 5 * se).all()), (d.mean(0), mean)
        assert torch.allclose(torch.cov(d.T), cond_cov, rtol=5 * math.sqrt(2 / 4000), atol=0), (torch.cov(d.T), cond_cov)


class Linear(nn.Module):
    """z (B, 3) -> z W^T + b as (B, 1, 2, 2): E over a Gaussian layer of log N(x; g(z), σ²) in closed form."""

    latent_dim, image_shape = 3, (1, 2, 2)

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(LinearTanh().weight.detach().clone())
        self.bias = nn.Parameter(LinearTanh().bias.detach().clone())

    def forward(self, z):
        return (z @ self.weight.T + self.bias).reshape(*z.shape[:-1], 1, 2, 2)


@pytest.mark.parametrize("k", [1, 2])
def test_the_lower_layer_likelihood_ratio_is_the_closed_form_of_a_linear_gaussian_model(k):
    """With p(z) = N(0, I) and g(z) = W z + b, E_{z_low ~ N(0, I)} log N(x; g(z_high, z_low), σ²)
    = Σ_pixels [−(x − W_high z_high − b)² − Σ_low W²] / 2σ² − n log(σ √2π)."""
    sigma = 0.5
    model = HierarchicalLatentModel(GaussianPrior(3).double(), Linear(), sigma=sigma, latent_dims=(1, 1, 1))
    z = torch.tensor([[0.3, -1.2, 0.7], [-0.5, 0.4, 2.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, -0.1, 0.9, -0.6], [0.0, 0.5, -0.3, 0.4]], dtype=torch.float64).reshape(2, 1, 2, 2)
    w, b = model.generator.weight.detach(), model.generator.bias.detach()
    high = 3 - k
    residual = x.reshape(2, 4) - z[:, :high] @ w[:, :high].T - b
    expected_refit = (-(residual**2).sum(1) - (w[:, high:] ** 2).sum()) / (2 * sigma**2) - 4 * (math.log(sigma) + HALF_LOG_2PI)
    expected = model.log_joint_terms(x, z)["likelihood"] - expected_refit
    llr, acceptance = lower_layer_likelihood_ratio(model, x, z, k, num_samples=20000, num_warmup=50, num_steps=50, seed=0)
    assert llr.shape == (2,) and acceptance.shape == (2,)
    assert torch.allclose(llr, expected.detach(), atol=0.15, rtol=0), (llr, expected)
    with pytest.raises(ValueError, match="between 1 and 2"):
        lower_layer_likelihood_ratio(model, x, z, 3)
    with pytest.raises(ValueError, match="z must be"):
        lower_layer_likelihood_ratio(model, x, z[:, :2], 1)
