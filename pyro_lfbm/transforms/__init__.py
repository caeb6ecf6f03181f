"""Learnable bijections used by the flow priors (Pyro ``TransformModule`` subclasses)."""

from pyro_lfbm.transforms.actnorm import ActNorm, actnorm
from pyro_lfbm.transforms.bounded_affine_coupling import BoundedAffineCoupling, bounded_affine_coupling
from pyro_lfbm.transforms.lu_linear import LULinear, lu_linear

__all__ = [
    "ActNorm",
    "BoundedAffineCoupling",
    "LULinear",
    "actnorm",
    "bounded_affine_coupling",
    "lu_linear",
]
