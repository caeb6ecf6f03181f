"""Affine coupling with a sigmoid-bounded scale (the coupling of Glow / LFBM)."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.nn import functional as F

from pyro_lfbm.transforms.last_pass import LastPassMixin


class BoundedAffineCoupling(LastPassMixin, TransformModule):
    r"""
    Affine coupling layer whose scale lies in (0, 1), as in Glow and the LFBM latent flow:

        :math:`\mathbf{y}_{1:d} = \mathbf{x}_{1:d}`,
        :math:`\mathbf{y}_{d+1:D} = (\mathbf{x}_{d+1:D} + \mu) \odot \sigma`,

    where :math:`d` = ``input_dim // 2``, :math:`\mathbf{h} = \mathrm{NN}(\mathbf{x}_{1:d})` has size
    :math:`2(D - d)`, :math:`\mu = \mathbf{h}_{0::2}` and :math:`\sigma = \mathrm{sigmoid}(\mathbf{h}_{1::2}
    + 2)`. The hypernet NN is Linear-ReLU-Linear-ReLU-Linear with the last layer zero-initialised,
    so the layer starts as :math:`\mathbf{y}_{d+1:D} = \mathrm{sigmoid}(2)\,\mathbf{x}_{d+1:D}`.
    :math:`\log|\det J| = \sum \log\sigma` (computed with ``logsigmoid``).

    Caching: Pyro's identity cache is disabled (``cache_size=0``: every call recomputes, so in-place
    edits of inputs can never return stale outputs). Instead, the last ``(x, y, log|det J|)`` computed
    by a forward or inverse pass is kept and returned by :meth:`log_abs_det_jacobian` only if it is
    called with those very tensor objects (``is``), so the usual "transform, then ask for the
    Jacobian" sequence runs the hypernet once. The kept value is consumed by that first matching call
    (and dropped by :meth:`clear_cache`); any other call recomputes.

    Shapes: ``x`` and ``y`` are ``(..., input_dim)``; ``log_abs_det_jacobian`` is ``(...)``.

    Example::

        >>> t = BoundedAffineCoupling(4, hidden_dim=16)
        >>> x = torch.randn(10, 4)
        >>> y = t(x)
        >>> t.log_abs_det_jacobian(x, y).shape
        torch.Size([10])

    :param int input_dim: size D >= 2 of the event.
    :param int hidden_dim: width of the two hidden layers of the hypernet.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, hidden_dim: int = 64):
        super().__init__(cache_size=0)
        if input_dim < 2:
            raise ValueError(f"BoundedAffineCoupling needs input_dim >= 2 to split, got {input_dim}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.input_dim = input_dim
        self.split_dim = input_dim // 2
        out_dim = 2 * (input_dim - self.split_dim)
        self.hypernet = nn.Sequential(
            nn.Linear(self.split_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        nn.init.zeros_(self.hypernet[-1].weight)
        nn.init.zeros_(self.hypernet[-1].bias)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., : self.split_dim], x[..., self.split_dim :]

    def _shift_scale(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:returns: ``(shift, scale, log_scale)``, each ``(..., input_dim - split_dim)``."""
        h = self.hypernet(x1)
        pre = h[..., 1::2] + 2.0
        return h[..., 0::2], torch.sigmoid(pre), F.logsigmoid(pre)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._split(x)
        shift, scale, log_scale = self._shift_scale(x1)
        y = torch.cat([x1, (x2 + shift) * scale], dim=-1)
        self._keep_last(x, y, log_scale.sum(-1))
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._split(y)
        shift, scale, log_scale = self._shift_scale(y1)
        x = torch.cat([y1, y2 / scale - shift], dim=-1)
        self._keep_last(x, y, log_scale.sum(-1))
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:returns: :math:`\\sum \\log\\sigma(\\mathbf{x}_{1:d})`, shape ``x.shape[:-1]``."""
        kept = self._take_last(x, y)
        if kept is not None:
            return kept
        return self._shift_scale(self._split(x)[0])[2].sum(-1)




def bounded_affine_coupling(input_dim: int, hidden_dim: int = 64) -> BoundedAffineCoupling:
    """
    Build a :class:`BoundedAffineCoupling` (near identity at initialisation).

    :param int input_dim: size D >= 2 of the event.
    :param int hidden_dim: width of the hypernet's two hidden layers.
    :rtype: BoundedAffineCoupling
    """
    return BoundedAffineCoupling(input_dim, hidden_dim)
