"""What runs leave behind (issue 14, item 4): claim and lock files, folders of failed runs and of
failed downloads, checkpoints that cannot be continued."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pyro_lfbm.harness.anomaly_report import append_rows
from pyro_lfbm.harness.locking import run_claim
from pyro_lfbm.train.checkpoint import CheckpointError
from pyro_lfbm.data import DataError, load_images


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_claims_and_table_locks_are_removed_when_released(tmp_path):
    claim = tmp_path / "ckpt" / "run.pt.claim"
    with run_claim(claim) as mine:
        assert mine and claim.exists()
        with run_claim(claim) as other:
            assert not other
    assert not claim.exists()
    with run_claim(claim) as again:  # a new file, claimed afresh
        assert again
    assert not claim.exists()
    append_rows(tmp_path / "table.csv", pd.DataFrame([{"heldout": 7, "prior": "flow", "seed": 1, "preset": "cpu"}]))
    assert tree(tmp_path) == ["ckpt", "table.csv"]  # no table.csv.lock, no table.csv.tmp


def _failing_download(self, *args, **kwargs):
    """torchvision's MNIST download without a network: it makes its folders, then fails."""
    import os

    os.makedirs(self.raw_folder, exist_ok=True)
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz (no network)")


def test_a_missing_data_root_creates_nothing(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _failing_download)
    absent = tmp_path / "absent"
    with pytest.raises(DataError, match="does not exist"):
        load_images("mnist", absent, "train")
    monkeypatch.setenv("PYRO_LFBM_DATA", str(absent))
    with pytest.raises(DataError, match="does not exist"):
        load_images("mnist", None, "train")
    assert tree(tmp_path) == []
    # an existing root: the download is tried, and its empty MNIST/raw/ removed when it fails
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="download failed"):
        load_images("mnist", tmp_path / "root", "train")
    assert tree(tmp_path) == ["root"]
    # the default root ./data, made for the download, goes too
    monkeypatch.delenv("PYRO_LFBM_DATA")
    monkeypatch.chdir(tmp_path / "root")
    monkeypatch.setattr("pyro_lfbm.data.root.DEFAULT_DATA_ROOTS", ("./data",))
    with pytest.raises(DataError, match="download failed"):
        load_images("mnist", None, "train")
    assert tree(tmp_path) == ["root"]


def test_a_failed_recovery_run_leaves_no_claim_and_no_empty_folders(tmp_path, monkeypatch, capsys):
    import pyro_lfbm.harness.recovery_experiment as recovery_experiment
    from tests.test_recovery import _run

    def boom(*args, **kwargs):
        raise DataError("the disk holding the images went away")

    monkeypatch.setattr(recovery_experiment, "recovery_record", boom)
    monkeypatch.setenv("PYRO_LFBM_CACHE", str(tmp_path / "cache"))
    code = _run("recovery", "--out", str(tmp_path / "out"), "--preset", "tiny", "--dataset", "fake", "--fake-shape",
                "1,28,28", "--n-train", "100", "--no-progress")
    assert code == 2 and "went away" in capsys.readouterr().err
    assert tree(tmp_path) == []


def test_resuming_a_checkpoint_with_more_epochs_than_asked_is_refused(tmp_path):
    from tests.test_training_guards import run

    run(tmp_path, epochs=2)
    with pytest.raises(CheckpointError, match="finished 2 epochs, more than the 1"):
        run(tmp_path, epochs=1, resume=True)
    model, history = run(tmp_path, epochs=2, resume=True)  # a finished run is loaded, not trained again
    assert [row["epoch"] for row in history.epochs] == [1, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_one_formatter_and_one_prior_label_map_for_every_report():
    import statistics

    from pyro_lfbm.harness.formatting import mean_std, prior_label

    values = [0.25, 0.5, 1.0]
    assert mean_std(values) == f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} (3)"
    assert mean_std([0.5, float("nan")]) == "0.500 (1)" and mean_std([]) == "–"
    assert mean_std([12345.6, 12345.7], ".4g", ".2g") == "12350 ± 0.071 (2)"  # no exponent notation
    assert [prior_label(p) for p in ("flow", "ebm", "gaussian")] == ["flow (LFBM)", "energy (LEBM)", "Gaussian (ABP)"]
    assert prior_label("ebm", model=False) == "energy" and prior_label("other") == "other"


def test_a_blocking_lock_waits_for_its_holder_and_is_removed(tmp_path):
    import subprocess
    import sys
    import time

    from pyro_lfbm.harness.locking import locked

    lock = tmp_path / "table.csv.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pyro_lfbm.harness.locking import locked\n"
        f"with locked({str(lock)!r}):\n    print('held', flush=True); time.sleep(1.0)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.perf_counter()
    with locked(lock):
        waited = time.perf_counter() - started
        assert lock.exists()
    holder.wait(timeout=30)
    assert waited > 0.3 and not lock.exists()
