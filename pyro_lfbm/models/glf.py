"""Generative Latent Flow (Xiao, Yan & Amit, 2019): an autoencoder with a flow on its codes.

A deterministic encoder E and generator G are trained as an autoencoder while a normalizing flow
(:class:`~pyro_lfbm.priors.FlowPrior`) learns the density of the codes z = E(x), all in one stage:

.. math:: L = \\underbrace{\\lVert x - G(E(x)) \\rVert^2}_{\\text{reconstruction}}
          \\; + \\; \\beta\\,\\underbrace{\\big(-\\log p_\\alpha(\\operatorname{sg}[E(x)])\\big)}_{\\text{flow NLL}},

with the stop-gradient sg (the paper's key detail): the flow term trains only the flow, so the
encoder is not pulled toward codes of ever higher density (which collapses them). Sampling is
z = f_α^{-1}(ε), x = G(z). GLF is the vanishing-pixel-noise limit of a VAE with a flow prior.

Its configuration, presets and trainer are in :mod:`pyro_lfbm.train.glf`; its test metrics in
:func:`pyro_lfbm.metrics.generation.evaluate_glf`.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from pyro_lfbm.priors import FlowPrior


class GLF(nn.Module):
    """Encoder, generator and flow prior of GLF.

    :param nn.Module encoder: E, images (B, C, H, W) -> codes (B, D) (a deterministic encoder,
        e.g. ``MNISTEncoder(deterministic=True)``).
    :param nn.Module generator: G, codes (B, D) -> images (B, C, H, W) in [-1, 1].
    :param FlowPrior prior: the flow p_α over R^D.
    :param float nll_weight: β, weight of the flow NLL (irrelevant to the gradients when
        ``stop_gradient`` is on and each network has its own Adam state, but kept for the total).
    :param bool stop_gradient: detach the codes in the flow term (GLF); ``False`` gives the
        "regularized" variant where the NLL also trains the encoder.
    """

    def __init__(self, encoder: nn.Module, generator: nn.Module, prior: FlowPrior, nll_weight: float = 1.0,
                 stop_gradient: bool = True):
        super().__init__()
        if not nll_weight >= 0:
            raise ValueError(f"nll_weight must be >= 0, got {nll_weight}")
        self.encoder, self.generator, self.prior = encoder, generator, prior
        self.nll_weight, self.stop_gradient = float(nll_weight), bool(stop_gradient)

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = E(x), (B, D)."""
        return self.encoder(x)

    def loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The one-stage GLF objective on a batch ``x`` (B, C, H, W).

        :returns: ``{"loss", "recon", "nll"}``, scalars: ``recon`` = per-example sum of squared
            errors averaged over the batch, ``nll`` = mean -log p_α(z) of the (detached) codes,
            ``loss = recon + nll_weight * nll``.
        """
        z = self.encode(x)
        recon = (self.generator(z) - x).pow(2).flatten(1).sum(1).mean()
        nll = -self.prior.log_prob(z.detach() if self.stop_gradient else z).mean()
        return {"loss": recon + self.nll_weight * nll, "recon": recon, "nll": nll}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(E(x)), (B, C, H, W)."""
        return self.generator(self.encode(x))

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """z = f^{-1}(T ε), x = G(z): (N, C, H, W). Call ``eval()`` first for BatchNorm nets."""
        eps = temperature * torch.randn(num_samples, self.latent_dim, device=self.prior.base_loc.device)
        return self.generator(self.prior.flow.inv(eps))
