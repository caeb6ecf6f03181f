"""Top-down generators g(z): latent vectors (B, latent_dim) to images (B, C, H, W) in [-1, 1].

The architectures are those of the LFBM code (``jianwen-xie/Latent-Space-Normalizing-Flow``):
``_netG_mnist`` for 28×28 MNIST and the DCGAN-style ``_netG`` for 32×32 (SVHN, CIFAR-10) and
64×64 (CelebA) images. Every generator ends in ``tanh`` and accepts any leading batch shape:
``z`` of shape (..., latent_dim) gives images of shape (..., C, H, W).

.. note:: :class:`MNISTGenerator` with ``batch_norm=True`` (its default) has ``BatchNorm1d``
   layers, which in ``train()`` mode raise ``ValueError`` ("Expected more than 1 value per
   channel") on a batch of one z. Use ``eval()`` mode (running statistics) for batch size 1.
   The DCGAN generators only normalise maps of ≥ 4×4, so batch size 1 works in both modes.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_lfbm.nets.layers import PixelShuffleConvTranspose2d

__all__ = [
    "init_weights_xavier",
    "ImageGenerator",
    "MNISTGenerator",
    "HierarchicalMNISTGenerator",
    "DCGANGenerator32",
    "DCGANGenerator64",
    "make_generator",
]


def init_weights_xavier(module: nn.Module) -> None:
    """LFBM's ``weights_init_xavier``, for use with ``net.apply(init_weights_xavier)``.

    Xavier-normal weights on (transposed) convolutions; BatchNorm weight ~ N(1, 0.02²) and
    bias 0. ``Linear`` layers and convolution biases keep PyTorch's default initialisation.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ImageGenerator(nn.Module):
    """Base class: subclasses define :meth:`decode` on a flat batch (N, latent_dim).

    :ivar int latent_dim: size of z.
    :ivar tuple image_shape: (C, H, W) of the output images.
    """

    latent_dim: int
    image_shape: tuple[int, int, int]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map z of shape (N, latent_dim) to images of shape (N, C, H, W)."""
        raise NotImplementedError

    # The pixels in the order the generator computes them. A per-pixel likelihood summed over the
    # image does not depend on the order of the pixels, so an inference chain may compare
    # ``decode_native(z)`` with ``to_native_order(x)`` (reordered once per chain) and skip the
    # generator's final pixel shuffles in every forward and backward pass. Here: the image order.

    @property
    def native_shape(self) -> tuple:
        """Shape of one image in the generator's native pixel order (default: ``image_shape``)."""
        return tuple(self.image_shape)

    def to_native_order(self, images: torch.Tensor) -> torch.Tensor:
        """Images (..., C, H, W) → the same pixels in native order, ``(..., *native_shape)``."""
        return images

    def decode_native(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) → ``to_native_order(decode(z))``, shape ``(N, *native_shape)``."""
        return self.decode(z)

    def forward(self, z: torch.Tensor, *, native_order: bool = False) -> torch.Tensor:
        """Decode latents into images.

        :param z: shape (..., latent_dim).
        :param native_order: return the pixels in the generator's native order (see :meth:`to_native_order`).
        :returns: images, shape (..., C, H, W) (or ``(..., *native_shape)``), in [-1, 1].
        """
        if z.dim() < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"expected z of shape (..., {self.latent_dim}), got {tuple(z.shape)}")
        batch_shape = z.shape[:-1]
        flat = z.reshape(-1, self.latent_dim)
        if native_order:
            return self.decode_native(flat).reshape(*batch_shape, *self.native_shape)
        return self.decode(flat).reshape(*batch_shape, *self.image_shape)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, image_shape={self.image_shape}"


class MNISTGenerator(ImageGenerator):
    """LFBM's MNIST generator (``_netG_mnist``), z (B, latent_dim) → x (B, 1, 28, 28).

    ``Linear(latent→hidden)–BN1d–ReLU → Linear(hidden→channels·7·7)–BN1d–ReLU → reshape
    (channels, 7, 7) → ConvT(channels→channels//2, k2, s2)–BN2d–ReLU → ConvT(channels//2→1,
    k2, s2) → Tanh``. The defaults are the paper's sizes (6,498,113 parameters).

    The two kernel-2, stride-2 transposed convolutions are
    :class:`~pyro_lfbm.nets.layers.PixelShuffleConvTranspose2d` (a matrix product and a pixel
    shuffle): the same parameters, ``state_dict`` and outputs as ``nn.ConvTranspose2d``, faster.

    :param int latent_dim: size of z (paper: 20).
    :param int hidden_dim: width of the first hidden layer; ``0`` drops that layer (z maps
        straight to ``channels·7·7``).
    :param int channels: feature channels at 7×7 (halved at 14×14); even, ≥ 2.
    :param bool batch_norm: keep the BatchNorm layers (paper: yes). See the module note on
        batch size 1 in train mode.
    """

    def __init__(
        self,
        latent_dim: int = 20,
        hidden_dim: int = 1024,
        channels: int = 128,
        batch_norm: bool = True,
    ):
        super().__init__()
        if latent_dim < 1 or hidden_dim < 0 or channels < 2 or channels % 2:
            raise ValueError(
                f"need latent_dim >= 1, hidden_dim >= 0 and an even channels >= 2; got "
                f"latent_dim={latent_dim}, hidden_dim={hidden_dim}, channels={channels}"
            )
        self.latent_dim, self.image_shape = latent_dim, (1, 28, 28)
        self.hidden_dim, self.channels, self.batch_norm = hidden_dim, channels, batch_norm

        def bn1d(n: int) -> nn.Module:
            return nn.BatchNorm1d(n) if batch_norm else nn.Identity()

        fc: list[nn.Module] = []
        d_in = latent_dim
        if hidden_dim > 0:
            fc += [nn.Linear(latent_dim, hidden_dim), bn1d(hidden_dim), nn.ReLU()]
            d_in = hidden_dim
        fc += [nn.Linear(d_in, channels * 7 * 7), bn1d(channels * 7 * 7), nn.ReLU()]
        self.fc = nn.Sequential(*fc)
        self.deconv = nn.Sequential(
            PixelShuffleConvTranspose2d(channels, channels // 2, 2, stride=2),
            nn.BatchNorm2d(channels // 2) if batch_norm else nn.Identity(),
            nn.ReLU(),
            PixelShuffleConvTranspose2d(channels // 2, 1, 2, stride=2),
            nn.Tanh(),
        )
        self.apply(init_weights_xavier)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.channels, 7, 7)
        return self.deconv(h)

    # Native order: the two kernel-2, stride-2 upsamplings give every cell (i, j) of the 7×7 map
    # its own 4×4 output patch, pixel (4i + 2a₁ + a₂, 4j + 2b₁ + b₂) for the sub-pixel offsets
    # (a₁, b₁) of the first and (a₂, b₂) of the second layer. Kept as (sub-pixel, channel) rows
    # by 49 cell columns, each upsampling is one matrix product per image on the previous layer's
    # output as it lies in memory (channels × cells, the layout of the fully connected part): no
    # pixel shuffle and no transposed copy in the forward or the backward pass.

    @property
    def native_shape(self) -> tuple:
        """(16, 49): the 16 pixels of each cell's 4×4 patch, in the order (a₁, b₁, a₂, b₂), by the 7×7 cells."""
        return (16, 49)

    def to_native_order(self, images: torch.Tensor) -> torch.Tensor:
        """Images (..., 1, 28, 28) → (..., 16, 49), the pixel order of :meth:`decode_native`."""
        if tuple(images.shape[-3:]) != self.image_shape:
            raise ValueError(f"expected images of shape (..., 1, 28, 28), got {tuple(images.shape)}")
        lead = images.shape[:-3]
        # rows 4i + 2a1 + a2, columns 4j + 2b1 + b2  ->  (a1, b1, a2, b2, i, j)
        cells = images.reshape(*lead, 7, 2, 2, 7, 2, 2)
        n = len(lead)
        order = [*range(n), n + 1, n + 4, n + 2, n + 5, n, n + 3]
        return cells.permute(order).reshape(*lead, 16, 49)

    def decode_native(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) → the image in native order (N, 16, 49); the same parameters,
        BatchNorm statistics and values as :meth:`decode` (up to float rounding)."""
        n, c = z.shape[0], self.channels
        up1, norm, act, up2, out = self.deconv
        h = self.fc(z).view(n, c, 49)  # channels × cells
        # first upsampling: (C, C/2, 2, 2) as a (2·2·C/2, C) matrix, rows (a1, b1, channel)
        w1 = up1.weight.permute(2, 3, 1, 0).reshape(4 * (c // 2), c)
        h = torch.matmul(w1, h)  # (N, 2C, 49)
        if up1.bias is not None:
            h = h + up1.bias.repeat(4).view(-1, 1)
        h = act(norm(h.view(n * 4, c // 2, 49, 1))).view(n, 4 * (c // 2), 49)  # BatchNorm2d per channel
        # second upsampling, one (2·2, C/2) block per first-layer sub-pixel: rows (a1, b1, a2, b2)
        w2 = up2.weight.reshape(c // 2, 4).t()
        h = torch.matmul(torch.block_diag(w2, w2, w2, w2), h)  # (N, 16, 49)
        if up2.bias is not None:
            h = h + up2.bias
        return out(h)


class HierarchicalMNISTGenerator(ImageGenerator):
    """A top-down MNIST generator with latents injected at three layers, z = (z₁, z₂, z₃) → x (B, 1, 28, 28).

    As in ladder / hierarchical VAEs and the hierarchical generator of Cui, Wu & Han (ICCV 2023),
    the top latent z₁ (B, d₁) drives the fully connected part and the lower latents enter at the
    feature maps: z₂ (B, d₂) through a linear map added to the 7×7 map, z₃ (B, d₃) through a
    linear map added to the 14×14 map::

        h₇  = ReLU(BN(Linear(hidden→C·7·7)(ReLU(BN(Linear(d₁→hidden)(z₁)))) + Linear(d₂→C·7·7)(z₂)))
        h₁₄ = ReLU(BN2d(ConvT(C→C/2, k2, s2)(h₇) + Linear(d₃→C/2·14·14)(z₃)))
        x   = Tanh(ConvT(C/2→1, k2, s2)(h₁₄))

    It is an :class:`ImageGenerator` over the concatenation z = [z₁, z₂, z₃] (``latent_dim =
    d₁ + d₂ + d₃``): ``decode`` splits it, so the joint flow prior, the encoder and the chains see
    one vector and :class:`~pyro_lfbm.models.HierarchicalLatentModel` gives each layer its own
    Pyro site. Only the injections are added to :class:`MNISTGenerator`'s layers (the same sizes:
    ``hidden_dim`` 0 drops the first hidden layer).

    :param tuple layer_dims: (d₁, d₂, d₃), top first, each ≥ 1.
    :param int hidden_dim: width of the first hidden layer (0: none).
    :param int channels: feature channels at 7×7 (halved at 14×14); even, ≥ 2.
    :param bool batch_norm: keep the BatchNorm layers.
    """

    def __init__(self, layer_dims=(20, 10, 10), hidden_dim: int = 1024, channels: int = 128, batch_norm: bool = True):
        super().__init__()
        dims = tuple(layer_dims)
        if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"layer_dims must be three positive integers (top, 7x7, 14x14), got {layer_dims!r}")
        if hidden_dim < 0 or channels < 2 or channels % 2:
            raise ValueError(f"need hidden_dim >= 0 and an even channels >= 2; got hidden_dim={hidden_dim}, channels={channels}")
        self.layer_dims, self.latent_dim, self.image_shape = dims, sum(dims), (1, 28, 28)
        self.hidden_dim, self.channels, self.batch_norm = hidden_dim, channels, batch_norm
        c = channels
        fc: list[nn.Module] = []
        d_in = dims[0]
        if hidden_dim > 0:
            fc += [nn.Linear(dims[0], hidden_dim), nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity(), nn.ReLU()]
            d_in = hidden_dim
        fc.append(nn.Linear(d_in, c * 49))
        self.fc = nn.Sequential(*fc)
        self.inject7 = nn.Linear(dims[1], c * 49)
        self.norm7 = nn.BatchNorm1d(c * 49) if batch_norm else nn.Identity()
        self.up14 = PixelShuffleConvTranspose2d(c, c // 2, 2, stride=2)
        self.inject14 = nn.Linear(dims[2], (c // 2) * 196)
        self.norm14 = nn.BatchNorm2d(c // 2) if batch_norm else nn.Identity()
        self.up28 = PixelShuffleConvTranspose2d(c // 2, 1, 2, stride=2)
        self.apply(init_weights_xavier)

    def split(self, z: torch.Tensor) -> tuple:
        """z (..., d₁ + d₂ + d₃) → (z₁, z₂, z₃), views of shapes (..., d_l)."""
        return tuple(z.split(self.layer_dims, dim=-1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2, z3 = self.split(z)
        c = self.channels
        h = torch.relu(self.norm7(self.fc(z1) + self.inject7(z2))).view(-1, c, 7, 7)
        h = self.up14(h) + self.inject14(z3).view(-1, c // 2, 14, 14)
        return torch.tanh(self.up28(torch.relu(self.norm14(h))))

    def extra_repr(self) -> str:
        return f"layer_dims={self.layer_dims}, image_shape={self.image_shape}"


def _up_block(c_in: int, c_out: int, k: int, s: int, p: int, batch_norm: bool) -> list[nn.Module]:
    """``ConvT(c_in→c_out, k, s, p)[–BN2d]–LeakyReLU(0.2)``; the ConvT has no bias under BN."""
    return [
        nn.ConvTranspose2d(c_in, c_out, k, s, p, bias=not batch_norm),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        nn.LeakyReLU(0.2),
    ]


class DCGANGenerator32(ImageGenerator):
    """LFBM's 32×32 generator (``_netG``), z (B, latent_dim) → x (B, channels, 32, 32).

    z is viewed as (B, latent_dim, 1, 1); LeakyReLU(0.2); no BatchNorm by default; Tanh output.

    - ``variant="svhn"``: ConvT(nz→8ngf, 4, 1, 0) → 4×4, ConvT(8→4ngf, 4, 2, 1) → 8×8,
      ConvT(4→2ngf, 4, 2, 1) → 16×16, ConvT(2ngf→C, 4, 2, 1) → 32×32 (paper: nz 100, ngf 64).
    - ``variant="cifar"``: ConvT(nz→8ngf, 8, 1, 0) → 8×8, ConvT(8→4ngf, 4, 2, 1) → 16×16,
      ConvT(4→2ngf, 4, 2, 1) → 32×32, ConvT(2ngf→C, 3, 1, 1) (paper: nz 128, **ngf 128**).

    :param int latent_dim: size of z.
    :param int ngf: base number of feature maps.
    :param int channels: image channels C.
    :param str variant: ``"svhn"`` or ``"cifar"``.
    :param bool batch_norm: add BatchNorm2d after each hidden ConvT (LFBM ``--g_batchnorm``).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        ngf: int = 64,
        channels: int = 3,
        variant: str = "svhn",
        batch_norm: bool = False,
    ):
        super().__init__()
        if variant not in ("svhn", "cifar"):
            raise ValueError(f"variant must be 'svhn' or 'cifar', got {variant!r}")
        self.latent_dim, self.image_shape = latent_dim, (channels, 32, 32)
        self.ngf, self.variant = ngf, variant
        if variant == "svhn":
            first_k, last = 4, nn.ConvTranspose2d(2 * ngf, channels, 4, 2, 1)
        else:
            first_k, last = 8, nn.ConvTranspose2d(2 * ngf, channels, 3, 1, 1)
        self.gen = nn.Sequential(
            *_up_block(latent_dim, 8 * ngf, first_k, 1, 0, batch_norm),
            *_up_block(8 * ngf, 4 * ngf, 4, 2, 1, batch_norm),
            *_up_block(4 * ngf, 2 * ngf, 4, 2, 1, batch_norm),
            last,
            nn.Tanh(),
        )
        self.apply(init_weights_xavier)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen(z.view(-1, self.latent_dim, 1, 1))


