"""The Bernoulli pixel likelihood of :class:`~pyro_lfbm.models.LatentModel` as plain tensor code.

Images live in [−1, 1] and every generator ends in ``tanh``, so a pixel x and the generator's output μ = g(z) are
read as the probabilities p = (x + 1)/2 and q = (μ + 1)/2 of "ink". Grey pixels are fractional targets, the binary
cross-entropy p log q + (1 − p) log(1 − q), as in Pyro's ``examples/vae/vae.py`` (its ``Bernoulli(...,
validate_args=False)`` on grey MNIST) and in the hierarchical VAEs that item 3 of issue 21 compares with (Havtorn et
al., ICML 2021). For binary images it is the Bernoulli log probability exactly.
"""

from __future__ import annotations

from typing import Optional

import torch

#: q is kept in [ε, 1 − ε]: a saturated ``tanh`` (μ = ±1 in float32) would otherwise give log 0.
PROBABILITY_FLOOR = 1e-6


def bernoulli_pixel_log_prob(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Element-wise p log q + (1 − p) log(1 − q) with p = (x + 1)/2, q = (μ + 1)/2 clamped to [ε, 1 − ε].

    :param x: images in [−1, 1]. :param mean: g(z) in [−1, 1], broadcastable to ``x``.
    :returns: the per-pixel log probabilities, the broadcast shape.
    """
    q = ((mean + 1) / 2).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    p = (x + 1) / 2
    return p * q.log() + (1 - p) * torch.log1p(-q)


def bernoulli_log_likelihood(x: torch.Tensor, mean: torch.Tensor, mask: Optional[torch.Tensor] = None,
                             event_dim: int = 3) -> torch.Tensor:
    """:func:`bernoulli_pixel_log_prob` summed over the last ``event_dim`` dimensions, masked pixels left out:
    the value of ``PixelBernoulli(mean).mask(mask.bool()).to_event(event_dim).log_prob(x)``.

    :param x: observations (B, C, H, W) in [−1, 1]. :param mean: g(z), same shape.
    :param mask: optional (B or 1, C, H, W) of 0/1 or bool; 0 removes a pixel.
    :returns: (B,).
    """
    log_prob = bernoulli_pixel_log_prob(x, mean)
    if mask is not None:
        log_prob = torch.where(mask.bool(), log_prob, log_prob.new_zeros(()))
    return log_prob.reshape(log_prob.shape[: log_prob.dim() - event_dim] + (-1,)).sum(-1)

