"""Generative Latent Flow (Xiao, Yan & Amit, 2019): an autoencoder with a flow on its codes.

A deterministic encoder E and generator G are trained as an autoencoder while a normalizing flow
(:class:`~pyro_lfbm.priors.FlowPrior`) learns the density of the codes z = E(x), all in one stage:

.. math:: L = \\underbrace{\\lVert x - G(E(x)) \\rVert^2}_{\\text{reconstruction}}
          \\; + \\; \\beta\\,\\underbrace{\\big(-\\log p_\\alpha(\\operatorname{sg}[E(x)])\\big)}_{\\text{flow NLL}},

with the stop-gradient sg (the paper's key detail): the flow term trains only the flow, so the
encoder is not pulled toward codes of ever higher density (which collapses them). Sampling is
z = f_α^{-1}(ε), x = G(z). GLF is the vanishing-pixel-noise limit of a VAE with a flow prior.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from pyro_lfbm.nets import make_encoder, make_generator
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


@dataclass
class GLFConfig:
    """Everything needed to rebuild a :class:`GLF` and train it.

    The defaults are the CPU preset: the generator of the ``cpu`` LFBM preset (hidden 256,
    channels 32), its mirror as encoder, and LFBM's flow (5 steps, width 64) on D = 20 codes.
    Optimiser: Adam (lr 1e-3, betas (0.9, 0.99)) as in the unofficial GLF code, flow weight decay 2e-5.
    """

    image_shape: Tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 20
    hidden_dim: int = 256
    channels: int = 32
    batch_norm: bool = True
    flow_steps: int = 5
    flow_width: int = 64
    nll_weight: float = 1.0
    stop_gradient: bool = True
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.99)
    flow_weight_decay: float = 2e-5
    gamma: float = 1.0
    batch_size: int = 100
    epochs: int = 10

    def build(self) -> GLF:
        shape = tuple(int(s) for s in self.image_shape)
        kwargs = {}
        if shape == (1, 28, 28):
            kwargs = dict(hidden_dim=self.hidden_dim, channels=self.channels, batch_norm=self.batch_norm)
        encoder = make_encoder(shape, self.latent_dim, deterministic=True, **kwargs)
        generator = make_generator(shape, self.latent_dim, **kwargs)
        prior = FlowPrior(self.latent_dim, num_steps=self.flow_steps, hidden_dim=self.flow_width)
        return GLF(encoder, generator, prior, self.nll_weight, self.stop_gradient)

    def to_dict(self) -> dict:
        return asdict(self)


def glf_preset(name: str, image_shape=(1, 28, 28)) -> GLFConfig:
    """``tiny`` (tests), ``cpu`` (MNIST-scale on a CPU) or ``paper`` (the paper's sizes: MNIST-family
    D = 20 with the full LFBM MNIST nets; 32×32 colour: D = 64, flow width 256, 200 epochs)."""
    shape = tuple(int(s) for s in image_shape)
    if name == "tiny":
        return GLFConfig(shape, latent_dim=4, hidden_dim=32, channels=8, flow_steps=2, flow_width=16,
                         batch_size=20, epochs=1)
    if name == "cpu":
        return GLFConfig(shape)
    if name == "paper":
        if shape == (1, 28, 28):
            return GLFConfig(shape, hidden_dim=1024, channels=128, epochs=100, gamma=0.5 ** (1 / 50))
        return GLFConfig(shape, latent_dim=64, flow_width=256, epochs=200, gamma=0.5 ** (1 / 100))
    raise ValueError(f"unknown GLF preset {name!r}; choose tiny, cpu or paper")


class GLFTrainer:
    """One Adam step of the GLF objective per :meth:`step`; drive it with
    :func:`pyro_lfbm.train.loop.fit_steps`. The learning rate decays by ``gamma`` per epoch.

    :param GLF model: the model.
    :param GLFConfig config: optimiser settings (``lr``, ``betas``, ``flow_weight_decay``, ``gamma``).
    """

    def __init__(self, model: GLF, config: Optional[GLFConfig] = None):
        cfg = config or GLFConfig()
        self.model, self.config = model, cfg
        groups = [
            {"params": list(model.encoder.parameters()) + list(model.generator.parameters()), "weight_decay": 0.0},
            {"params": list(model.prior.parameters()), "weight_decay": cfg.flow_weight_decay},
        ]
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.gamma)

    def step(self, x: torch.Tensor) -> Dict[str, float]:
        self.model.train()
        terms = self.model.loss(x)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"GLF loss became {terms['loss'].item()}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        pixels = math.prod(x.shape[1:])
        return {"loss": terms["loss"].item(), "recon": terms["recon"].item(), "nll": terms["nll"].item(),
                "recon_mse": terms["recon"].item() / pixels}

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@torch.no_grad()
def evaluate_glf(model: GLF, x_test: torch.Tensor, num_samples: int, batch_size: int = 500) -> Dict[str, object]:
    """Test metrics and images of a trained GLF, in ``eval()`` mode (restored afterwards).

    :param x_test: test images (N, C, H, W) in [-1, 1], on any device.
    :returns: ``recon_mse`` (per pixel, [-1, 1] units, of G(E(x)): one encoder pass),
        ``test_code_nll`` (mean −log p_α(E(x))), ``code_std`` (mean per-dimension std of the
        codes), and on the CPU ``reconstructions`` (N, C, H, W) and ``samples`` (num_samples, C, H, W).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        recon = torch.cat([model.reconstruct(xb.to(device)).cpu() for xb in x_test.split(batch_size)])
        codes = torch.cat([model.encode(xb.to(device)).cpu() for xb in x_test.split(batch_size)])
        samples = torch.cat([model.sample(min(batch_size, num_samples - i)).cpu() for i in range(0, num_samples, batch_size)])
        test_nll = -model.prior.log_prob(codes.to(device)).mean().item()
    finally:
        model.train(was_training)
    return {"recon_mse": (recon - x_test.cpu()).pow(2).mean().item(), "test_code_nll": test_nll,
            "code_std": codes.std(0).mean().item(), "reconstructions": recon, "samples": samples}
