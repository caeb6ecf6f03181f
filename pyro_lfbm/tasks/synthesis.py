"""Synthesis and reconstruction: samples x = g(z), z ~ p_α, their Fréchet distance, and test reconstruction MSE.

* :func:`sample_images`: N samples (N, C, H, W) in [-1, 1], generator in ``eval()`` mode.
* :func:`test_reconstruction_mse`: as the official LFBM code's ``--testing_reconstruct`` test
  (``github.com/jianwen-xie/Latent-Space-Normalizing-Flow``, ``train.py``): z₀ ~ N(0, I), ``num_steps`` noise-free Langevin
  steps on log p(x, z), MSE per pixel of g(z) against x **in [-1, 1] units** (the paper's).
* :func:`synthesis_metrics`: both, plus the classifier Fréchet distance of the samples to real
  training images (:func:`pyro_lfbm.metrics.fid.sample_frechet_distance`; not the Inception FID) and the
  Inception FID when :func:`pyro_lfbm.metrics.fid.inception_status` allows it.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from pyro_lfbm.infer.modes import eval_mode
from pyro_lfbm.metrics.fid import ClassifierFeatures, frechet_distance, inception_fid, inception_status
from pyro_lfbm.tasks.recovery import reconstruct, region_mse

__all__ = ["sample_images", "synthesis_metrics", "test_reconstruction_mse"]


def sample_images(model, num_samples: int, *, seed: Optional[int] = 0, batch_size: int = 500) -> torch.Tensor:
    """x = g(z), z ~ p_α(z): (num_samples, C, H, W) in [-1, 1] on the CPU (no pixel noise)."""
    out = []
    with eval_mode(model), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            with torch.enable_grad():  # the energy prior samples by Langevin
                z = model.prior.sample((n,)).detach()
            with torch.no_grad():
                out.append(model.generator(z).cpu())
    return torch.cat(out)


def test_reconstruction_mse(model, x: torch.Tensor, *, num_steps: int, step_size: float = 0.1, seed: int = 0,
                            batch_size: int = 500, progress: bool = False) -> float:
    """Per-pixel MSE in [-1, 1] units of g(z) against test images x (N, C, H, W) after noise-free Langevin."""
    x_hat = reconstruct(model, x, None, num_steps=num_steps, step_size=step_size, noise=False, seed=seed,
                        batch_size=batch_size, progress=progress, desc="reconstruction")
    return region_mse(x_hat, x, unit=False)


def synthesis_metrics(
    model,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    *,
    classifier: Optional[ClassifierFeatures],
    num_samples: int = 5000,
    num_steps: int = 400,
    step_size: float = 0.1,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> Dict[str, object]:
    """Samples' classifier FD against ``train_x`` (and Inception FID if possible), test reconstruction MSE.

    :param train_x: reference real images (M, C, H, W) for the Fréchet distances.
    :param test_x: test images (N, C, H, W) to reconstruct.
    :param classifier: the feature network of the classifier FD (``None`` skips it).
    :returns: ``{"classifier_fd", "inception_fid", "inception_note", "recon_mse", "samples"}``.
    """
    samples = sample_images(model, num_samples, seed=seed, batch_size=batch_size)
    out: Dict[str, object] = {"samples": samples}
    out["classifier_fd"] = (frechet_distance(classifier.features(samples), classifier.features(train_x))
                            if classifier is not None else None)
    ok, why = inception_status()
    out["inception_fid"] = inception_fid(samples, train_x) if ok else None
    out["inception_note"] = "" if ok else why
    out["recon_mse"] = test_reconstruction_mse(model, test_x, num_steps=num_steps, step_size=step_size, seed=seed,
                                               batch_size=batch_size, progress=progress)
    return out
