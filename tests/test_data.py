"""Tests for pyro_lfbm.data: data root, loaders, and the held-out-digit split (Zenati / MEG protocol)."""

from __future__ import annotations

import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from pyro_lfbm.data import (
    AnomalySplit,
    DataError,
    heldout_digit_split,
    image_shape,
    load_images,
    resolve_data_root,
    stratified_subset,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_ROOT = pathlib.Path(os.environ.get("PYRO_LFBM_DATA") or REPO.parent / "shared" / "data")
MNIST_FILES = [
    REAL_ROOT / "MNIST" / "raw" / f
    for f in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
]
_absent = [str(p) for p in MNIST_FILES if not p.is_file()]
needs_mnist = pytest.mark.skipif(
    bool(_absent), reason=f"real MNIST files absent (set PYRO_LFBM_DATA): missing {', '.join(_absent)}"
)

# Per-digit totals over all 70,000 MNIST images (train and test).
MNIST_DIGIT_TOTALS = [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]


# --------------------------------------------------------------------------- data root


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_LFBM_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("PYRO_LFBM_DATA")
    assert resolve_data_root() == pathlib.Path("data")


def test_default_data_root_falls_back_to_shared_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("PYRO_LFBM_DATA", raising=False)
    (tmp_path / "project").mkdir()
    (tmp_path / "shared" / "data" / "MNIST").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    has_mnist = lambda base: (base / "MNIST").is_dir()  # noqa: E731
    assert resolve_data_root(has_data=has_mnist) == pathlib.Path("../shared/data")
    (tmp_path / "project" / "data" / "MNIST").mkdir(parents=True)
    assert resolve_data_root(has_data=has_mnist) == pathlib.Path("data")  # ./data first when it has the data
    assert resolve_data_root(has_data=lambda base: False) == pathlib.Path("data")  # downloads go to ./data


# --------------------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist_pool():
    ds = load_images("mnist", REAL_ROOT, split="all", download=False)
    return ds.tensors


@pytest.fixture(scope="module")
def split7() -> AnomalySplit:
    return heldout_digit_split(REAL_ROOT, heldout=7, seed=1, download=False)


@needs_mnist
def test_mnist_pool_has_all_70000(mnist_pool):
    x, y = mnist_pool
    assert x.shape == (70_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (70_000,)
    counts = torch.bincount(y, minlength=10)
    assert counts.tolist() == MNIST_DIGIT_TOTALS
    assert int(counts.sum()) == 70_000
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


@needs_mnist
def test_heldout_split_sizes_digit_7(split7):
    s = split7.summary()
    assert (s["n_train"], s["n_test_normal"], s["n_test_anomalous"]) == (50_165, 12_542, 7_293)
    assert s["heldout"] == 7 and s["seed"] == 1
    assert split7.train_x.shape == (50_165, 1, 28, 28)
    assert split7.test_x.shape == (19_835, 1, 28, 28)
    assert split7.test_is_anomaly.shape == split7.test_digits.shape == (19_835,)


@needs_mnist
def test_heldout_split_contents(split7):
    assert not (split7.train_digits == 7).any()
    assert torch.equal(split7.test_is_anomaly.bool(), split7.test_digits == 7)
    # every other digit appears in train; all 70k images are used exactly once
    assert torch.bincount(split7.train_digits, minlength=10)[[0, 1, 2, 3, 4, 5, 6, 8, 9]].min() > 0
    total = torch.bincount(split7.train_digits, minlength=10)
    total += torch.bincount(split7.test_digits, minlength=10)
    assert total.tolist() == MNIST_DIGIT_TOTALS
    for x in (split7.train_x, split7.test_x):
        assert x.dtype == torch.float32
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0


@needs_mnist
def test_heldout_split_deterministic_per_seed(split7):
    again = heldout_digit_split(REAL_ROOT, heldout=7, seed=1, download=False)
    assert torch.equal(again.train_x, split7.train_x)
    assert torch.equal(again.test_x, split7.test_x)
    other = heldout_digit_split(REAL_ROOT, heldout=7, seed=2, download=False)
    assert other.seed == 2
    assert other.summary()["n_train"] == 50_165
    assert not torch.equal(other.train_x, split7.train_x)
    assert not torch.equal(other.train_digits, split7.train_digits)


@needs_mnist
def test_heldout_split_other_digit_and_limits():
    s = heldout_digit_split(REAL_ROOT, heldout=1, seed=1, download=False, limit_train=300, limit_test=200)
    summ = s.summary()
    assert (summ["n_train"], summ["n_test"]) == (300, 200)
    # test anomaly fraction kept: 7,877 / (12,425 + 7,877) of 200 = 77.6 -> 78
    assert summ["n_test_anomalous"] == 78
    assert not (s.train_digits == 1).any()
    again = heldout_digit_split(REAL_ROOT, heldout=1, seed=1, download=False, limit_train=300, limit_test=200)
    assert torch.equal(s.test_x, again.test_x) and torch.equal(s.train_x, again.train_x)


def test_heldout_out_of_range_raises():
    for bad in (10, -1, 7.0, True):
        with pytest.raises(ValueError, match="heldout"):
            heldout_digit_split("/nonexistent", heldout=bad, download=False)


def test_bad_train_fraction_raises():
    with pytest.raises(ValueError, match="train_fraction"):
        heldout_digit_split("/nonexistent", heldout=7, train_fraction=1.0, download=False)


# --------------------------------------------------------------------------- errors


def test_missing_root_raises_data_error_with_path(tmp_path):
    root = tmp_path / "no-data-here"
    with pytest.raises(DataError) as info:
        load_images("mnist", root, download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "--data-root" in msg and "PYRO_LFBM_DATA" in msg
    with pytest.raises(DataError, match="no-data-here"):
        heldout_digit_split(root, download=False)


def test_failed_download_raises_data_error(tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision import datasets

    def offline(self):
        raise URLError("Name or service not known")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match="download failed") as info:
        load_images("mnist", tmp_path, download=True)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_files_raise_data_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="could not read mnist"):
        load_images("mnist", tmp_path, download=False)


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown data set"):
        load_images("imagenet")
    with pytest.raises(ValueError, match="no split"):
        load_images("cifar10", split="valid")


# --------------------------------------------------------------------------- FakeData and offline fixtures


@pytest.mark.parametrize("like", ["cifar10", "celeba", "mnist"])
def test_fake_data_shapes_and_range(like):
    shape = image_shape(like)
    ds = load_images("fake", fake_shape=shape, fake_size=24)
    x, y = ds.tensors
    assert x.shape == (24, *shape) and x.dtype == torch.float32
    assert y.shape == (24,) and y.dtype == torch.long
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.std()) > 0.1
    again = load_images("fake", fake_shape=shape, fake_size=24)
    assert torch.equal(again.tensors[0], x)
    test = load_images("fake", split="test", fake_shape=shape, fake_size=24)
    assert not torch.equal(test.tensors[0], x)


def test_image_shapes():
    assert image_shape("mnist") == (1, 28, 28)
    assert image_shape("Fashion_MNIST") == (1, 28, 28)
    assert image_shape("svhn") == image_shape("cifar10") == (3, 32, 32)
    assert image_shape("celeba") == (3, 64, 64)


def test_cifar10_layout_from_local_files(tmp_path, monkeypatch):
    """Tiny CIFAR-10 batches in the official pickle format: channel order and labels survive."""
    from torchvision.datasets import CIFAR10, cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    red = np.concatenate([np.full(1024, 255), np.zeros(2048)]).astype(np.uint8)  # R plane, then G, B
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": np.stack([red, red]), "labels": [3, 5]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, fh)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # md5 of the real files
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)

    x, y = load_images("cifar10", tmp_path, download=False).tensors
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [3, 5] * 5
    assert (x[:, 0] == 1).all() and (x[:, 1:] == -1).all()
    x_test, _ = load_images("cifar10", tmp_path, split="test", download=False, limit=1).tensors
    assert x_test.shape == (1, 3, 32, 32)


