"""The bounded logit map that takes images in [-1, 1] to the real line (RealNVP preprocessing)."""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch.nn import functional as F


class BoundedLogit(TransformModule):
    r"""
    :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha)\,u)` with :math:`u = (x + 1)/2`, mapping
    pixels :math:`x \in [-1, 1]` (including the end points) to :math:`y \in [\pm\operatorname{logit}
    (\alpha)]`; the inverse is :math:`x = 2(\operatorname{sigmoid}(y) - \alpha)/(1 - 2\alpha) - 1`.
    Per pixel, :math:`\log|dy/dx| = \log\frac{1-2\alpha}{2} - \log p - \log(1-p)` with
    :math:`p = \alpha + (1-2\alpha)u`; the log-Jacobian sums it over the (C, H, W) event.
    It has no parameters.

    Shapes: ``x``, ``y`` (..., C, H, W); ``log_abs_det_jacobian`` (...).

    :param float alpha: margin in (0, 0.5) (RealNVP: 0.05).
    """

    domain = constraints.independent(constraints.interval(-1.0, 1.0), 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True

    def __init__(self, alpha: float = 0.05):
        super().__init__(cache_size=0)
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def _p(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha + (1.0 - 2.0 * self.alpha) * (x + 1.0) / 2.0

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        p = self._p(x)
        return torch.log(p) - torch.log1p(-p)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return 2.0 * (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha) - 1.0

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # log p + log(1 - p) = -softplus(-y) - softplus(y), stable for any y.
        per_pixel = math.log((1.0 - 2.0 * self.alpha) / 2.0) + F.softplus(-y) + F.softplus(y)
        return per_pixel.flatten(-3).sum(-1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def bounded_logit(alpha: float = 0.05) -> BoundedLogit:
    """
    Build a :class:`BoundedLogit` transform from pixels in [-1, 1] to logit space.

    :param float alpha: the squeeze away from the bounds, in (0, 0.5).
    """
    return BoundedLogit(alpha)
