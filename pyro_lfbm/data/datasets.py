"""Image data sets as in-memory tensors, and the held-out-digit anomaly split.

Every loader returns images as ``float32`` tensors of shape ``(N, C, H, W)``
scaled to ``[-1, 1]`` (``x / 127.5 - 1``, the same as ``ToTensor`` followed by
``Normalize(0.5, 0.5)``) and integer labels of shape ``(N,)``. Files are read
through :mod:`torchvision.datasets` in its standard layout under the data root
(see :func:`~pyro_lfbm.data.root.resolve_data_root`)::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    <root>/FashionMNIST/raw/...                   (same names)
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <root>/SVHN/{train,test,extra}_32x32.mat
    <root>/celeba/{img_align_celeba/,list_eval_partition.txt,...}

The anomaly split is the held-out-digit protocol of Zenati et al. (2018;
``github.com/houssamzenati/Efficient-GAN-Anomaly-Detection``, ``data/mnist.py``) and MEG (Kumar et al.
2019; ``github.com/ritheshkumar95/energy_based_generative_models``, ``data/mnist_anomaly.py``), the
``mnist_ad`` data set of the official LFBM code (``github.com/jianwen-xie/Latent-Space-Normalizing-Flow``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .root import DATA_ROOT_ENV, resolve_data_root

PathLike = str | os.PathLike[str]


class DataError(RuntimeError):
    """Missing or unreadable data files; the message is one line meant for the user."""


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a supported data set.

    :param name: canonical name (``"mnist"``, ``"fashion-mnist"``, ...).
    :param shape: image shape ``(C, H, W)`` as returned by :func:`load_images`.
    :param splits: accepted ``split`` values.
    :param num_classes: number of distinct labels (0 if labels are identities).
    """

    name: str
    shape: tuple[int, int, int]
    splits: tuple[str, ...]
    num_classes: int


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("mnist", (1, 28, 28), ("train", "test", "all"), 10),
        DatasetInfo("fashion-mnist", (1, 28, 28), ("train", "test", "all"), 10),
        DatasetInfo("svhn", (3, 32, 32), ("train", "test", "extra"), 10),
        DatasetInfo("cifar10", (3, 32, 32), ("train", "test"), 10),
        DatasetInfo("celeba", (3, 64, 64), ("train", "valid", "test", "all"), 0),
        DatasetInfo("fake", (3, 32, 32), ("train", "test"), 10),
    )
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}

#: CelebA crop box of the official LFBM code's ``celeba_crop``: (top, left, height, width), then resize to 64x64.
CELEBA_CROP = (45, 25, 128, 128)


