"""Held-out-digit anomaly detection: decision functions and metrics.

The paper's decision function is the negative log joint −log p(x, z) = −log p_β(x | z) − log p_α(z)
of z inferred by test-time Langevin (400 noise-free steps of 0.1 from z₀ ~ N(0, I)). Its two
parts are reported as decision functions of their own: ``recon`` = −log p_β(x | z) and
``prior`` = −log p_α(z). Metrics follow the protocol's sources: AUPRC as the trapezoidal area
under ``sklearn.metrics.precision_recall_curve`` (held-out digit = positive class), beside average
precision and AUROC.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Dict, Optional

import numpy as np
from PIL import Image
import torch
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from pyro_lfbm.infer.dataset import InferenceResult, infer_dataset
from pyro_lfbm.infer.modes import module_mode

DECISION_FUNCTIONS = ("joint", "recon", "prior")


def anomaly_scores(
    model,
    x: torch.Tensor,
    *,
    num_steps: int = 400,
    step_size: float = 0.1,
    batch_size: int = 100,
    batchnorm: str = "eval",
    seed: Optional[int] = 0,
    progress: bool = True,
    inference: Optional[Callable[..., InferenceResult]] = None,
    compile: bool = False,
    init: Optional[Callable[..., Dict[str, torch.Tensor]]] = None,
) -> tuple[Dict[str, torch.Tensor], InferenceResult]:
    """Scores (higher = more anomalous) of every image in ``x`` (N, C, H, W).

    :param str batchnorm: ``"eval"`` scores with BatchNorm's running statistics (each image on its
        own); ``"train"`` with the statistics of each test batch, as the official LFBM code does
        (it never calls ``eval()``), which makes a score depend on the other images in its batch.
    :param seed: seeds z₀ and the batch order so that scores are reproducible (None leaves the
        RNG alone).
    :param inference: the batched inference, with the signature of
        :func:`~pyro_lfbm.infer.dataset.infer_dataset` (the default; data-parallel runs pass
        :func:`pyro_lfbm.train.distributed.sharded_inference`, which splits each batch over the processes).
    :param bool compile: compiled chains (``infer_dataset(..., compile=True)``).
    :param init: ``init(x_batch, mask_batch) -> {site: z₀}`` replaces z₀ ~ N(0, I), e.g. an encoder
        guide's ``init_fn`` (chains from the encoder mean).

    Images are scored in a random order, never in the order of ``x``: with ``batchnorm="train"``
    a batch made only of anomalies (a test set sorted by class) would be normalised by anomaly
    statistics, leaking the label into the score.
    :returns: ``({"joint": (N,), "recon": (N,), "prior": (N,)}, inference result)``.
    """
    if batchnorm not in ("eval", "train"):
        raise ValueError(f"batchnorm must be 'eval' or 'train', got {batchnorm!r}")
    with module_mode(model, training=batchnorm == "train"), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        order = torch.randperm(x.shape[0])
        result = (inference or infer_dataset)(
            model, x[order], num_steps=num_steps, step_size=step_size, noise=False, batch_size=batch_size,
            progress=progress, desc="scoring", **({"compile": True} if compile else {}), **({"init": init} if init else {}),
        )
    restore = torch.argsort(order)
    result.z, result.log_joint = result.z[restore], result.log_joint[restore]
    result.log_joint_terms = {k: v[restore] for k, v in result.log_joint_terms.items()}
    recon = -result.log_joint_terms["likelihood"]
    prior = -result.log_joint_terms["prior"]
    return {"joint": recon + prior, "recon": recon, "prior": prior}, result


def anomaly_metrics(is_anomaly, score) -> Dict[str, float]:
    """AUPRC (trapezoid under the precision-recall curve), average precision and AUROC.

    :param is_anomaly: (N,) 1 for the held-out class, 0 for normal images.
    :param score: (N,) higher = more anomalous.
    """
    y = np.asarray(torch.as_tensor(is_anomaly).cpu(), dtype=int)
    s = np.asarray(torch.as_tensor(score).detach().cpu(), dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal-length vectors")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity; the model or the inference diverged")
    if y.min() == y.max():
        raise ValueError("need both normal and anomalous images to compute AUPRC")
    precision, recall, _ = precision_recall_curve(y, s)
    return {
        "auprc": float(auc(recall, precision)),
        "ap": float(average_precision_score(y, s)),
        "auroc": float(roc_auc_score(y, s)),
        "prevalence": float(y.mean()),
    }


def png_code_length(x: torch.Tensor) -> torch.Tensor:
    """The length in **nats** of each image's lossless PNG encoding (zlib level 9), a measure of its complexity.

    Serrà et al., "Input complexity and out-of-distribution detection with likelihood-based generative
    models", ICLR 2020 (arXiv 1909.11480), Eq. 2: S(x) = −log p(x) − L(x) removes the part of a
    likelihood that tracks how complex an image is. Images are quantised back to 8 bits from [−1, 1].

    :param x: (N, C, H, W) images in [−1, 1] with C = 1 or 3.
    :returns: (N,) float64 code lengths in nats (bytes · 8 · ln 2).
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"png_code_length needs images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().cpu().double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    lengths = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", compress_level=9)
        lengths.append(buffer.tell())
    return torch.tensor(lengths, dtype=torch.float64) * 8 * math.log(2)
