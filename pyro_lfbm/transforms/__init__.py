"""Learnable bijections used by the flow priors (Pyro ``TransformModule`` subclasses)."""

from pyro_lfbm.transforms.actnorm import ActNorm, actnorm
from pyro_lfbm.transforms.actnorm2d import ActNorm2d, actnorm2d
from pyro_lfbm.transforms.affine_coupling2d import AffineCoupling2d, affine_coupling2d
from pyro_lfbm.transforms.bounded_affine_coupling import BoundedAffineCoupling, bounded_affine_coupling
from pyro_lfbm.transforms.invertible_conv import InvertibleConv1x1, invertible_conv1x1
from pyro_lfbm.transforms.logit import BoundedLogit, bounded_logit
from pyro_lfbm.transforms.lu_linear import LULinear, lu_linear
from pyro_lfbm.transforms.squeeze import Squeeze2d, squeeze2d

__all__ = [
    "ActNorm",
    "ActNorm2d",
    "AffineCoupling2d",
    "BoundedAffineCoupling",
    "BoundedLogit",
    "InvertibleConv1x1",
    "LULinear",
    "Squeeze2d",
    "actnorm",
    "actnorm2d",
    "affine_coupling2d",
    "bounded_affine_coupling",
    "bounded_logit",
    "invertible_conv1x1",
    "lu_linear",
    "squeeze2d",
]