def dataset_info(name: str) -> DatasetInfo:
    """Look up a data set by name (case-insensitive; ``_`` and ``-`` accepted).

    :raises ValueError: for an unknown name, listing the known ones.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


def image_shape(name: str) -> tuple[int, int, int]:
    """Image shape ``(C, H, W)`` produced by :func:`load_images` for ``name``."""
    return dataset_info(name).shape


# --------------------------------------------------------------------------- files

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CELEBA_FILES = (
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_attr_celeba.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "img_align_celeba",
)


def _split_parts(split: str) -> tuple[str, ...]:
    return ("train", "test") if split == "all" else (split,)


def expected_files(name: str, root: PathLike | None = None, split: str = "train") -> list[pathlib.Path]:
    """Paths that must exist for ``load_images(name, root, split)`` to read local files.

    :returns: a list of files (or, for CelebA's images, one folder); empty for ``"fake"``.
    """
    info = dataset_info(name)
    base = resolve_data_root(root)
    if info.name in ("mnist", "fashion-mnist"):
        raw = base / ("MNIST" if info.name == "mnist" else "FashionMNIST") / "raw"
        return [raw / f for part in _split_parts(split) for f in _MNIST_FILES[part]]
    if info.name == "cifar10":
        folder = base / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [folder / n for n in [*names, "batches.meta"]]
    if info.name == "svhn":
        return [base / "SVHN" / f"{split}_32x32.mat"]
    if info.name == "celeba":
        return [base / "celeba" / f for f in _CELEBA_FILES]
    return []


def _missing_message(name: str, split: str, root: pathlib.Path, missing: list[pathlib.Path], why: str) -> str:
    shown = ", ".join(str(p) for p in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
        f"{name} {split} data not found under {root} (missing {shown}{more}){why}; "
        f"put the files there in torchvision layout, or pass --data-root / set {DATA_ROOT_ENV} "
        f"to the folder that holds them"
    )


def _folders(base: pathlib.Path) -> set[pathlib.Path]:
    """The folders under ``base`` two levels deep (where torchvision's downloaders create theirs)."""
    found: set[pathlib.Path] = set()
    if not base.is_dir():
        return found
    for first in base.iterdir():
        if first.is_dir():
            found.add(first)
            try:
                found.update(second for second in first.iterdir() if second.is_dir())
            except OSError:
                pass
    return found


def _remove_new_empty_folders(base: pathlib.Path, before: set[pathlib.Path]) -> None:
    for folder in sorted(_folders(base) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only empty ones
        except OSError:
            pass


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- readers
# Each reader returns (uint8 images (N, C, H, W), int64 labels (N,)), possibly downloading.


def _read_mnist_like(name: str, root: pathlib.Path, split: str, download: bool, limit: int | None):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    parts = [cls(str(root), train=(p == "train"), download=download) for p in _split_parts(split)]
    x = torch.cat([d.data for d in parts]).unsqueeze(1)
    y = torch.cat([d.targets for d in parts])
    return x[:limit], y[:limit]


def _read_cifar10(root: pathlib.Path, split: str, download: bool, limit: int | None):
    from torchvision import datasets

    ds = datasets.CIFAR10(str(root), train=(split == "train"), download=download)
    x = torch.from_numpy(ds.data[:limit]).permute(0, 3, 1, 2)
    return x, torch.as_tensor(ds.targets[:limit], dtype=torch.long)


def _read_svhn(root: pathlib.Path, split: str, download: bool, limit: int | None):
    from torchvision import datasets

    ds = datasets.SVHN(str(root / "SVHN"), split=split, download=download)
    x = torch.from_numpy(ds.data[:limit].copy())  # (N, 3, 32, 32); labels already map 10 -> 0
    return x, torch.as_tensor(ds.labels[:limit], dtype=torch.long)


def _celeba_transform() -> Callable:
    from torchvision import transforms
    from torchvision.transforms import functional as F

    top, left, height, width = CELEBA_CROP
    return transforms.Compose(
        [
            transforms.Lambda(lambda img: F.crop(img, top, left, height, width)),
            transforms.Resize(64),
            transforms.PILToTensor(),
        ]
    )


def _read_celeba(root: pathlib.Path, split: str, download: bool, limit: int | None):
    from torchvision import datasets

    ds = datasets.CelebA(
        str(root), split=split, target_type="identity", transform=_celeba_transform(), download=download
    )
    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.empty((n, 3, 64, 64), dtype=torch.uint8)
    for i in range(n):  # JPEG decoding has no bulk path; ~1 ms per image
        x[i] = ds[i][0]
    return x, ds.identity[:n, 0].long()


def _read_fake(split: str, size: int, shape: tuple[int, int, int], limit: int | None):
    from torchvision import datasets, transforms

    n = size if limit is None else min(limit, size)
    offset = 0 if split == "train" else 1_000_000  # disjoint per-index seeds for the two splits
    ds = datasets.FakeData(size=n, image_size=shape, num_classes=10, transform=transforms.PILToTensor(),
                           random_offset=offset)
    x = torch.empty((n, *shape), dtype=torch.uint8)
    y = torch.empty((n,), dtype=torch.long)
    for i in range(n):
        x[i], y[i] = ds[i]
    return x, y


def _to_signed_unit(x: Tensor) -> Tensor:
    """uint8 ``(N, C, H, W)`` in [0, 255] -> float32 in [-1, 1]."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def _load_uint8(
    name: str,
    root: PathLike | None,
    split: str,
    download: bool,
    limit: int | None = None,
    fake_size: int = 512,
    fake_shape: tuple[int, int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    info = dataset_info(name)
    if split not in info.splits:
        raise ValueError(f"{info.name} has no split {split!r}; use one of {', '.join(info.splits)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} is negative; pass None for all images or a count >= 0")
    if info.name == "fake":
        return _read_fake(split, fake_size, tuple(fake_shape or info.shape), limit)

    base = resolve_data_root(root, has_data=lambda b: all(p.exists() for p in expected_files(info.name, b, split)))
    missing = [p for p in expected_files(info.name, base, split) if not p.exists()]
    if missing and not download:
        raise DataError(_missing_message(info.name, split, base, missing, " and download=False"))
    explicit = (root is not None and str(root) != "") or bool(os.environ.get(DATA_ROOT_ENV, ""))
    if missing and explicit and not base.is_dir():
        # a named data root that does not exist is a wrong path, not a place to download into: create nothing
        raise DataError(_missing_message(info.name, split, base, missing, f" (the folder {base} does not exist)"))
    base_existed, folders_before = base.is_dir(), _folders(base)
    readers = {
        "mnist": lambda dl: _read_mnist_like("mnist", base, split, dl, limit),
        "fashion-mnist": lambda dl: _read_mnist_like("fashion-mnist", base, split, dl, limit),
        "cifar10": lambda dl: _read_cifar10(base, split, dl, limit),
        "svhn": lambda dl: _read_svhn(base, split, dl, limit),
        "celeba": lambda dl: _read_celeba(base, split, dl, limit),
    }
    try:
        return readers[info.name](bool(missing))
    except Exception as err:  # torchvision raises RuntimeError/OSError/ValueError/... for bad files
        if missing:
            _remove_new_empty_folders(base, folders_before)  # the failed download's empty MNIST/raw/ etc.
            if not base_existed:
                try:
                    base.rmdir()  # the default ./data, made for the download, if it stayed empty
                except OSError:
                    pass
            why = f" and the download failed ({_one_line(err)})"
            raise DataError(_missing_message(info.name, split, base, missing, why)) from err
        if isinstance(err, ImportError):  # e.g. scipy for SVHN: not a data problem
            raise
        raise DataError(
            f"could not read {info.name} {split} data under {base} ({_one_line(err)}); the files may be "
            f"truncated or corrupt: replace them, or pass --data-root / set {DATA_ROOT_ENV} to a good copy"
        ) from err


def load_images(
    name: str,
    root: PathLike | None = None,
    split: str = "train",
    download: bool = True,
    *,
    limit: int | None = None,
    fake_size: int = 512,
    fake_shape: tuple[int, int, int] | None = None,
) -> TensorDataset:
    """Load a whole split into memory.

    Local files are tried first; if some are missing and ``download`` is true,
    torchvision's downloader is tried; if that fails, :class:`DataError` is raised.

    :param name: ``"mnist"``, ``"fashion-mnist"``, ``"svhn"``, ``"cifar10"``,
        ``"celeba"`` or ``"fake"`` (see :data:`DATASETS` for the splits of each).
        CelebA is cropped at (top 45, left 25, 128x128) and resized to 64x64.
        ``"fake"`` is :class:`torchvision.datasets.FakeData`: deterministic
        noise images of shape ``fake_shape`` for exercising code paths of data
        sets that are not available; the ``"train"`` and ``"test"`` splits differ.
    :param root: data root; see :func:`~pyro_lfbm.data.root.resolve_data_root`.
    :param split: e.g. ``"train"``, ``"test"``; ``"all"`` = train + test (MNIST-like)
        or every image (CelebA).
    :param download: allow a download attempt when local files are missing.
    :param limit: keep only the first ``limit`` images, in file order
        (CelebA's full training split is ~8 GB as float32; use this for it).
    :param fake_size: number of images of the ``"fake"`` data set.
    :param fake_shape: ``(C, H, W)`` of the ``"fake"`` images (default ``(3, 32, 32)``);
        use e.g. ``image_shape("celeba")`` to mimic another set. C must be 1 or 3.
    :returns: ``TensorDataset(x, y)`` with ``x`` float32 ``(N, C, H, W)`` in ``[-1, 1]``
        and ``y`` int64 ``(N,)`` (class labels; CelebA: identity ids).
    :raises DataError: missing or unreadable files.
    :raises ValueError: unknown name or split.
    """
    x, y = _load_uint8(name, root, split, download, limit, fake_size, fake_shape)
    return TensorDataset(_to_signed_unit(x), y)


# --------------------------------------------------------------------------- subsets


def stratified_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Choose ``n`` indices at random, keeping each label's share of the whole.

    Shares are rounded by the largest-remainder rule, so counts are exact to
    within one image per label. Deterministic for a given ``seed``.

    :param labels: integer or bool tensor ``(N,)``.
    :param n: number of indices wanted; ``n >= N`` returns every index.
    :returns: int64 indices ``(min(n, N),)``, sorted ascending (original order kept).
    """
    labels = torch.as_tensor(labels).reshape(-1)
    total = labels.numel()
    if n < 0:
        raise ValueError(f"subset size n={n} is negative; pass a count >= 0")
    if n >= total:
        return torch.arange(total)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * n / total
    take = quota.floor().long()
    short = n - int(take.sum())
    if short:
        order = torch.argsort(quota - take, descending=True, stable=True)
        take[order[:short]] += 1
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for cls, k in zip(classes, take.tolist()):
        idx = torch.nonzero(labels == cls).flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
    return torch.cat(picked).sort().values


# --------------------------------------------------------------------------- anomaly split


@dataclasses.dataclass(frozen=True, eq=False)
class AnomalySplit:
    """Held-out-class anomaly-detection split (the Zenati / MEG protocol, see the module docstring).

    :ivar train_x: float32 ``(N_train, 1, 28, 28)`` in ``[-1, 1]``; normal images only,
        in shuffled order.
    :ivar train_digits: int64 ``(N_train,)`` class labels of ``train_x``.
    :ivar test_x: float32 ``(N_test, 1, 28, 28)`` in ``[-1, 1]``: held-back normals
        first, then every image of the held-out class (pool order).
    :ivar test_is_anomaly: int64 ``(N_test,)``, 1 = anomalous (held-out class), 0 = normal.
    :ivar test_digits: int64 ``(N_test,)`` class labels of ``test_x``.
    :ivar heldout: the held-out class.
    :ivar seed: seed of the ``torch.Generator`` that shuffled the normal images.
    """

    train_x: Tensor
    train_digits: Tensor
    test_x: Tensor
    test_is_anomaly: Tensor
    test_digits: Tensor
    heldout: int
    seed: int
    dataset: str = "mnist"
    train_fraction: float = 0.8

    def summary(self) -> dict[str, int | float | str]:
        """Sizes and settings, e.g. ``{"n_train": 50165, "n_test_normal": 12542, ...}``."""
        n_anom = int(self.test_is_anomaly.sum())
        n_test = int(self.test_is_anomaly.numel())
        return {
            "dataset": self.dataset,
            "heldout": self.heldout,
            "seed": self.seed,
            "train_fraction": self.train_fraction,
            "n_train": int(self.train_x.shape[0]),
            "n_test": n_test,
            "n_test_normal": n_test - n_anom,
            "n_test_anomalous": n_anom,
            "anomaly_fraction": n_anom / n_test if n_test else 0.0,
        }

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> AnomalySplit:
        """A smaller split for quick experiments and tests.

        ``n_train`` images are drawn stratified by digit, ``n_test`` stratified by
        anomaly label (so the anomaly fraction is kept); ``None`` keeps everything.
        Order within each part is preserved. Deterministic for ``seed``.
        """
        tr = slice(None) if n_train is None else stratified_subset(self.train_digits, n_train, seed)
        te = slice(None) if n_test is None else stratified_subset(self.test_is_anomaly, n_test, seed)
        return dataclasses.replace(
            self,
            train_x=self.train_x[tr],
            train_digits=self.train_digits[tr],
            test_x=self.test_x[te],
            test_is_anomaly=self.test_is_anomaly[te],
            test_digits=self.test_digits[te],
        )

    def train_dataset(self) -> TensorDataset:
        """``TensorDataset(train_x)``; items are 1-tuples ``(x,)`` with ``x`` ``(1, 28, 28)``."""
        return TensorDataset(self.train_x)

    def test_dataset(self) -> TensorDataset:
        """``TensorDataset(test_x, test_is_anomaly)``."""
        return TensorDataset(self.test_x, self.test_is_anomaly)


def _check_heldout(heldout: object, num_classes: int) -> int:
    ok = isinstance(heldout, int) and not isinstance(heldout, bool) and 0 <= heldout < num_classes
    if not ok:
        raise ValueError(
            f"heldout={heldout!r} is not a class label; pass an integer in 0..{num_classes - 1} "
            f"(e.g. --heldout 7)"
        )
    return int(heldout)  # type: ignore[arg-type]


def heldout_digit_split(
    root: PathLike | None = None,
    heldout: int = 7,
    seed: int = 1,
    train_fraction: float = 0.8,
    dataset: str = "mnist",
    download: bool = True,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> AnomalySplit:
    """Held-out-digit anomaly split, the Zenati / MEG protocol (see the module docstring).

    Pool all 70,000 images (train then test), drop class ``heldout``, shuffle
    the normal images with ``torch.Generator().manual_seed(seed)``; train =
    first ``int(train_fraction * N_normal)`` of them, test = the remaining
    normals followed by every image of the held-out class. For MNIST with
    ``heldout=7``: 50,165 train, 12,542 normal + 7,293 anomalous test images.

    :param root: data root; see :func:`~pyro_lfbm.data.root.resolve_data_root`.
    :param heldout: anomalous class, 0..9.
    :param seed: shuffling seed (recorded in the result).
    :param train_fraction: share of normal images used for training, in (0, 1).
    :param dataset: ``"mnist"`` or ``"fashion-mnist"``.
    :param download: allow a download attempt when files are missing.
    :param limit_train: keep only this many training images (stratified by digit).
    :param limit_test: keep only this many test images (stratified, anomaly fraction kept).
        Both subsets are drawn with ``seed``.
    :raises ValueError: bad ``heldout``, ``train_fraction`` or ``dataset``.
    :raises DataError: missing data files.
    """
    info = dataset_info(dataset)
    if info.name not in ("mnist", "fashion-mnist"):
        raise ValueError(f"dataset={dataset!r} has no held-out-class split; use 'mnist' or 'fashion-mnist'")
    heldout = _check_heldout(heldout, info.num_classes)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction} must be strictly between 0 and 1 (e.g. 0.8)")

    x, y = _load_uint8(info.name, root, "all", download)
    normal = torch.nonzero(y != heldout).flatten()
    anomalous = torch.nonzero(y == heldout).flatten()
    normal = normal[torch.randperm(normal.numel(), generator=torch.Generator().manual_seed(seed))]
    n_train = int(train_fraction * normal.numel())
    train_idx = normal[:n_train]
    test_idx = torch.cat([normal[n_train:], anomalous])

    split = AnomalySplit(
        train_x=_to_signed_unit(x[train_idx]),
        train_digits=y[train_idx],
        test_x=_to_signed_unit(x[test_idx]),
        test_is_anomaly=(y[test_idx] == heldout).long(),
        test_digits=y[test_idx],
        heldout=heldout,
        seed=seed,
        dataset=info.name,
        train_fraction=train_fraction,
    )
    if limit_train is not None or limit_test is not None:
        split = split.subset(limit_train, limit_test, seed)
    return split
