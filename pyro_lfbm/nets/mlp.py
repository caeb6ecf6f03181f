"""A small fully-connected network (used e.g. as the LEBM energy function)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "make_activation", "MLP"]

#: Names accepted by :func:`make_activation` / :class:`MLP`.
ACTIVATIONS = ("gelu", "relu", "leaky_relu", "silu")


def make_activation(name: str, negative_slope: float = 0.2) -> nn.Module:
    """Build an element-wise activation module by name.

    :param str name: one of :data:`ACTIVATIONS`.
    :param float negative_slope: slope of ``"leaky_relu"`` for x < 0 (LEBM/LFBM use 0.2).
    :raises ValueError: for an unknown name.
    """
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class MLP(nn.Module):
    """``Linear → act → … → Linear``: maps (..., in_dim) to (..., out_dim).

    No activation after the last layer. With ``hidden_dims=()`` it is a single ``Linear``.
    The LEBM energy network is ``MLP(nz, [200, 200], 1, activation="gelu")``.

    :param int in_dim: input size.
    :param hidden_dims: sizes of the hidden layers, in order.
    :param int out_dim: output size.
    :param str activation: one of ``"gelu"``, ``"relu"``, ``"leaky_relu"``, ``"silu"``.
    :param float negative_slope: slope used when ``activation="leaky_relu"``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation: str = "gelu",
        negative_slope: float = 0.2,
    ):
        super().__init__()
        dims = [int(in_dim), *(int(h) for h in hidden_dims), int(out_dim)]
        if any(d < 1 for d in dims):
            raise ValueError(f"all layer sizes must be positive, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(make_activation(activation, negative_slope))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = dims[0], dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: shape (..., in_dim). :returns: shape (..., out_dim)."""
        return self.net(x)


class AffineConditioner(MLP):
    """An :class:`MLP` read as the shift and log-scale of an affine map: (..., in_dim) →
    ``(shift, log_scale)``, each (..., out_dim), with ``|log_scale| < log_scale_bound``
    (``bound · tanh(raw / bound)``, as the flows' bounded couplings bound theirs).

    Its last layer starts at zero, so the map starts as the identity (shift 0, scale 1): a
    conditional that starts as its unconditioned base, e.g. the layers of
    :class:`~pyro_lfbm.priors.TopDownPrior` and of :class:`~pyro_lfbm.nets.LayerConditionalEncoder`.

    :param int in_dim: size of the conditioning input.
    :param hidden_dims: sizes of the hidden layers.
    :param int out_dim: size of the shifted and scaled variable.
    :param float log_scale_bound: bound on ``|log_scale|``.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, log_scale_bound: float = 5.0,
                 activation: str = "leaky_relu"):
        super().__init__(in_dim, hidden_dims, 2 * int(out_dim), activation=activation)
        if not log_scale_bound > 0:
            raise ValueError(f"log_scale_bound must be positive, got {log_scale_bound!r}")
        self.log_scale_bound = float(log_scale_bound)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor):
        """:param h: shape (..., in_dim). :returns: ``(shift, log_scale)``, each (..., out_dim)."""
        shift, raw = self.net(h).chunk(2, dim=-1)
        return shift, self.log_scale_bound * torch.tanh(raw / self.log_scale_bound)
