"""Activation normalisation (ActNorm, Kingma & Dhariwal 2018) on real vectors."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn


class ActNorm(TransformModule):
    r"""
    Per-dimension affine bijection of Glow,

        :math:`\mathbf{y} = \mathbf{x} \odot \exp(\mathbf{s}) + \mathbf{b}`,

    with learnable ``log_scale`` :math:`\mathbf{s}` and ``loc`` :math:`\mathbf{b}`, both of shape
    ``(input_dim,)`` and initialised to zero (the identity). There is deliberately no data-dependent
    initialisation: the transform is deterministic and has no hidden state, so it is safe inside a
    Langevin loop. The log-Jacobian :math:`\sum_i s_i` does not depend on ``x``.

    Shapes: ``x`` and ``y`` are ``(..., input_dim)``; ``log_abs_det_jacobian`` is ``(...)``.

    Example::

        >>> t = ActNorm(3)
        >>> t(torch.ones(5, 3)).shape
        torch.Size([5, 3])

    :param int input_dim: size D of the event.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int):
        super().__init__(cache_size=0)
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        self.loc = nn.Parameter(torch.zeros(input_dim))
        self.log_scale = nn.Parameter(torch.zeros(input_dim))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp() + self.loc

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.loc) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:returns: ``sum(log_scale)`` broadcast to the batch shape ``x.shape[:-1]``."""
        return self.log_scale.sum().expand(x.shape[:-1])


def actnorm(input_dim: int) -> ActNorm:
    """
    Build an :class:`ActNorm` transform (identity at initialisation).

    :param int input_dim: size D of the event.
    :rtype: ActNorm
    """
    return ActNorm(input_dim)
