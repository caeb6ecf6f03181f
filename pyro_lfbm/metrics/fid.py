"""Fréchet distances between image sets: Inception FID when available, and a classifier-feature FD.

Two feature spaces, one formula. The Fréchet distance between Gaussians fitted to two feature
sets a (N, F) and b (M, F) is

.. math:: \\lVert\\mu_a - \\mu_b\\rVert^2 + \\operatorname{tr}\\big(\\Sigma_a + \\Sigma_b - 2(\\Sigma_a\\Sigma_b)^{1/2}\\big).

* **Inception FID** (:func:`inception_fid`): the standard FID of ``pytorch-fid`` (Inception-v3
  pool3, 2048-d). It needs the package *and* its weights on the machine; nothing is downloaded
  here. :func:`inception_status` says whether it can run, and why not.
* **Classifier Fréchet distance** (:func:`sample_frechet_distance`): the same formula in the
  128-d penultimate layer of a small CNN classifier (:class:`ClassifierFeatures`) trained once
  on the labelled training split (MNIST, Fashion-MNIST, ...) and cached outside the repository
  (``$PYRO_LFBM_CACHE``, else ``~/.cache/pyro_lfbm``). **This is not the Inception FID**: its
  values are on another scale and are comparable only between runs that use the same cached
  classifier (same data set, same ``CLASSIFIER_VERSION``). Report it as "classifier FD".

Stable API (used by other experiments)::

    frechet_distance(features_a, features_b) -> float            # (N, F), (M, F)
    gaussian_statistics(features) -> (mu (F,), sigma (F, F))     # float64 numpy
    frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float
    ClassifierFeatures.load_or_train(dataset, root=None, cache_dir=None, ...) -> ClassifierFeatures
    ClassifierFeatures(...).features(x) -> (N, 128)                # x in [-1, 1]
    sample_frechet_distance(samples, real_images, dataset="mnist", root=None, cache_dir=None) -> float
    inception_status() -> (bool, reason);  inception_fid(samples, real_images) -> float

All images are tensors of shape (N, C, H, W) in [-1, 1] (the library's convention).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_lfbm.data import dataset_info, load_images

#: Environment variable naming the cache folder for trained feature networks.
CACHE_ENV = "PYRO_LFBM_CACHE"
#: Bump when the classifier's architecture or training changes (cached files are then retrained).
CLASSIFIER_VERSION = 1
FEATURE_DIM = 128

__all__ = [
    "CACHE_ENV",
    "CLASSIFIER_VERSION",
    "ClassifierFeatures",
    "default_cache_dir",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "inception_fid",
    "inception_status",
    "sample_frechet_distance",
]


def default_cache_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir`` if given, else ``$PYRO_LFBM_CACHE``, else ``~/.cache/pyro_lfbm`` (never the repo)."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_lfbm"


# --------------------------------------------------------------------------- the formula


def gaussian_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) (unbiased, float64) of features (N, F), N >= 2."""
    f = np.asarray(torch.as_tensor(features).detach().cpu().double())
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N >= 2, F), got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity (did the samples diverge?)")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    tr((Σ1 Σ2)^½) is computed as Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (eigen-
    decompositions, negative round-off eigenvalues clipped), which stays accurate when the
    covariances are singular (dead ReLU features, fewer samples than dimensions), where
    ``scipy.linalg.sqrtm`` of the non-symmetric product is not.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, float)), np.atleast_2d(np.asarray(sigma2, float))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to features_a (N, F) and features_b (M, F)."""
    return frechet_distance_from_statistics(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


# --------------------------------------------------------------------------- classifier features


class ClassifierFeatures(nn.Module):
    """A small CNN classifier whose 128-d penultimate layer is the feature space of the classifier FD.

    Conv(C→32, 3)–ReLU–MaxPool2 → Conv(32→64, 3)–ReLU–MaxPool2 → AdaptiveAvgPool(7) → Linear(64·49→128)
    –ReLU (features) → Linear(128→classes). Works for any (C, H, W); input in [-1, 1].

    :param tuple image_shape: (C, H, W).
    :param int num_classes: number of labels.
    """

    def __init__(self, image_shape: Tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        c = self.image_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(64 * 49, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, self.num_classes)
        #: set by :meth:`load_or_train`: {"dataset", "test_accuracy", "train_seconds", "path", ...}
        self.info: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of images x (N, C, H, W) in [-1, 1]."""
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Penultimate features (N, 128) of images x (N, C, H, W) in [-1, 1], in eval mode, on the CPU."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        self.eval()
        device = next(self.parameters()).device
        out = [self.body(x[i : i + batch_size].to(device).clamp(-1, 1)).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
        """Share of images x (N, C, H, W) whose predicted class equals y (N,)."""
        self.eval()
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((self(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
        return correct / max(x.shape[0], 1)

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 2, batch_size: int = 128, lr: float = 1e-3,
            seed: int = 0, progress: bool = True) -> "ClassifierFeatures":
        """Train by Adam on cross-entropy: images x (N, C, H, W) in [-1, 1], labels y (N,)."""
        gen = torch.Generator().manual_seed(seed)
        optim = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            batches = range(0, x.shape[0], batch_size)
            for i in tqdm(batches, desc=f"classifier epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
                idx = order[i : i + batch_size]
                loss = nn.functional.cross_entropy(self(x[idx]), y[idx])
                optim.zero_grad()
                loss.backward()
                optim.step()
        self.eval()
        return self

    @classmethod
    def cache_path(cls, dataset: str, cache_dir: Optional[str | os.PathLike] = None, limit: Optional[int] = None,
                   fake_shape: Optional[Tuple[int, int, int]] = None) -> Path:
        """Where the classifier for ``dataset`` is cached: ``<cache>/classifier-<dataset>[-<limit>]-v<version>.pt``."""
        name = dataset_info(dataset).name
        if name == "fake" and fake_shape is not None:
            name += "-" + "x".join(str(int(v)) for v in fake_shape)
        suffix = "" if limit is None else f"-n{limit}"
        return default_cache_dir(cache_dir) / f"classifier-{name}{suffix}-v{CLASSIFIER_VERSION}.pt"

    @classmethod
    def load_or_train(
        cls,
        dataset: str = "mnist",
        root: Optional[str | os.PathLike] = None,
        cache_dir: Optional[str | os.PathLike] = None,
        *,
        epochs: int = 2,
        limit: Optional[int] = None,
        seed: int = 0,
        progress: bool = True,
        fake_shape: Optional[Tuple[int, int, int]] = None,
    ) -> "ClassifierFeatures":
        """The cached classifier for ``dataset``, training it (on the training split) if absent.

        :param dataset: a labelled data set of :func:`pyro_lfbm.data.load_images` (``mnist``,
            ``fashion-mnist``, ``svhn``, ``cifar10``, ``fake``; not CelebA, whose labels are identities).
        :param root: data root for training.
        :param cache_dir: cache folder (default :func:`default_cache_dir`); created if missing.
        :param limit: train on the first ``limit`` images only (tests); part of the cache name.
        :param fake_shape: (C, H, W) of ``dataset="fake"`` images (default (3, 32, 32)).
        :returns: the classifier in eval mode, with :attr:`info` filled (test accuracy etc.).
        """
        info = dataset_info(dataset)
        if info.num_classes < 2:
            raise ValueError(f"{info.name} has no class labels; the classifier FD needs a labelled data set (mnist, fashion-mnist, ...)")
        path = cls.cache_path(info.name, cache_dir, limit, fake_shape)
        fake = {"fake_shape": tuple(fake_shape)} if info.name == "fake" and fake_shape is not None else {}
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
                net = cls(tuple(state["image_shape"]), state["num_classes"])
                net.load_state_dict(state["model"])
                net.info = dict(state["info"], path=str(path), cached=True)
                return net.eval()
            except Exception:  # a corrupt or foreign cache file: train again and overwrite
                pass
        x, y = load_images(info.name, root, "train", limit=limit, **fake).tensors
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = cls(tuple(x.shape[1:]), info.num_classes)
            started = time.perf_counter()
            net.fit(x, y, epochs=epochs, seed=seed, progress=progress)
        seconds = time.perf_counter() - started
        test_split = "test" if "test" in info.splits else info.splits[-1]
        xt, yt = load_images(info.name, root, test_split, limit=None if limit is None else max(limit // 5, 100), **fake).tensors
        net.info = {
            "dataset": info.name,
            "version": CLASSIFIER_VERSION,
            "train_images": int(x.shape[0]),
            "epochs": epochs,
            "train_seconds": round(seconds, 1),
            "test_accuracy": net.accuracy(xt, yt),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"model": net.state_dict(), "image_shape": net.image_shape, "num_classes": net.num_classes,
                    "info": net.info}, tmp)
        os.replace(tmp, path)
        net.info = dict(net.info, path=str(path), cached=False)
        return net


def sample_frechet_distance(
    samples: torch.Tensor,
    real_images: torch.Tensor,
    dataset: str = "mnist",
    root: Optional[str | os.PathLike] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    *,
    classifier: Optional[ClassifierFeatures] = None,
) -> float:
    """Classifier Fréchet distance (NOT the Inception FID) between two image sets.

    :param samples: generated images (N, C, H, W) in [-1, 1].
    :param real_images: reference images (M, C, H, W) in [-1, 1] (e.g. the training set).
    :param dataset: selects the cached classifier (trained on first use).
    :param classifier: use this one instead of loading.
    """
    net = classifier or ClassifierFeatures.load_or_train(dataset, root, cache_dir)
    return frechet_distance(net.features(samples), net.features(real_images))


# --------------------------------------------------------------------------- Inception FID


def inception_status() -> Tuple[bool, str]:
    """(True, "") when pytorch-fid and its Inception weights are on this machine, else (False, why).

    Only the local torch hub cache is looked at; nothing is downloaded.
    """
    try:
        import pytorch_fid.inception as inception  # noqa: F401
    except ImportError:
        return False, "pytorch-fid is not installed (pip install pytorch-fid)"
    url = getattr(inception, "FID_WEIGHTS_URL", "")
    name = url.rsplit("/", 1)[-1] if url else "pt_inception-2015-12-05-6726825d.pth"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not weights.is_file():
        return False, f"Inception weights {weights} are not on this machine (they cannot be downloaded here)"
    return True, ""


def inception_fid(samples: torch.Tensor, real_images: torch.Tensor, batch_size: int = 100,
                  device: Optional[torch.device] = None) -> float:
    """Standard FID (pytorch-fid, Inception-v3 pool3) between images (N, C, H, W) in [-1, 1].

    Gray images are repeated to 3 channels and images are resized to 299×299 by pytorch-fid.
    :raises RuntimeError: when :func:`inception_status` is false.
    """
    ok, why = inception_status()
    if not ok:
        raise RuntimeError(f"Inception FID unavailable: {why}")
    from pytorch_fid.inception import InceptionV3

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    @torch.no_grad()
    def feats(x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = ((x[i : i + batch_size].clamp(-1, 1) + 1) / 2).to(device)
            if xb.shape[1] == 1:
                xb = xb.repeat(1, 3, 1, 1)
            out.append(net(xb)[0].squeeze(-1).squeeze(-1).cpu())
        return torch.cat(out)

    return frechet_distance(feats(samples), feats(real_images))
