"""Neural networks: image generators g(z), encoders q(z|x) and a small MLP."""

from .encoders import DCGANEncoder32, DCGANEncoder64, ImageEncoder, LayerConditionalEncoder, MNISTEncoder, make_encoder
from .generators import (
    DCGANGenerator32,
    DCGANGenerator64,
    HierarchicalMNISTGenerator,
    ImageGenerator,
    MNISTGenerator,
    init_weights_xavier,
    make_generator,
)
from .energy import ConvEnergy, ResEnergy32, make_energy
from .mlp import ACTIVATIONS, MLP, AffineConditioner, make_activation

__all__ = [
    "ACTIVATIONS",
    "AffineConditioner",
    "ConvEnergy",
    "DCGANEncoder32",
    "DCGANEncoder64",
    "DCGANGenerator32",
    "DCGANGenerator64",
    "HierarchicalMNISTGenerator",
    "ImageEncoder",
    "LayerConditionalEncoder",
    "ImageGenerator",
    "MLP",
    "MNISTEncoder",
    "MNISTGenerator",
    "ResEnergy32",
    "init_weights_xavier",
    "make_activation",
    "make_encoder",
    "make_energy",
    "make_generator",
]