class DCGANGenerator64(ImageGenerator):
    """LFBM's 64×64 CelebA generator (``_netG``), z (B, latent_dim) → x (B, channels, 64, 64).

    ConvT(nz→8ngf, 4, 1, 0) → 4×4, then ConvT(·, 4, 2, 1) to 4ngf@8, 2ngf@16, ngf@32 and
    C@64; LeakyReLU(0.2), no BatchNorm by default, Tanh (paper: nz 100, ngf 128).

    :param int latent_dim: size of z.
    :param int ngf: base number of feature maps.
    :param int channels: image channels C.
    :param bool batch_norm: add BatchNorm2d after each hidden ConvT.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        ngf: int = 128,
        channels: int = 3,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.latent_dim, self.image_shape = latent_dim, (channels, 64, 64)
        self.ngf = ngf
        self.gen = nn.Sequential(
            *_up_block(latent_dim, 8 * ngf, 4, 1, 0, batch_norm),
            *_up_block(8 * ngf, 4 * ngf, 4, 2, 1, batch_norm),
            *_up_block(4 * ngf, 2 * ngf, 4, 2, 1, batch_norm),
            *_up_block(2 * ngf, ngf, 4, 2, 1, batch_norm),
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1),
            nn.Tanh(),
        )
        self.apply(init_weights_xavier)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen(z.view(-1, self.latent_dim, 1, 1))


def make_generator(image_shape: tuple[int, int, int], latent_dim: int, **kwargs) -> ImageGenerator:
    """Pick the generator for an image shape (C, H, W).

    ``(1, 28, 28)`` → :class:`MNISTGenerator`; ``(C, 32, 32)`` → :class:`DCGANGenerator32`;
    ``(C, 64, 64)`` → :class:`DCGANGenerator64`. ``kwargs`` go to the constructor (e.g.
    ``hidden_dim``/``channels`` for MNIST, ``ngf``/``variant``/``batch_norm`` for DCGAN); the
    image channels of the DCGAN generators come from ``image_shape``.

    :raises ValueError: for any other shape.
    """
    shape = tuple(int(s) for s in image_shape)
    if shape == (1, 28, 28):
        return MNISTGenerator(latent_dim, **kwargs)
    if len(shape) == 3 and shape[1:] in ((32, 32), (64, 64)):
        if "channels" in kwargs:
            raise ValueError("DCGAN generators take their image channels from image_shape")
        cls = DCGANGenerator32 if shape[1] == 32 else DCGANGenerator64
        return cls(latent_dim, channels=shape[0], **kwargs)
    raise ValueError(
        f"no generator for image shape {shape}; supported: (1, 28, 28), (C, 32, 32), (C, 64, 64)"
    )
