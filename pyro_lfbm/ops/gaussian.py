"""The Gaussian pixel likelihood of :class:`~pyro_lfbm.models.LatentModel` as plain tensor code."""

from __future__ import annotations

import math
from typing import Optional

import torch


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, sigma: float, mask: Optional[torch.Tensor] = None,
                            event_dim: int = 3) -> torch.Tensor:
    """log N(x; mean, σ²I) summed over the last ``event_dim`` dimensions, masked pixels left out.

    The value of ``Normal(mean, sigma).mask(mask.bool()).to_event(event_dim).log_prob(x)``: the same
    element-wise expression -(x - μ)²/(2σ²) - log σ - log √(2π) in the same float operations,
    with σ as a 0-dim tensor instead of a tensor broadcast over every pixel, and no distribution
    objects.

    :param x: observations (B, C, H, W). :param mean: g(z), same shape.
    :param mask: optional (B or 1, C, H, W) of 0/1 or bool; 0 removes a pixel.
    :returns: (B,).
    """
    scale = torch.tensor(sigma, dtype=mean.dtype, device=mean.device)
    var = scale**2
    log_prob = -((x - mean) ** 2) / (2 * var) - scale.log() - math.log(math.sqrt(2 * math.pi))
    if mask is not None:
        log_prob = torch.where(mask.bool(), log_prob, log_prob.new_zeros(()))
    return log_prob.reshape(log_prob.shape[: log_prob.dim() - event_dim] + (-1,)).sum(-1)
