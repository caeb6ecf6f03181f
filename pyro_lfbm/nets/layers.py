"""Layers with the mathematics and parameters of a ``torch.nn`` layer and a faster formulation.

:class:`PixelShuffleConvTranspose2d` is a ``ConvTranspose2d`` whose kernel equals its stride
(LFBM's MNIST generator upsamples with kernel 2, stride 2). Then the output patches do not
overlap: every input pixel, a vector of ``C_in`` channels, is mapped by one matrix
(``C_in`` × ``kh·kw·C_out``) to its own ``kh × kw`` output patch. The layer is therefore one
matrix product followed by a pixel shuffle (Shi et al., 2016, "Real-Time Single Image and Video
Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", arXiv:1609.05158),
which runs on the BLAS GEMM instead of a transposed-convolution kernel (on some CPUs and memory
layouts the latter runs at a few GFLOP/s for these shapes).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["PixelShuffleConvTranspose2d"]

# Below this many output columns (kh·kw·C_out) one GEMM over all pixels is too skinny; the
# product is then taken with the pixels as the long dimension (see ``_forward_narrow``).
_WIDE = 32


class PixelShuffleConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=kernel_size)`` computed
    as a matrix product and a pixel shuffle.

    Same parameters (``weight`` of shape (C_in, C_out, kh, kw), ``bias`` of shape (C_out,)), same
    ``state_dict`` keys and the same output as the parent class, up to float rounding:

    .. math:: y[n, o, k_h i + a, k_w j + b] = \\mathrm{bias}[o] + \\sum_c x[n, c, i, j]\\, W[c, o, a, b].

    Only the configuration where output patches do not overlap is accepted: ``stride ==
    kernel_size``, no padding, no output padding, dilation 1, one group, zero padding mode.

    Two formulations, chosen by the output width kh·kw·C_out:

    - wide (≥ 32 columns): pixels as rows, ``(N·H·W, C_in) @ (C_in, kh·kw·C_out)``, one GEMM; the
      output is returned in ``torch.channels_last`` memory format (the shuffle then moves
      contiguous runs of kw·C_out values), which the following BatchNorm/activation/next layer
      accept as is;
    - narrow (e.g. the last layer to one image channel): ``(kh·kw·C_out, C_in) @ (C_in, pixels)``
      so that the pixels are the long GEMM dimension.

    Shapes: ``x`` (N, C_in, H, W) or (C_in, H, W), any memory format → (N, C_out, kh·H, kw·W) or
    (C_out, kh·H, kw·W).

    :param int in_channels: C_in.
    :param int out_channels: C_out.
    :param kernel_size: k or (kh, kw); the stride is the same (``stride=`` may be passed but must
        equal it).
    :param bool bias: learn an additive bias.
    :raises ValueError: for any overlapping configuration (use ``nn.ConvTranspose2d`` for those).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=None, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros",
                 device=None, dtype=None):
        stride = kernel_size if stride is None else stride
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device=device, dtype=dtype)
        if (tuple(self.stride) != tuple(self.kernel_size) or any(self.padding) or any(self.output_padding)
                or any(d != 1 for d in self.dilation) or self.groups != 1 or self.padding_mode != "zeros"):
            raise ValueError(
                "PixelShuffleConvTranspose2d needs stride == kernel_size, padding 0, output_padding 0, "
                f"dilation 1 and groups 1 (non-overlapping patches); got kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
                f"dilation={self.dilation}, groups={self.groups}; use torch.nn.ConvTranspose2d for that layer"
            )

    def forward(self, x: torch.Tensor, output_size: Optional[list] = None) -> torch.Tensor:
        if output_size is not None:  # the parent checks it (non-overlapping: the size is fixed)
            return super().forward(x, output_size)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        kh, kw = self.kernel_size
        if kh * kw * self.out_channels >= _WIDE:
            y = self._forward_wide(x)
        else:
            y = self._forward_narrow(x)
        return y.squeeze(0) if unbatched else y

    def _forward_wide(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        out = self.out_channels
        # weight (C_in, C_out, kh, kw) -> (C_in, kh·kw·C_out), columns ordered (a, b, o)
        weight = self.weight.permute(0, 2, 3, 1).reshape(c, kh * kw * out)
        pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # free for channels_last input
        if self.bias is not None:
            y = torch.addmm(self.bias.repeat(kh * kw), pixels, weight)
        else:
            y = torch.mm(pixels, weight)
        # (N, H, W, kh, kw·C_out) -> (N, H, kh, W, kw·C_out) = (N, kh·H, kw·W, C_out) channels-last
        y = y.view(n, h, w, kh, kw * out).transpose(2, 3).reshape(n, h * kh, w * kw, out)
        return y.permute(0, 3, 1, 2)

    def _forward_narrow(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        out = self.out_channels
        weight = self.weight.reshape(c, out * kh * kw).t()  # (C_out·kh·kw, C_in), rows ordered (o, a, b)
        if x.permute(0, 2, 3, 1).is_contiguous():  # channels_last: pixels (N·H·W, C_in) without a copy
            y = torch.mm(weight, x.permute(0, 2, 3, 1).reshape(n * h * w, c).t())  # (C_out·kh·kw, N·H·W)
            y = y.view(out, kh, kw, n, h, w).permute(3, 0, 4, 1, 5, 2)
        else:
            y = torch.matmul(weight, x.reshape(n, c, h * w))  # (N, C_out·kh·kw, H·W)
            y = y.view(n, out, kh, kw, h, w).permute(0, 1, 4, 2, 5, 3)
        y = y.reshape(n, out, h * kh, w * kw)
        if self.bias is not None:
            y = y + self.bias.view(1, out, 1, 1)
        return y
