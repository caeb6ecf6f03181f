import json

import pandas as pd
import pytest
import torch

from pyro_lfbm.harness.cli import run_cli
from pyro_lfbm.train.recipe import with_epochs
from pyro_lfbm.tasks.inpainting import complete, hole_mask, inpaint, inpainting_errors, paper_hole
from pyro_lfbm.data.masks import MaskSetting
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.tasks.recovery import recovery_errors, region_mse, run_recovery
from pyro_lfbm.harness.recovery_report import decode_images, encode_images, rank_counts, summary_table, target_check
from tests.conftest import experiment_script


def tiny_data(n, seed=0):
    """Smooth blobs (n, 1, 28, 28) in [-1, 1]."""
    base = torch.randn(n, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    return torch.tanh(torch.nn.functional.interpolate(base, size=28, mode="bilinear"))


def test_region_mse_and_recovery_errors_in_unit_range():
    x = -torch.ones(2, 1, 4, 4)
    x_hat = x.clone()
    x_hat[:, :, :2] = 1.0  # top half wrong by 1 in [0, 1] units
    mask = torch.ones_like(x)
    mask[:, :, :2] = 0
    errors = recovery_errors(x_hat, x, mask)
    assert errors == {"mse_hole": 1.0, "mse_all": 0.5, "mse_observed": 0.0}
    assert region_mse(x_hat, x, unit=False) == 2.0  # [-1, 1] units
    with pytest.raises(ValueError):
        region_mse(x_hat, x, torch.zeros_like(x))


def test_recovery_run_uses_only_observed_pixels(tmp_path):
    preset = with_epochs(get_preset("tiny", "flow"), 1)
    x = tiny_data(100)
    setting = MaskSetting("salt-pepper", 50)
    a = run_recovery(preset, x, setting, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert a.recovered.shape == x.shape and a.mask.shape == x.shape
    assert 0.4 < a.metrics["coverage"] < 0.6 and all(a.metrics[k] >= 0 for k in ("mse_hole", "mse_all"))
    # the hole pixels never reach training or inference: changing them changes nothing
    x2 = torch.where(a.mask.bool(), x, torch.rand_like(x))
    b = run_recovery(preset, x2, setting, seed=1, progress=False)
    assert torch.allclose(a.recovered, b.recovered, atol=1e-5)
    # a finished run is loaded from its checkpoint, not retrained
    c = run_recovery(preset, x, setting, seed=1, checkpoint_dir=tmp_path, progress=False)
    assert torch.allclose(a.recovered, c.recovered, atol=1e-6) and len(c.history) == 1


def test_inpainting_keeps_observed_pixels_and_gives_distinct_completions():
    model = get_preset("tiny", "flow").model.build()
    x = tiny_data(6)
    top, left, side = paper_hole((1, 28, 28))
    assert (top, left, side) == (9, 5, 18) and paper_hole((3, 64, 64)) == (20, 12, 40)
    mask = hole_mask((1, 28, 28), top, left, side)
    out = inpaint(model, x, mask, num_completions=3, num_steps=5, step_size=0.1, progress=False)
    assert out.shape == (6, 3, 1, 28, 28)
    observed = mask.bool().expand(6, 1, 28, 28)
    for k in range(3):
        assert torch.equal(out[:, k][observed], x[observed])
    assert not torch.allclose(out[:, 0], out[:, 1])  # different chain starts
    errors = inpainting_errors(out, x, mask)
    assert errors["mse_hole_best"] <= errors["mse_hole"]
    assert inpainting_errors(x.unsqueeze(1), x, mask)["mse_hole"] == 0.0
    assert torch.equal(complete(x, mask, torch.zeros_like(x))[observed], x[observed])
    with pytest.raises(ValueError):
        hole_mask((1, 28, 28), 20, 20, 18)


def test_report_tables_and_preview_round_trip():
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.allclose(decode_images(encode_images(images)), images, atol=1 / 127)
    records = [{"dataset": "mnist", "setting": "salt-pepper-50", "prior": p, "seed": s, "mse_hole": v + s / 100}
               for p, v in (("flow", 0.1), ("ebm", 0.2), ("gaussian", 0.3)) for s in (1, 2)]
    table = summary_table(records)
    assert list(table.index) == ["flow (LFBM)", "energy (LEBM)", "Gaussian (ABP)"]
    check = target_check(records).iloc[0]
    assert check["flow_best"] and check["flow_best_every_seed"] and check["gap"] == pytest.approx(-0.1)
    # seed 3: the Gaussian prior wins and flow is last; a run without its two rivals is not a comparison
    records += [{"dataset": "mnist", "setting": "salt-pepper-50", "prior": p, "seed": 3, "mse_hole": v}
                for p, v in (("flow", 0.5), ("ebm", 0.4), ("gaussian", 0.1))]
    records += [{"dataset": "mnist", "setting": "single-20", "prior": "flow", "seed": 1, "mse_hole": 0.0}]
    ranks = rank_counts(records)
    assert ranks.loc["flow (LFBM)"].tolist() == [2, 0, 1, 3]
    assert ranks.loc["Gaussian (ABP)"].tolist() == [1, 0, 2, 3]


def _run(name, *argv):
    """Run an experiment script in this process, as its __main__ does; returns the exit code (0 = done)."""
    module = experiment_script(name)
    try:
        run_cli(module.main, module.build_parser().parse_args(list(argv)))
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_scripts_run_on_fake_data_and_reject_bad_input(tmp_path, capsys):
    common = ["--preset", "tiny", "--epochs", "1", "--n-train", "100", "--no-progress", "--threads", "1",
              "--cache-dir", str(tmp_path / "cache"), "--dataset", "fake", "--fake-shape", "1,28,28"]
    assert _run("recovery", "--mask", "single", "--level", "40", "--out", str(tmp_path / "rec"), *common) == 0
    assert (tmp_path / "rec" / "table.csv").exists() and (tmp_path / "rec" / "figures" / "fake-single-40.png").exists()
    assert "fake" in (tmp_path / "rec" / "README.md").read_text()
    record = json.loads((tmp_path / "rec" / "runs" / "fake-single-40-flow-s1.json").read_text())
    assert record["coverage"] == pytest.approx(18 * 18 / 784)
    assert _run("inpainting", "--priors", "flow", "--n-test", "4", "--completions", "2", "--show", "2",
                "--out", str(tmp_path / "inp"), *common) == 0
    assert (tmp_path / "inp" / "fake" / "panel.png").exists()
    assert _run("synthesis", "--priors", "flow", "gaussian", "--seeds", "1", "2", "--n-test", "20", "--num-samples", "50",
                "--out", str(tmp_path / "syn"), *common) == 0
    table = pd.read_csv(tmp_path / "syn" / "fake" / "table.csv")
    assert len(table) == 4 and set(table.seed) == {1, 2} and table.classifier_fd.gt(0).all()
    readme = (tmp_path / "syn" / "fake" / "README.md").read_text()
    assert "(2)" in readme and "Target" in readme and (tmp_path / "syn" / "fake" / "samples-gaussian.png").exists()
    capsys.readouterr()
    assert _run("recovery", "--mask", "single", "--level", "70", "--out", str(tmp_path / "bad"), *common) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert _run("inpainting", "--hole", "1,2", "--out", str(tmp_path / "bad"), *common) == 2
    assert not (tmp_path / "bad").exists()
