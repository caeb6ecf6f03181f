"""Affine coupling on images, with a channel or checkerboard split (RealNVP / Glow)."""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.nn import functional as F

from pyro_lfbm.transforms.last_pass import LastPassMixin

MASKS = ("channel", "checkerboard")


class AffineCoupling2d(LastPassMixin, TransformModule):
    r"""
    Affine coupling on (..., C, H, W) images with a sigmoid-bounded scale (as in Glow and in
    :class:`~pyro_lfbm.transforms.BoundedAffineCoupling`). A binary mask :math:`m` picks the
    conditioning half; the other half is moved:

        :math:`y = m \odot x + (1 - m) \odot (x + \mu) \odot \sigma`,
        :math:`(\mu, \sigma) = (h_\mu, \mathrm{sigmoid}(h_s + 2))`, :math:`h = \mathrm{NN}(m \odot x)`,

    so :math:`\log|\det J| = \sum (1 - m) \odot \log\sigma`. ``mask="channel"`` conditions on the
    first ``C // 2`` channels (the network sees only those, C >= 2); ``mask="checkerboard"``
    conditions on the pixels with ``(h + w) % 2 == parity`` (the network sees the masked image, any
    C). ``parity=1`` swaps the halves (for ``"channel"``: conditions on the last ``C - C // 2``).

    NN is Conv3×3–ReLU–Conv1×1–ReLU–Conv3×3 with the last convolution zero-initialised, so the
    layer starts as :math:`y = m \odot x + (1 - m) \odot \mathrm{sigmoid}(2)\,x`.

    Shapes: ``x``, ``y`` (..., C, H, W) (leading dims are flattened for the convolutions);
    ``log_abs_det_jacobian`` (...).

    :param int channels: C.
    :param int hidden_channels: width of the network.
    :param str mask: ``"channel"`` or ``"checkerboard"``.
    :param int parity: 0 or 1, which half conditions.
    """

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    bijective = True

    def __init__(self, channels: int, hidden_channels: int = 64, mask: str = "channel", parity: int = 0):
        super().__init__(cache_size=0)
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if mask == "channel" and channels < 2:
            raise ValueError(f"a channel-split coupling needs channels >= 2, got {channels}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.channels, self.hidden_channels, self.mask, self.parity = channels, hidden_channels, mask, parity
        if mask == "channel":
            half = channels // 2
            self.cond_slice = slice(0, half) if parity == 0 else slice(half, channels)
            self.move_slice = slice(half, channels) if parity == 0 else slice(0, half)
            c_in = self.cond_slice.stop - self.cond_slice.start
            c_out = self.move_slice.stop - self.move_slice.start
        else:
            c_in = c_out = channels
        self.net = nn.Sequential(
            nn.Conv2d(c_in, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, 2 * c_out, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _checkerboard(self, like: torch.Tensor) -> torch.Tensor:
        """The (1, H, W) mask m: 1 where the pixel conditions."""
        h, w = like.shape[-2:]
        grid = torch.arange(h, device=like.device)[:, None] + torch.arange(w, device=like.device)[None, :]
        return ((grid % 2) == self.parity).to(like.dtype)[None]

    def _params(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:returns: ``(shift, log_scale)`` of the moved part, from the conditioning input."""
        batch = cond.shape[:-3]
        h = self.net(cond.reshape(-1, *cond.shape[-3:]))
        h = h.reshape(*batch, *h.shape[-3:])
        return h[..., 0::2, :, :], F.logsigmoid(h[..., 1::2, :, :] + 2.0)

    def _transform(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "channel":
            cond, moved = x[..., self.cond_slice, :, :], x[..., self.move_slice, :, :]
            shift, log_scale = self._params(cond)
            out = moved / log_scale.exp() - shift if inverse else (moved + shift) * log_scale.exp()
            parts = (cond, out) if self.parity == 0 else (out, cond)
            return torch.cat(parts, dim=-3), log_scale.flatten(-3).sum(-1)
        m = self._checkerboard(x)
        shift, log_scale = self._params(x * m)
        shift, log_scale = shift * (1 - m), log_scale * (1 - m)
        out = x / log_scale.exp() - shift if inverse else (x + shift) * log_scale.exp()
        return m * x + (1 - m) * out, log_scale.flatten(-3).sum(-1)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, ladj = self._transform(x, inverse=False)
        self._keep_last(x, y, ladj)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x, ladj = self._transform(y, inverse=True)
        self._keep_last(x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:returns: :math:`\\sum (1-m)\\log\\sigma`, shape ``x.shape[:-3]`` (reuses the last pass on ``x, y``)."""
        kept = self._take_last(x, y)
        if kept is not None:
            return kept
        return self._transform(x, inverse=False)[1]



    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden_channels={self.hidden_channels}, mask={self.mask!r}, parity={self.parity}"


def affine_coupling2d(channels: int, hidden_channels: int = 64, mask: str = "channel", parity: int = 0) -> AffineCoupling2d:
    """
    Build an :class:`AffineCoupling2d` transform on events (C, H, W).

    :param int channels: number of image channels C.
    :param int hidden_channels: width of the convolutional conditioner.
    :param str mask: ``"channel"`` (split the channels) or ``"checkerboard"``.
    :param int parity: which half is transformed (0 or 1).
    """
    return AffineCoupling2d(channels, hidden_channels, mask=mask, parity=parity)
