"""Glow's invertible 1×1 convolution: Pyro's ``GeneralizedChannelPermute`` without its cache."""

from __future__ import annotations

from pyro.distributions.transforms import GeneralizedChannelPermute


class InvertibleConv1x1(GeneralizedChannelPermute):
    """
    :class:`pyro.distributions.transforms.GeneralizedChannelPermute` (an LU-parametrised 1×1
    convolution :math:`W = PLU` over the channels of (..., C, H, W) images, log-Jacobian
    :math:`HW\\sum\\log|U_{ii}|`, initialised at a random orthogonal matrix) with Pyro's
    identity cache switched off: Pyro hard-codes ``cache_size=1``, which returns stale values
    when the same input tensor is transformed again after a parameter update.

    :param int channels: C.
    """

    def __init__(self, channels: int):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        super().__init__(channels=channels)
        self._cache_size = 0
        self.channels = channels

    def with_cache(self, cache_size=1):  # keep the cache off (Transform.inv may call this)
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def invertible_conv1x1(channels: int) -> InvertibleConv1x1:
    """
    Build an :class:`InvertibleConv1x1` transform (Glow's 1×1 convolution) on events (C, H, W).

    :param int channels: number of image channels C.
    """
    return InvertibleConv1x1(channels)
