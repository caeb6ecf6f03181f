"""The anchor: a Langevin chain and a training step written the way the official LFBM code
(``jianwen-xie/Latent-Space-Normalizing-Flow``) writes them, on the weights of a pyro_lfbm model.

- two ``torch.autograd.grad`` calls per step (the generator's reconstruction energy, then the
  flow's negative log density), summed over the batch;
- the flow's log|det W| recomputed as ``log|det(W.double())|`` on every call;
- the generator's transposed convolutions as ``torch.nn.ConvTranspose2d`` (the official modules;
  :func:`reference_generator`), unless the benchmark asks for the library's own modules.

The update itself is :func:`pyro_lfbm.infer.langevin.langevin_move` (the official
``z - s²/2 ∇E + s ξ`` with E the energy = -log p), so the anchor and the library differ only in
how the gradient is computed.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from torch import nn

from pyro_lfbm.infer.langevin import langevin_move
from pyro_lfbm.nets.layers import PixelShuffleConvTranspose2d
from pyro_lfbm.transforms import ActNorm, BoundedAffineCoupling, LULinear


def reference_generator(generator: nn.Module) -> nn.Module:
    """A deep copy of ``generator`` whose :class:`~pyro_lfbm.nets.layers.PixelShuffleConvTranspose2d`
    layers are plain ``nn.ConvTranspose2d`` with the same weights (the official code's modules)."""
    ref = copy.deepcopy(generator)
    for parent in ref.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, PixelShuffleConvTranspose2d):
                plain = nn.ConvTranspose2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                           bias=child.bias is not None).to(child.weight.device, child.weight.dtype)
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
    return ref


class AnchorFlow:
    """The flow prior's log density computed the way the official LFBM ``_netF`` does.

    Per flow step: ActNorm ``z * exp(logs) + b``; invertible linear ``z W^T`` with
    ``log|det W|`` recomputed as ``log|det(W.double())|`` on every call; bounded affine coupling
    ``z2 <- (z2 + shift) * sigmoid(h + 2)`` with ``log sigmoid`` summed. The weights are those of
    a :class:`~pyro_lfbm.priors.FlowPrior` with ``permutation="lu"`` (W assembled once and kept as
    a tensor that requires grad, as a parameter of the official code would be).

    :param prior: a FlowPrior whose flow parts are ``[ActNorm, LULinear, BoundedAffineCoupling] * K``.
    """

    def __init__(self, prior):
        parts = list(prior.flow.parts)
        self.dim = prior.latent_dim
        self.steps = []
        for i in range(0, len(parts), 3):
            actnorm, linear, coupling = parts[i : i + 3]
            if not (isinstance(actnorm, ActNorm) and isinstance(linear, LULinear) and isinstance(coupling, BoundedAffineCoupling)):
                raise TypeError("the anchor loop needs a FlowPrior with permutation='lu'")
            with torch.no_grad():
                weight = linear._assemble().detach().clone()
            self.steps.append((actnorm.loc, actnorm.log_scale, weight.requires_grad_(True), coupling))

    def parameters(self):
        """Every tensor the official code would optimise (ActNorm, W, the coupling networks)."""
        seen = {}
        for loc, log_scale, weight, coupling in self.steps:
            for p in (loc, log_scale, weight, *coupling.parameters()):
                seen[id(p)] = p
        return list(seen.values())

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:param z: (B, D). :returns: log p_flow(z), shape (B,)."""
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for loc, log_scale, weight, coupling in self.steps:
            z = z * torch.exp(log_scale) + loc
            logdet = logdet + log_scale.sum()
            z = z @ weight.T
            logdet = logdet + torch.log(torch.abs(torch.det(weight.double()))).to(z.dtype)
            d = coupling.split_dim
            z1, z2 = z[:, :d], z[:, d:]
            h = coupling.hypernet(z1)
            shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)
            z = torch.cat([z1, (z2 + shift) * scale], dim=1)
            logdet = logdet + torch.log(scale).sum(1)
        return -0.5 * (z**2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet


def anchor_langevin(
    generator: Callable,
    flow: AnchorFlow,
    x: torch.Tensor,
    z0: torch.Tensor,
    num_steps: int,
    step_size: float,
    sigma: float,
    noise: bool = True,
    rng: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The official LFBM posterior Langevin loop (two ``autograd.grad`` per step):

    ``z <- z - s²/2 (∇ ‖x - g(z)‖²/(2σ²) + ∇ (-log p_flow(z))) + s ξ``, summed over the batch.

    :param x: (B, C, H, W) images. :param z0: (B, D) start. :returns: z_K, (B, D), detached.
    """
    z = z0.detach().clone()
    for _ in range(num_steps):
        z = z.detach().requires_grad_(True)
        x_hat = generator(z)
        g_energy = ((x_hat - x) ** 2).sum() / (2.0 * sigma**2)
        z_grad_g = torch.autograd.grad(g_energy, z)[0]
        f_energy = -flow.log_prob(z)
        z_grad_e = torch.autograd.grad(f_energy.sum(), z)[0]
        z = langevin_move(z.detach(), -(z_grad_g + z_grad_e), step_size, noise, rng)
    return z.detach()


class AnchorTrainer:
    """One anchor-style Algorithm 1 step per batch: :func:`anchor_langevin` from z₀ ~ N(0, I),
    then one Adam step on ``‖x - g(z_K)‖²/(2σ²) - log p_flow(z_K)`` summed over the batch (the
    official code's generator and flow losses), on a copy of ``model``'s weights.

    :param model: a LatentModel with a FlowPrior (``permutation="lu"``).
    :param bool official_modules: use ``nn.ConvTranspose2d`` (:func:`reference_generator`)
        instead of the model's own generator modules.
    """

    def __init__(self, model, num_steps: int = 20, step_size: float = 0.1, lr: float = 1e-3,
                 official_modules: bool = True):
        model = copy.deepcopy(model)
        self.generator = reference_generator(model.generator) if official_modules else model.generator
        self.generator.train()
        self.flow = AnchorFlow(model.prior)
        self.latent_dim, self.sigma = model.latent_dim, model.sigma
        self.num_steps, self.step_size = num_steps, step_size
        params = {id(p): p for p in [*self.generator.parameters(), *self.flow.parameters()]}
        self.optimizer = torch.optim.Adam(params.values(), lr=lr, betas=(0.5, 0.999))

    def step(self, x: torch.Tensor) -> float:
        """One step on images x (B, C, H, W); returns the loss per image."""
        z0 = torch.randn(x.shape[0], self.latent_dim, device=x.device)
        z = anchor_langevin(self.generator, self.flow, x, z0, self.num_steps, self.step_size, self.sigma)
        loss = ((self.generator(z) - x) ** 2).sum() / (2 * self.sigma**2) - self.flow.log_prob(z).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()) / x.shape[0]
