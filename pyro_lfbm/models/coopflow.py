"""CoopFlow (Xie, Zhu, Li & Li, ICLR 2022): an image flow and a data-space EBM learned cooperatively.

Each iteration (the official ``main_*.py`` of ``github.com/AlvinZhuyx/CoopFlow``):

1. draw images from the normalizing flow, :math:`\\hat x_0 = f^{-1}(\\epsilon)`;
2. *revise* them by a short-run, noise-free Langevin flow toward the EBM
   :math:`p_\\theta(x) \\propto \\exp f_\\theta(x)`: T = 30 steps of
   :math:`x \\leftarrow \\mathrm{clamp}(x + \\mathrm{clamp}(\\tfrac{s^2}{2}\\nabla_x f_\\theta(x), \\pm 0.1), \\pm 1)`
   (the noise-free Langevin move with the gradient clipped at :math:`\\pm 0.1 / (s^2/2)`);
3. update the flow by maximum likelihood on the revised images;
4. update the EBM by the contrastive loss :math:`\\bar f_\\theta(\\hat x_T) - \\bar f_\\theta(x_{data})`.

This module holds the model; the trainer (:class:`~pyro_lfbm.train.coopflow.CoopFlowTrainer`: updates
whose gradient norm explodes are skipped, the authors' guard, gradients are clipped, and any
non-finite loss or sample stops training with a one-line :class:`FloatingPointError`), the
configuration and presets are in :mod:`pyro_lfbm.train.coopflow`; the sample metrics in
:func:`pyro_lfbm.metrics.generation.evaluate_coopflow`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from pyro_lfbm.models.image_flow import ImageFlow
from pyro_lfbm.ops.langevin import langevin_move


class CoopFlow(nn.Module):
    """The two models and the Langevin revision that links them.

    :param ImageFlow flow: the normalizing flow q_α(x) over (C, H, W) images in [-1, 1].
    :param nn.Module energy: the score network f_θ: (..., C, H, W) -> (...), p_θ(x) ∝ exp f_θ(x).
    :param int num_steps: T, Langevin revision steps (official: 30).
    :param float step_size: s (official training: 0.03; synthesis 0.035-0.04).
    :param float max_move: per-step, per-pixel clip of the move (official: 0.1).
    """

    def __init__(self, flow: ImageFlow, energy: nn.Module, num_steps: int = 30, step_size: float = 0.03,
                 max_move: float = 0.1):
        super().__init__()
        if num_steps < 0 or not step_size > 0 or not max_move > 0:
            raise ValueError(f"need num_steps >= 0, step_size > 0, max_move > 0; got {num_steps}, {step_size}, {max_move}")
        self.flow, self.energy = flow, energy
        self.num_steps, self.step_size, self.max_move = int(num_steps), float(step_size), float(max_move)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return self.flow.image_shape

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """f_θ(x) = -energy, shape (B,) for x (B, C, H, W)."""
        return self.energy(x)

    def revise(self, x: torch.Tensor, num_steps: Optional[int] = None, step_size: Optional[float] = None,
               callback=None) -> torch.Tensor:
        """Short-run Langevin revision toward the EBM, without noise (the official code).

        :param x: starting images (B, C, H, W) in [-1, 1] (e.g. flow samples).
        :param callback: optional ``callback(k, x_k)`` after each step k = 1..T.
        :returns: revised images (B, C, H, W) in [-1, 1], detached. The EBM's parameters get no
            gradient from the revision.
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        step = self.step_size if step_size is None else step_size
        # The official per-pixel clip of the drift, clamp((s²/2) g, ±max_move), is a clip of the
        # gradient at ±max_move / (s²/2) before the one Langevin move (noise-free here).
        max_grad = self.max_move / (0.5 * step**2)
        x = x.detach()
        for k in range(1, num_steps + 1):
            with torch.enable_grad():
                xk = x.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.score(xk).sum(), xk)
            x = langevin_move(x.detach(), grad.clamp(-max_grad, max_grad), step, noise=False).clamp(-1.0, 1.0)
            if callback is not None:
                callback(k, x)
        return x.detach()

    def sample_flow(self, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Flow samples x̂₀ (N, C, H, W) in (-1, 1), no gradient."""
        return self.flow.sample(num_samples, temperature)

    def sample(self, num_samples: int, num_steps: Optional[int] = None, step_size: Optional[float] = None) -> torch.Tensor:
        """CoopFlow's synthesis: flow samples revised by the Langevin flow, (N, C, H, W)."""
        return self.revise(self.sample_flow(num_samples), num_steps, step_size)