def test_svhn_layout_from_local_files(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    from torchvision.datasets import SVHN

    (tmp_path / "SVHN").mkdir()
    X = np.zeros((32, 32, 3, 4), dtype=np.uint8)
    X[:, :, 2, :] = 255  # blue
    scipy_io.savemat(tmp_path / "SVHN" / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [10]])})
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    x, y = load_images("svhn", tmp_path, split="test", download=False).tensors
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 0]
    assert (x[:, 2] == 1).all() and (x[:, :2] == -1).all()


def test_celeba_crop_from_local_files(tmp_path, monkeypatch):
    """CelebA 178x218 images: the (top 45, left 25, 128x128) box is white, the rest black."""
    from PIL import Image
    from torchvision.datasets import CelebA

    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    img = np.zeros((218, 178, 3), dtype=np.uint8)
    img[45 : 45 + 128, 25 : 25 + 128] = 255
    for n in names:  # PNG content under CelebA's .jpg names: lossless, PIL reads by content
        Image.fromarray(img).save(base / "img_align_celeba" / n, format="PNG")
    parts = [0, 0, 1, 1, 2, 2]  # torchvision fails on a one-image split
    (base / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)))
    (base / "identity_CelebA.txt").write_text("".join(f"{n} {i + 10}\n" for i, n in enumerate(names)))
    for fname, header in (
        ("list_bbox_celeba.txt", "image_id x_1"),
        ("list_landmarks_align_celeba.txt", "lefteye_x"),
        ("list_attr_celeba.txt", "Smiling"),
    ):  # count line, header line, rows (torchvision's _load_csv with header=1)
        (base / fname).write_text(f"{len(names)}\n{header}\n" + "".join(f"{n} 1\n" for n in names))
    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)  # md5 of the real files

    x, y = load_images("celeba", tmp_path, split="train", download=False).tensors
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [10, 11]
    assert (x == 1).all(), "crop box includes pixels outside (top 45, left 25, 128x128)"
    x_valid, _ = load_images("celeba", tmp_path, split="valid", download=False).tensors
    assert x_valid.shape == (2, 3, 64, 64)


# --------------------------------------------------------------------------- subsets


def test_stratified_subset_keeps_shares_and_is_deterministic():
    labels = torch.tensor([0] * 630 + [1] * 370)
    idx = stratified_subset(labels, 100, seed=3)
    assert idx.shape == (100,) and torch.equal(idx, idx.sort().values)
    assert int(labels[idx].sum()) == 37
    assert idx.unique().numel() == 100
    assert torch.equal(idx, stratified_subset(labels, 100, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 100, seed=4))
    assert stratified_subset(labels, 5000).tolist() == list(range(1000))
    with pytest.raises(ValueError):
        stratified_subset(labels, -1)
