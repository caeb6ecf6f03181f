import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import auc, precision_recall_curve

from pyro_lfbm.metrics.anomaly import anomaly_metrics, anomaly_scores, png_code_length
from pyro_lfbm.train.presets import get_preset
from tests.conftest import REPO, require_mnist, scored_at_the_encoders_z, smooth_noise_split


def test_metrics_follow_the_protocol():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = y + rng.normal(0, 1.0, 500)
    precision, recall, _ = precision_recall_curve(y, s)
    m = anomaly_metrics(torch.tensor(y), torch.tensor(s))
    assert m["auprc"] == pytest.approx(auc(recall, precision))
    assert 0.5 < m["auroc"] < 1 and m["prevalence"] == pytest.approx(y.mean())
    assert anomaly_metrics(y, y.astype(float))["auprc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        anomaly_metrics(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        anomaly_metrics(y, np.full(500, np.nan))


@pytest.mark.parametrize("prior", ["flow", "ebm"])
def test_joint_score_is_negative_log_joint_of_the_model(prior):
    model = get_preset("tiny", prior).model.build()
    x = torch.rand(30, 1, 28, 28) * 2 - 1
    scores, result = anomaly_scores(model, x, num_steps=5, batch_size=12, progress=False)
    assert model.training  # the caller's mode is restored
    model.eval()
    expected = -model.log_joint(x, z=result.z).detach()
    assert torch.allclose(scores["joint"], expected, atol=1e-3)
    assert torch.allclose(scores["joint"], scores["recon"] + scores["prior"])
    model.train()
    # reproducible for a seed
    again, _ = anomaly_scores(model, x, num_steps=5, batch_size=12, progress=False)
    assert torch.equal(again["joint"], scores["joint"])


def run_script(*args, env_root=None):
    cmd = [sys.executable, str(REPO / "experiments" / "anomaly.py"), *args, "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_end_to_end_smoke_run_writes_results(tmp_path):
    root = require_mnist()
    out = tmp_path / "out"
    proc = run_script("--heldout", "7", "--preset", "tiny", "--limit-train", "300", "--limit-test", "200",
                      "--test-batch-size", "64", "--data-root", str(root), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    run_dir = out / "heldout7-flow-seed1"
    for name in ("metrics.csv", "history.csv", "scores.pt", "precision_recall.png", "score_histograms.png",
                 "ranked.png", "run.json"):
        assert (run_dir / name).exists(), name
    table = pd.read_csv(run_dir / "metrics.csv")
    assert set(table.score) == {"joint", "recon", "prior"}
    assert table.auprc.between(0, 1).all()
    assert "AUPRC" in proc.stdout
    saved = torch.load(run_dir / "scores.pt")
    assert set(saved["batchnorm"]) == {"eval", "train"}  # every scored mode's scores, the metrics recomputable
    for row in table.itertuples():
        assert anomaly_metrics(saved["is_anomaly"], saved["batchnorm"][row.batchnorm][row.score])["auprc"] == pytest.approx(row.auprc)
    assert torch.equal(saved["joint"], saved["batchnorm"]["eval"]["joint"])

    # the decision-function comparison reads the run back and reproduces the run's own AUPRCs
    decision = subprocess.run([sys.executable, str(REPO / "experiments" / "anomaly_decision.py"), str(run_dir),
                               "--data-root", str(root), "--out", str(tmp_path / "decision")],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
    assert decision.returncode == 0, decision.stderr
    compared = pd.read_csv(tmp_path / "decision" / "decision.csv")
    assert {"joint-png", "recon-png", "z(prior)+z(recon-png)"} <= set(compared.score)
    merged = compared.merge(table, on=["batchnorm", "score"], suffixes=("", "_run"))
    assert len(merged) == len(table) and np.allclose(merged.auprc, merged.auprc_run)
    # a run kept without its scores adds its own metrics rows (e.g. the committed reference runs)
    kept = tmp_path / "kept" / run_dir.name
    shutil.copytree(run_dir, kept)
    (kept / "scores.pt").unlink()
    both = subprocess.run([sys.executable, str(REPO / "experiments" / "anomaly_decision.py"), str(run_dir), "--with-metrics",
                           str(kept), "--data-root", str(root), "--out", str(tmp_path / "decision2")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert both.returncode == 0, both.stderr
    joint = pd.read_csv(tmp_path / "decision2" / "decision.csv").query("score == 'joint'")
    assert len(joint) == 2 * table.batchnorm.nunique() and joint.groupby("batchnorm").auprc.nunique().eq(1).all()
    assert json.loads((run_dir / "run.json").read_text())["config"]["learn"]["test_batch_size"] == 64
    ckpt = out / "checkpoints" / "lfbm-flow-heldout7-seed1-tiny.pt"
    assert ckpt.exists()

    assert json.loads((run_dir / "run.json").read_text())["config"]["run"]["chain"] == "compiled"  # the default

    # scoring the checkpoint again, with the eager reference chain, reproduces the numbers
    again = run_script("--heldout", "7", "--preset", "tiny", "--limit-train", "300", "--limit-test", "200", "--test-batch-size", "64",
                       "--data-root", str(root), "--out", str(tmp_path / "again"), "--eval-only", str(ckpt), "--chain", "eager")
    assert again.returncode == 0, again.stderr
    table2 = pd.read_csv(tmp_path / "again" / "heldout7-flow-seed1" / "metrics.csv")
    assert np.allclose(table.auprc, table2.auprc, atol=2e-3)

    # a checkpoint from another configuration: one line, exit 2, no results
    bad = run_script("--heldout", "7", "--preset", "cpu", "--limit-train", "300", "--limit-test", "200",
                     "--data-root", str(root), "--out", str(tmp_path / "bad"), "--eval-only", str(ckpt))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "heldout7-flow-seed1").exists()


@pytest.mark.parametrize("args, message", [
    (["--heldout", "10"], "heldout"),
    (["--heldout", "7", "--data-root", "/nonexistent/place"], "/nonexistent/place"),
    (["--heldout", "7", "--test-batch-size", "1", "--batchnorm", "train"], "--test-batch-size"),
])
def test_bad_input_is_one_line_exit_2_without_results(tmp_path, args, message):
    if "--data-root" not in args:
        args = args + ["--data-root", str(require_mnist())]
    proc = run_script(*args, "--preset", "tiny", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("heldout*"))


def test_batch_order_cannot_leak_labels_through_batchnorm(monkeypatch):
    """With BatchNorm on batch statistics, a class-sorted test set must still be scored in mixed batches."""
    import pyro_lfbm.metrics.anomaly as anomaly

    seen = []
    real = anomaly.infer_dataset
    monkeypatch.setattr(anomaly, "infer_dataset", lambda model, x, **kw: seen.append(x) or real(model, x, **kw))
    model = get_preset("tiny", "gaussian").model.build()
    x = torch.cat([torch.rand(40, 1, 28, 28), -torch.ones(40, 1, 28, 28)])  # sorted: 40 "normal", 40 "anomalous"
    anomaly_scores(model, x, num_steps=2, batch_size=40, batchnorm="train", progress=False)
    first_batch = seen[0][:40]
    blank = (first_batch == -1).flatten(1).all(1)
    assert 5 < int(blank.sum()) < 35  # both kinds in the first batch


def test_batches_never_leave_a_single_image_for_batchnorm():
    from pyro_lfbm.infer.dataset import batch_slices

    assert [(b.start, b.stop) for b in batch_slices(81, 40)] == [(0, 40), (40, 81)]  # 1 left over: folded in
    assert [(b.start, b.stop) for b in batch_slices(82, 40)] == [(0, 40), (40, 80), (80, 82)]
    assert [(b.start, b.stop) for b in batch_slices(1, 40)] == [(0, 1)]
    with pytest.raises(ValueError, match="at least 1"):
        batch_slices(10, 0)
    model = get_preset("tiny", "gaussian").model.build()
    scores, _ = anomaly_scores(model, torch.rand(41, 1, 28, 28), num_steps=2, batch_size=20, batchnorm="train", progress=False)
    assert scores["joint"].shape == (41,) and torch.isfinite(scores["joint"]).all()


def test_table_runner_writes_rows_report_and_run_folders_and_skips_done_runs(tmp_path):
    root = require_mnist()
    cmd = [sys.executable, str(REPO / "experiments" / "anomaly_table.py"), "--digits", "7", "--priors", "flow", "gaussian",
           "--seeds", "1", "--preset", "tiny", "--limit-train", "200", "--limit-test", "100", "--batchnorm", "eval",
           "--data-root", str(root), "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "table.csv")
    required = {"heldout", "prior", "score", "seed", "auprc", "ap", "auroc", "train_seconds", "test_seconds"}
    assert required <= set(table.columns)
    assert len(table) == 2 * 3 and set(table.prior) == {"flow", "gaussian"}
    readme = (tmp_path / "README.md").read_text()
    assert "0.682" in readme and "over training seeds" in readme  # the paper's LFBM row and what ± means
    for prior in ("flow", "gaussian"):
        assert (tmp_path / "runs" / f"heldout7-{prior}-seed1" / "precision_recall.png").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skip") == 2
    assert len(pd.read_csv(tmp_path / "table.csv")) == 6


def test_target_table_compares_with_paper_and_other_priors():
    from pyro_lfbm.harness.anomaly_report import readable_targets, target_table

    rows = []
    for seed, (flow, gauss) in enumerate([(0.70, 0.5), (0.72, 0.6), (0.69, 0.55)], start=1):
        rows += [{"heldout": 7, "prior": "flow", "score": "joint", "batchnorm": "train", "seed": seed, "auprc": flow},
                 {"heldout": 7, "prior": "gaussian", "score": "joint", "batchnorm": "train", "seed": seed, "auprc": gauss},
                 {"heldout": 7, "prior": "flow", "score": "joint", "batchnorm": "eval", "seed": seed, "auprc": 0.1}]
    rows += [{"heldout": 1, "prior": "flow", "score": "joint", "batchnorm": "train", "seed": 1, "auprc": 0.9},
             {"heldout": 4, "prior": "flow", "score": "joint", "batchnorm": "train", "seed": 1, "auprc": 0.5},
             {"heldout": 4, "prior": "ebm", "score": "joint", "batchnorm": "train", "seed": 1, "auprc": 0.6}]
    t = target_table(pd.DataFrame(rows)).set_index("heldout")
    assert t.loc[7, "flow"] == pytest.approx((0.70 + 0.72 + 0.69) / 3) and t.loc[7, "paper"] == 0.682 and t.loc[7, "seeds"] == 3
    assert bool(t.loc[7, "met"]) and bool(t.loc[7, "ahead"])  # eval-mode rows (0.1) are not the headline
    assert not t.loc[1, "met"]  # above the paper, but one seed only
    assert pd.isna(t.loc[1, "ahead"])  # no other prior run for digit 1
    assert not bool(t.loc[4, "ahead"]) and t.loc[4, "gap"] == pytest.approx(0.5 - 0.812)
    shown = readable_targets(t.reset_index()).set_index("heldout")
    assert (shown.loc[7, "met"], shown.loc[7, "ahead"]) == ("yes", "yes")
    assert (shown.loc[1, "met"], shown.loc[1, "ahead"], shown.loc[1, "gaussian"]) == ("no", "not run", "not run")
    assert shown.loc[4, "ahead"] == "no"


def test_paired_differences_compare_priors_only_at_shared_seeds():
    from pyro_lfbm.harness.anomaly_report import paired_differences

    def row(prior, seed, auprc, batchnorm="train"):
        return {"heldout": 7, "prior": prior, "score": "joint", "batchnorm": batchnorm, "seed": seed, "auprc": auprc}

    rows = [row("flow", 1, 0.70), row("flow", 2, 0.60), row("flow", 3, 0.90),
            row("gaussian", 1, 0.65), row("gaussian", 2, 0.62),  # no seed 3: the flow's 0.90 must not count
            row("ebm", 1, 0.10, batchnorm="eval")]  # eval mode only: no ebm row in the train-mode comparison
    paired = paired_differences(pd.DataFrame(rows))
    assert list(paired.other) == ["gaussian"]
    (only,) = paired.itertuples()
    assert only.seeds == 2 and only.wins == 1
    assert only.mean == pytest.approx(((0.70 - 0.65) + (0.60 - 0.62)) / 2)
    assert (only.min, only.max) == (pytest.approx(-0.02), pytest.approx(0.05))


def test_the_report_says_so_when_no_seed_has_two_priors(tmp_path):
    from pyro_lfbm.harness.anomaly_report import write_report

    rows = [{"heldout": 7, "prior": "flow", "model": "latent", "score": score, "batchnorm": mode, "seed": 1, "auprc": 0.7,
             "preset": "tiny", "epochs": 1, "test_steps": 0, "n_train": 10, "n_test": 10, "train_seconds": 1.0,
             "test_seconds": 1.0} for score in ("joint", "prior") for mode in ("train", "eval")]
    record = {"command": "test", "finished": "now", "machine": "here", "torch": "t", "pyro": "p"}
    write_report(pd.DataFrame(rows), tmp_path / "README.md", record)
    report = (tmp_path / "README.md").read_text()
    assert report.count("No seed has the flow and another prior both run yet.") == 2
    assert "| heldout   | other" not in report  # no empty table header


def test_side_by_side_runners_keep_each_others_rows(tmp_path):
    from pyro_lfbm.harness.anomaly_report import append_rows, has_run, read_table

    path = tmp_path / "table.csv"
    row = lambda digit: pd.DataFrame([{"heldout": digit, "prior": "flow", "seed": 1, "preset": "cpu", "auprc": 0.5}])  # noqa: E731
    stale = read_table(path)  # what a second runner saw when it started
    append_rows(path, row(7))
    append_rows(path, row(4))  # written by the other runner: the table on disk is re-read, not `stale`
    table = read_table(path)
    assert stale.empty and sorted(table.heldout) == [4, 7]
    assert has_run(table, 4, "flow", 1, "cpu") and not has_run(table, 4, "flow", 2, "cpu")


def test_a_run_claimed_by_another_runner_is_skipped_and_the_claim_dies_with_its_holder(tmp_path):
    from pyro_lfbm.harness.locking import run_claim

    claim = tmp_path / "checkpoints" / "lfbm-flow-heldout7-seed1-tiny.pt.claim"  # the default --checkpoint-dir
    with run_claim(claim) as mine:
        assert mine
        with run_claim(claim) as second:  # a second open file: flock refuses it even in one process
            assert not second
        cmd = [sys.executable, str(REPO / "experiments" / "anomaly_table.py"), "--digits", "7", "--priors", "flow",
               "--seeds", "1", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "another runner is training it" in proc.stdout
        assert not (tmp_path / "table.csv").exists() and not (tmp_path / "runs" / "heldout7-flow-seed1").exists()
    with run_claim(claim) as after:
        assert after
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pyro_lfbm.harness.locking import run_claim\n"
        f"with run_claim({str(claim)!r}) as mine:\n    print(mine, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with run_claim(claim) as while_held:
            assert not while_held
    finally:
        holder.kill()
        holder.wait()
    with run_claim(claim) as after_kill:  # no stale claim left by a killed runner
        assert after_kill


def test_the_anomaly_task_takes_explicit_arguments_and_leaves_global_state_alone(tmp_path):
    import pyro

    from pyro_lfbm.data import AnomalySplit
    from pyro_lfbm.tasks.anomaly import run_anomaly

    g = torch.Generator().manual_seed(0)
    blobs = torch.tanh(2 * torch.nn.functional.interpolate(torch.randn(90, 1, 7, 7, generator=g), size=28, mode="bilinear"))
    is_anomaly = (torch.arange(40) % 4 == 0).long()
    split = AnomalySplit(train_x=blobs[:50], train_digits=torch.zeros(50, dtype=torch.long), test_x=blobs[50:],
                         test_is_anomaly=is_anomaly, test_digits=is_anomaly * 7, heldout=7, seed=1)
    preset = get_preset("tiny", "flow")
    pyro.param("callers", torch.ones(1))
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    result = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", preset_name="tiny")
    assert torch.equal(torch.get_rng_state(), rng) and list(pyro.get_param_store().keys()) == ["callers"]
    assert [(r["batchnorm"], r["score"]) for r in result.rows] == [(m, s) for m in ("eval", "train")
                                                                   for s in ("joint", "recon", "prior")]
    first = result.rows[0]
    assert first["auprc"] == pytest.approx(anomaly_metrics(is_anomaly, result.scores["joint"])["auprc"])
    # the scored checkpoint gives the trained model's scores again, in another process state
    torch.manual_seed(123)
    again = run_anomaly(preset, split, seed=1, trained_checkpoint=tmp_path / "c.pt", batchnorm=("eval",))
    assert torch.equal(again.scores["joint"], result.scores["joint"]) and again.history == result.history
    with pytest.raises(ValueError, match="batchnorm"):
        run_anomaly(preset, split, batchnorm=("running",))


@pytest.mark.parametrize("guide", ["encoder", "hybrid"])
def test_zero_test_steps_score_at_the_encoders_mean(tmp_path, guide):
    from dataclasses import replace

    from pyro_lfbm.infer.encoder_guide import encode_dataset
    from pyro_lfbm.infer.modes import eval_mode
    from pyro_lfbm.tasks.anomaly import load_trained_model, run_anomaly
    from pyro_lfbm.train.recipe import build, isolated

    split = smooth_noise_split()
    preset = scored_at_the_encoders_z(get_preset("tiny", "flow", guide))
    result = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", batchnorm=("eval",))
    with isolated(1):
        recipe = build(preset)
    load_trained_model(recipe.model, tmp_path / "c.pt", guide=recipe.guide)
    with eval_mode(recipe.model, recipe.encoder_guide):
        expected = encode_dataset(recipe.encoder_guide, split.test_x, recipe.model, progress=False)
    torch.testing.assert_close(result.scores["recon"], -expected.log_joint_terms["likelihood"])
    torch.testing.assert_close(result.scores["prior"], -expected.log_joint_terms["prior"])
    with pytest.raises(ValueError, match="no encoder"):
        replace(preset, guide=get_preset("tiny").guide).check()


@pytest.mark.parametrize("model", ["latent", "hierarchical"])
def test_the_iwae_score_is_minus_the_importance_weighted_log_px_under_the_encoder(tmp_path, model):
    from pyro_lfbm.metrics.evaluation import GaussianProposal, iwae_log_px, latent_rate
    from pyro_lfbm.tasks.anomaly import load_trained_model, run_anomaly
    from pyro_lfbm.train.recipe import build, isolated

    split = smooth_noise_split()
    preset = scored_at_the_encoders_z(get_preset("tiny", "flow", "encoder", model))
    result = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", iwae_particles=4)
    assert sorted(result.scores_by_mode["eval"]) == ["iwae", "joint", "prior", "rate", "recon"]
    assert sorted(result.scores_by_mode["train"]) == ["joint", "prior", "recon"]
    assert {(r["batchnorm"], r["score"]) for r in result.rows if r["score"] == "iwae"} == {("eval", "iwae")}
    with isolated(1):
        recipe = build(preset)
    load_trained_model(recipe.model, tmp_path / "c.pt", guide=recipe.guide)
    proposal = GaussianProposal.from_guide(recipe.encoder_guide, split.test_x)
    expected = -iwae_log_px(recipe.model, split.test_x, proposal, num_particles=4, seed=1)
    torch.testing.assert_close(result.scores["iwae"], expected)
    torch.testing.assert_close(result.scores["rate"], latent_rate(recipe.model, proposal, num_particles=4, seed=1))
    # one particle: log p_α(z) + log N(x; g(z), σ²) - log q(z | x) at the draw, written out by hand
    with torch.random.fork_rng():
        torch.manual_seed(1)
        z = proposal.dist(0, 40).sample((1,))[0]
    model_ = recipe.model.eval()
    with torch.no_grad():
        sigma = torch.as_tensor(model_.sigma, dtype=torch.float64)
        mean = model_.generator(z).double()
        log_lik = (-(split.test_x.double() - mean) ** 2 / (2 * sigma**2) - sigma.log() - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        by_hand = model_.prior.log_prob(z).double() + log_lik - proposal.dist(0, 40).log_prob(z).double()
    torch.testing.assert_close(iwae_log_px(model_, split.test_x, proposal, num_particles=1, seed=1).double(), by_hand,
                               rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="encoder or hybrid guide"):
        run_anomaly(get_preset("tiny"), split, iwae_particles=2)
    with pytest.raises(ValueError, match="eval BatchNorm"):
        run_anomaly(preset, split, batchnorm=("train",), iwae_particles=2)
    if model == "hierarchical":  # Havtorn's ratio as two bounds needs q(z_{>k} | x) in closed form
        from dataclasses import replace

        chain = preset.with_guide("encoder", encoder="conditional")
        chain = replace(chain, model=replace(chain.model, layer_prior="top-down"))
        with pytest.raises(ValueError, match="encoder's q is a chain"):
            run_anomaly(chain, split, iwae_particles=2, llr_layers=(1,))


def test_chains_are_compiled_only_in_one_process(monkeypatch):
    from pyro_lfbm.harness import anomaly_experiment
    from pyro_lfbm.harness.cli import UsageError

    assert anomaly_experiment.compiled_chain("compiled") and not anomaly_experiment.compiled_chain("eager")
    with pytest.raises(UsageError, match="--chain must be one of compiled, eager"):
        anomaly_experiment.compiled_chain("fast")
    monkeypatch.setattr(anomaly_experiment.distributed, "current", lambda: object())  # inside a torchrun job
    assert not anomaly_experiment.compiled_chain("compiled")


def test_png_code_length_orders_images_by_complexity():
    blank = -torch.ones(1, 1, 28, 28)
    stroke = blank.clone()
    stroke[..., 10:18, 5:23] = 1.0
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lengths = png_code_length(torch.cat([blank, stroke, noise]))
    assert lengths.shape == (3,) and lengths.dtype == torch.float64
    assert lengths[0] < lengths[1] < lengths[2]
    # 784 uniform bytes cannot be compressed below 784 bytes
    assert lengths[2] > 784 * 8 * math.log(2)
    with pytest.raises(ValueError, match="shape"):
        png_code_length(torch.zeros(3, 28, 28))


def test_the_sampler_option_reaches_the_training_guide_and_names_its_runs(tmp_path):
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset, checkpoint_name, run_folder_name, run_variant
    from pyro_lfbm.train import build
    from pyro_lfbm.infer.samplers.underdamped import UnderdampedLangevin
    from tests.conftest import experiment_script

    anomaly = experiment_script("anomaly")

    def config(*args):
        return anomaly.run_config(anomaly.build_parser().parse_args(["--preset", "tiny", "--out", str(tmp_path), *args]))

    cfg = config("--sampler", "underdamped")
    assert run_folder_name(7, "flow", 1, run_variant(cfg)) == "heldout7-flow-underdamped-seed1"
    assert checkpoint_name(cfg) == "lfbm-flow-underdamped-heldout7-seed1-tiny.pt"
    assert checkpoint_name(config()) == "lfbm-flow-heldout7-seed1-tiny.pt"  # ULA runs keep their names
    preset = anomaly_preset(cfg)
    assert preset.guide.sampler == "underdamped"
    assert isinstance(build(preset, compile_chain=True).guide.sampler, UnderdampedLangevin)
    with pytest.raises(SystemExit):
        config("--sampler", "hmc")
    with pytest.raises(Exception, match="option of the langevin guide"):
        config("--sampler", "underdamped", "--guide", "encoder")


def test_the_cpu_hybrid_preset_brings_its_guide_and_scores_at_the_encoders_z(tmp_path):
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset, checkpoint_name, run_recipe, run_variant
    from tests.conftest import experiment_script

    anomaly = experiment_script("anomaly")

    def config(*args):
        return anomaly.run_config(anomaly.build_parser().parse_args(["--out", str(tmp_path), *args]))

    cfg = config("--preset", "cpu-hybrid")
    preset = anomaly_preset(cfg)
    assert (cfg.guide, preset.guide.kind, preset.learn.test_steps) == ("hybrid", "hybrid", 0)
    assert (run_variant(cfg), checkpoint_name(cfg)) == ("hybrid", "lfbm-flow-hybrid-heldout7-seed1-cpu-hybrid.pt")
    assert run_recipe(vars(cfg)) == "cpu-hybrid" and run_recipe(vars(config("--preset", "cpu", "--guide", "hybrid"))) == "cpu hybrid"
    assert anomaly_preset(config("--preset", "cpu-hybrid", "--test-steps", "20")).learn.test_steps == 20
    assert (config().preset, config().guide, anomaly_preset(config()).learn.epochs) == ("cpu-hybrid", "hybrid", 20)
    assert anomaly_preset(config()).model.sigma == 1.0  # chosen on development digits (results/anomaly/flat_sigma/)
    cpu = config("--preset", "cpu")
    assert cpu.guide == "langevin" and anomaly_preset(cpu).learn.test_steps == 100
    with pytest.raises(Exception, match="no encoder.*--preset cpu"):
        config("--guide", "langevin")
    assert anomaly_preset(config("--guide", "langevin", "--test-steps", "100")).guide.kind == "langevin"


def test_a_runs_recipe_names_its_preset_variant_and_every_override(tmp_path):
    from dataclasses import asdict

    from pyro_lfbm.harness.anomaly_experiment import run_recipe
    from tests.conftest import experiment_script

    anomaly = experiment_script("anomaly")

    def recipe(*args):
        cfg = anomaly.run_config(anomaly.build_parser().parse_args(["--out", str(tmp_path), *args]))
        return run_recipe(json.loads(json.dumps(asdict(cfg))))  # as read back from run.json

    assert recipe() == recipe("--seed", "2", "--epochs", "4") == "cpu-hybrid"
    assert recipe("--preset", "cpu", "--test-steps", "20") == "cpu test_steps=20"
    assert recipe("--prior", "ebm") == "cpu-hybrid ebm" and recipe("--prior", "gaussian", "--guide", "encoder") == \
        "cpu-hybrid gaussian encoder"
    assert recipe("--model", "hierarchical", "--guide", "encoder", "--set", "layer_dims=20,2,2") == \
        "cpu-hybrid hierarchical-encoder layer_dims=20,2,2"
    assert recipe("--preset", "paper", "--model", "hierarchical", "--guide", "encoder") == "paper hierarchical-encoder"
    assert recipe("--preset", "cpu", "--lr", "4e-4", "--set", "generator_hidden=512", "--set", "generator_channels=64") == \
        "cpu lr=0.0004 generator_hidden=512 generator_channels=64"
    assert recipe("--preset", "cpu-hierarchical", "--lr-decay", "0.944") == "cpu-hierarchical lr_decay=0.944"


def test_lr_decay_reaches_the_optimiser_schedule(tmp_path):
    from pyro_lfbm.harness.anomaly_experiment import anomaly_preset
    from pyro_lfbm.train.recipe import build
    from tests.conftest import experiment_script

    anomaly = experiment_script("anomaly")
    cfg = anomaly.run_config(anomaly.build_parser().parse_args(
        ["--out", str(tmp_path), "--preset", "tiny", "--lr-decay", "0.5"]))
    preset = anomaly_preset(cfg)
    assert preset.learn.optim.gamma == 0.5
    scheduler = build(preset).trainer.scheduler  # Pyro's ExponentialLR, with the constructor's arguments
    assert scheduler.kwargs["gamma"] == 0.5


def test_sampler_comparison_tiny_run_trains_one_model_per_sampler(tmp_path):
    from tests.conftest import experiment_script

    root = require_mnist()
    script = experiment_script("compare_samplers")
    args = script.build_parser().parse_args([
        "--samplers", "ula", "underdamped", "--preset", "tiny", "--epochs", "1", "--limit-train", "100",
        "--limit-test", "40", "--iwae-images", "4", "--iwae-particles", "3", "--chain", "eager", "--no-progress",
        "--device", "cpu", "--data-root", str(root), "--out", str(tmp_path)])
    table = script.main(args)
    assert list(table.sampler) == ["ula", "underdamped"] and (table.iwae_images == 4).all()
    assert table.auprc.between(0, 1).all() and table.iwae_log_px.map(math.isfinite).all()
    assert table.iwae_log_px.nunique() == 2  # two different trained models
    assert pd.read_csv(tmp_path / "samplers.csv").command.str.startswith("python ").all()
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["lfbm-flow-heldout3-seed1-tiny.pt", "lfbm-flow-underdamped-heldout3-seed1-tiny.pt"]


def test_auprc_against_epochs_plot_separates_presets(tmp_path):
    from pyro_lfbm.harness.plots import plot_auprc_against_epochs

    rows = [dict(heldout=7, epochs=e, batchnorm="train", score=s, auprc=0.5 + 0.01 * e, preset=p)
            for e in (3, 6) for s in ("joint", "prior") for p in ("cpu", "paper")]
    labels = plot_auprc_against_epochs(pd.DataFrame(rows), tmp_path / "a.png")
    assert sorted(labels) == sorted(f"{s}, BN train, {p}" for s in ("joint", "prior") for p in ("cpu", "paper"))
    one = [r for r in rows if r["preset"] == "cpu"]
    assert sorted(plot_auprc_against_epochs(pd.DataFrame(one), tmp_path / "b.png")) == ["joint, BN train", "prior, BN train"]
    assert (tmp_path / "a.png").stat().st_size > 0


def test_run_records_name_the_cpu_model_as_lscpu_does():
    from pyro_lfbm.harness.cli import cpu_model, run_record

    lscpu = shutil.which("lscpu")
    if lscpu is None:
        pytest.skip("no lscpu here")
    lines = subprocess.run([lscpu], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), None)
    if name is None:
        pytest.skip("lscpu names no model")
    assert cpu_model().startswith(name) and run_record()["cpu"] == cpu_model()


def test_recalibrated_batchnorm_holds_plain_averages_over_the_batches_and_restores_training_state():
    from pyro_lfbm.infer.modes import recalibrated_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, momentum=0.3))
    net.train()
    for _ in range(3):  # running statistics of "training"
        net(torch.randn(8, 3) * 5 + 2)
    before = {k: v.clone() for k, v in net[1].state_dict().items()}
    data = torch.randn(60, 3)
    with torch.no_grad():
        hidden = net[0](data)
    batch_means = torch.stack([h.mean(0) for h in hidden.split(20)])
    batch_vars = torch.stack([h.var(0, unbiased=True) for h in hidden.split(20)])
    seen = []
    with recalibrated_batchnorm(net, batches=data.split(20), forward=lambda b: seen.append(net.training) or net(b)):
        assert seen == [True] * 3 and not net.training and not net[1].training
        torch.testing.assert_close(net[1].running_mean, batch_means.mean(0))
        torch.testing.assert_close(net[1].running_var, batch_vars.mean(0))
        torch.testing.assert_close(net(data[:1]), (hidden[:1] - batch_means.mean(0)) / (batch_vars.mean(0) + 1e-5).sqrt()
                                   * net[1].weight + net[1].bias)
    assert net.training and net[1].momentum == 0.3
    for k, v in net[1].state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="at least one batch"):
        with recalibrated_batchnorm(net, batches=[], forward=net):
            pass


@pytest.mark.parametrize("guide", ["langevin", "hybrid"])
def test_recalibrated_scores_take_no_statistics_from_the_other_test_images(tmp_path, guide):
    from dataclasses import replace

    from pyro_lfbm.tasks.anomaly import run_anomaly

    split = smooth_noise_split()
    preset = get_preset("tiny", "flow", guide)
    if guide == "hybrid":
        preset = scored_at_the_encoders_z(preset)
    trained = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", batchnorm=("eval",),
                          recalibration_images=30)
    state = {k: v.clone() for k, v in trained.model.state_dict().items()}
    full = run_anomaly(preset, split, seed=1, trained_checkpoint=tmp_path / "c.pt", batchnorm=("recalibrated", "eval"),
                       recalibration_images=30)
    assert [r["batchnorm"] for r in full.rows][::3] == ["recalibrated", "eval"]
    torch.testing.assert_close(full.scores_by_mode["eval"]["joint"], trained.scores["joint"])  # training's statistics back
    assert not torch.allclose(full.scores_by_mode["recalibrated"]["joint"], trained.scores["joint"])
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    if guide == "hybrid":  # scored at the encoder's z (no chain): an image's score is the same whatever is beside it
        fewer = replace(split, test_x=split.test_x[::2], test_is_anomaly=split.test_is_anomaly[::2],
                        test_digits=split.test_digits[::2])
        half = run_anomaly(preset, fewer, seed=1, trained_checkpoint=tmp_path / "c.pt", batchnorm=("recalibrated",),
                           recalibration_images=30)
        torch.testing.assert_close(half.scores["joint"], full.scores_by_mode["recalibrated"]["joint"][::2])
    with pytest.raises(ValueError, match="recalibration_images"):
        run_anomaly(preset, split, trained_checkpoint=tmp_path / "c.pt", batchnorm=("recalibrated",), recalibration_images=1)


def test_recalibrated_statistics_are_those_of_the_networks_where_images_are_scored(tmp_path):
    """By hand: reset every BatchNorm, average its batch statistics over the training batches with the
    encoder at each image and the generator at the encoder's z (nothing else), then score in eval mode."""
    from pyro_lfbm.infer.modes import eval_mode, train_mode
    from pyro_lfbm.tasks.anomaly import load_trained_model, run_anomaly
    from pyro_lfbm.train.recipe import build, isolated

    split = smooth_noise_split()
    preset = scored_at_the_encoders_z(get_preset("tiny", "flow", "hybrid"))
    result = run_anomaly(preset, split, seed=1, checkpoint_path=tmp_path / "c.pt", batchnorm=("recalibrated",),
                         recalibration_images=1000)
    with isolated(1):
        recipe = build(preset)
    load_trained_model(recipe.model, tmp_path / "c.pt", guide=recipe.guide)
    model, encoder = recipe.model, recipe.encoder_guide
    norms = [m for net in (model, encoder) for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), train_mode(model, encoder):
        for batch in split.train_x[order].split(preset.learn.test_batch_size):
            model.log_joint_terms(batch, encoder.init_fn(batch)["z"])
    with torch.no_grad(), eval_mode(model, encoder):
        expected = model.log_joint_terms(split.test_x, encoder.init_fn(split.test_x)["z"])
    torch.testing.assert_close(result.scores["recon"], -expected["likelihood"])
    torch.testing.assert_close(result.scores["prior"], -expected["prior"])


def test_hierarchical_targets_use_the_dev_chosen_score_and_need_three_seeds():
    from pyro_lfbm.harness.anomaly_report import HIERARCHICAL_SCORE, hierarchical_target_table
    from pyro_lfbm.metrics.anomaly import DECISION_FUNCTIONS
    from pyro_lfbm.train.presets import DECISION_FUNCTIONS as PRESET_DECISION_FUNCTIONS, get_preset

    assert HIERARCHICAL_SCORE == (get_preset("cpu-hierarchical").score, "eval")  # the preset's decision function
    assert PRESET_DECISION_FUNCTIONS == DECISION_FUNCTIONS  # the presets' copy names the scores the metrics compute

    def row(seed, auprc, score="prior", batchnorm="eval", model="hierarchical", heldout=4):
        return {"heldout": heldout, "prior": "flow", "model": model, "score": score, "batchnorm": batchnorm,
                "seed": seed, "auprc": auprc}

    rows = [row(1, 0.93), row(2, 0.92), row(3, 0.94), row(1, 0.1, score="joint"), row(1, 0.2, batchnorm="train"),
            row(1, 0.99, model="latent"), row(1, 0.95, heldout=9)]
    t = hierarchical_target_table(pd.DataFrame(rows), "prior").set_index("heldout")
    assert t.loc[4, "mean"] == pytest.approx(0.93) and t.loc[4, "seeds"] == 3 and t.loc[4, "met"] == "yes"
    assert t.loc[4, "gap to HVAE"] == pytest.approx(0.93 - 0.920)
    assert t.loc[4, "gap to joint EBM prior"] == pytest.approx(0.93 - 0.949)
    assert t.loc[9, "met"] == "no"  # above HVAE's 0.791, but one seed only
    assert hierarchical_target_table(pd.DataFrame([row(1, 0.5, model="latent")]), "prior").empty
    assert hierarchical_target_table(pd.DataFrame(rows), "joint").set_index("heldout").loc[4, "mean"] == pytest.approx(0.1)


def require_fashion_mnist():
    root = require_mnist()
    if not (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST files not found under {root}")
    return root


def test_fashion_mnist_is_a_development_task_with_its_own_split_names_and_record(tmp_path):
    from pyro_lfbm.harness.anomaly_experiment import run_split

    root = require_fashion_mnist()
    split = run_split(root, 6, 1, dataset="fashion-mnist")
    # 7,000 images per class: 63,000 normal, 80 % of them for training, every shirt (class 6) in the test set
    assert (split.train_x.shape[0], split.test_x.shape[0], int(split.test_is_anomaly.sum())) == (50_400, 19_600, 7_000)
    assert split.summary()["dataset"] == "fashion-mnist"
    mnist = run_split(root, 6, 1)
    assert split.train_x.shape[1:] == mnist.train_x.shape[1:] and not torch.equal(split.test_x[:100], mnist.test_x[:100])
    out = tmp_path / "out"
    proc = run_script("--dataset", "fashion-mnist", "--heldout", "6", "--preset", "tiny", "--limit-train", "300",
                      "--limit-test", "200", "--test-batch-size", "64", "--batchnorm", "eval", "--data-root", str(root),
                      "--out", str(out), "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr
    run_dir = out / "heldout6-flow-fashion-mnist-seed1"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["run"]["dataset"] == "fashion-mnist"
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["lfbm-flow-fashion-mnist-heldout6-seed1-tiny.pt"]
