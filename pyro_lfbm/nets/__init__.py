"""Neural networks: image generators g(z), encoders q(z|x) and a small MLP."""

from .encoders import DCGANEncoder32, DCGANEncoder64, ImageEncoder, MNISTEncoder, make_encoder
from .generators import (
    DCGANGenerator32,
    DCGANGenerator64,
    ImageGenerator,
    MNISTGenerator,
    init_weights_xavier,
    make_generator,
)
from .mlp import ACTIVATIONS, MLP, make_activation

__all__ = [
    "ACTIVATIONS",
    "DCGANEncoder32",
    "DCGANEncoder64",
    "DCGANGenerator32",
    "DCGANGenerator64",
    "ImageEncoder",
    "ImageGenerator",
    "MLP",
    "MNISTEncoder",
    "MNISTGenerator",
    "init_weights_xavier",
    "make_activation",
    "make_encoder",
    "make_generator",
]
