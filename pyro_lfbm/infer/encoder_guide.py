"""An amortized Gaussian guide q_φ(z | x) for :class:`~pyro_lfbm.models.LatentModel` (LFBM-VAE).

With a learned flow prior this is the paper's LFBM-VAE variant; with the Gaussian prior it is a
plain VAE. The guide mirrors the model's structure: the same ``pyro.plate("data", B)`` and a
``pyro.sample("z", Normal(loc, scale).to_event(1))`` site, so that::

    guide = EncoderGuide(make_encoder((1, 28, 28), latent_dim=20))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x)                      # joint step on prior, generator and encoder (reparametrized ELBO)

trains the prior, the generator and the encoder together. :func:`fit_encoder` instead fits the
encoder alone to a *frozen* model (a post-hoc inference network for a model that was learned by
short-run Langevin), and :func:`encode_dataset` is amortized inference over a whole data set.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule
from torch import nn
from tqdm.auto import tqdm

from pyro_lfbm.infer.dataset import InferenceResult, batched_log_joint_terms


class EncoderGuide(PyroModule):
    r"""Amortized diagonal-Gaussian guide :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.

    Calling ``guide(x, mask=None)`` (the model's signature) samples ``z`` of shape (B, D) in a
    ``pyro.plate("data", B)``. Masked pixels (``mask == 0``) are set to 0 (mid-grey in [-1, 1])
    before encoding, so the encoder never sees the values the likelihood ignores.

    :param torch.nn.Module encoder: maps x (B, C, H, W) to ``(loc, scale)``, each (B, D), with
        ``scale > 0``, e.g. :class:`~pyro_lfbm.nets.MNISTEncoder`. It is registered with Pyro
        under ``"encoder."`` (a plain ``nn.Module`` attribute of a ``PyroModule``).
    :param str site: name of the latent site of the model (``"z"`` for ``LatentModel``).
    """

    def __init__(self, encoder: nn.Module, site: str = "z", name: str = ""):
        super().__init__(name)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module returning (loc, scale), got {type(encoder).__name__}")
        if getattr(encoder, "deterministic", False):
            raise ValueError("the encoder is deterministic (returns one code); build it with deterministic=False")
        self.encoder = encoder
        self.site = site

    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """``(loc, scale)`` of q(z | x), each (B, D), for images x (B, C, H, W)."""
        if not torch.is_tensor(x) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (B, C, H, W); got {getattr(x, 'shape', type(x))}")
        if mask is not None:
            x = x * mask.to(x.dtype)
        return self.encoder(x)

    def distribution(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dist.Distribution:
        """q(z | x) with batch shape (B,) and event shape (D,)."""
        loc, scale = self.encode(x, mask)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The Pyro guide: ``z ~ q(z | x)`` in ``pyro.plate("data", B)``; returns z (B, D)."""
        q = self.distribution(x, mask)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.site, q)

    @torch.no_grad()
    def mean(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The encoder mean μ_φ(x), shape (B, D), detached."""
        return self.encode(x, mask)[0]

    def init_fn(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{site: μ_φ(x)}``: the ``init=`` of :class:`~pyro_lfbm.infer.LangevinGuide` for hybrid inference."""
        return {self.site: self.mean(x, mask)}


def encode_dataset(
    guide: EncoderGuide,
    x: torch.Tensor,
    model=None,
    *,
    batch_size: int = 500,
    progress: bool = True,
) -> InferenceResult:
    """Amortized inference over a data set: z = μ_φ(x) for every image of x (N, C, H, W).

    Costs one encoder pass per image and no gradient evaluation. With ``model`` given, the
    log joint (N,) and its terms at z are filled in (outside the timed part); otherwise they
    are empty tensors. The guide is used in whatever train/eval mode it is in. Returns CPU tensors.
    """
    device = next(iter(guide.parameters())).device
    zs = []
    started = time.perf_counter()
    for start in tqdm(range(0, x.shape[0], batch_size), desc="encoder", disable=not progress, leave=False):
        zs.append(guide.mean(x[start : start + batch_size].to(device)).cpu())
    seconds = time.perf_counter() - started
    z = torch.cat(zs)
    terms: Dict[str, torch.Tensor] = {}
    log_joint = torch.empty(0)
    if model is not None:
        terms = batched_log_joint_terms(model, x, z, batch_size=batch_size)
        log_joint = terms["prior"] + terms["likelihood"]
    return InferenceResult(z=z, log_joint=log_joint, log_joint_terms=terms, gradient_evaluations=0, seconds=seconds)


def fit_encoder(
    model,
    guide: EncoderGuide,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> List[float]:
    """Fit the encoder of ``guide`` to a frozen ``model`` by SVI (Trace_ELBO), model parameters fixed.

    The model's parameters are hidden from the trace with ``poutine.block(hide_types=["param"])``,
    so SVI's optimizer only ever sees the guide's parameters, and the model is put in ``eval()``
    mode for the duration (its BatchNorm statistics are not updated). This is the post-hoc
    inference network of a model learned by short-run Langevin (LFBM-MCMC).

    :param x: training images (N, C, H, W), N ≥ batch_size.
    :returns: the mean loss per example (negative ELBO) of every epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if x.shape[0] < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} images, got {x.shape[0]}")
    frozen = poutine.block(model, hide_types=["param"])
    svi = SVI(frozen, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    device = next(iter(guide.parameters())).device
    was_training = model.training
    model.eval()
    guide.train()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    try:
        num_batches = x.shape[0] // batch_size
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            total = 0.0
            bar = tqdm(range(num_batches), desc=f"encoder epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for b in bar:
                xb = x[order[b * batch_size : (b + 1) * batch_size]].to(device)
                total += svi.step(xb) / batch_size
            losses.append(total / num_batches)
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return losses
