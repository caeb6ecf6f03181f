"""Numerical building blocks below every other layer of the package (pure tensor code)."""

from pyro_lfbm.ops.langevin import langevin_move

__all__ = ["langevin_move"]
