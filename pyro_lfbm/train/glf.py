"""Training Generative Latent Flow (:class:`~pyro_lfbm.models.GLF`): its configuration, presets
and the trainer that :func:`~pyro_lfbm.train.loop.fit_steps` drives."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from pyro_lfbm.models.glf import GLF
from pyro_lfbm.nets import make_encoder, make_generator
from pyro_lfbm.priors import FlowPrior

__all__ = ["GLFConfig", "GLFTrainer", "glf_preset"]


@dataclass(frozen=True)
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
