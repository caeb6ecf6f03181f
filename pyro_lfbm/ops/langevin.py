"""The Langevin move, written once.

It lives in this low layer (pure tensor code, no Pyro) so that every Langevin-type update of the
package calls the same function: the guide's and the kernel's chains
(:mod:`pyro_lfbm.infer.langevin`, which re-exports it as ``pyro_lfbm.infer.langevin.langevin_move``),
MALA's proposal, the energy prior's negative sampling and CoopFlow's revision.
"""

from __future__ import annotations

from typing import Optional, Union

import torch


def langevin_move(
    z: torch.Tensor,
    grad: torch.Tensor,
    step_size: Union[float, torch.Tensor],
    noise: bool = True,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The Langevin move, written once: z + (s²/2) ∇log p + s ξ, with ξ ~ N(0, I) drawn like ``z``
    (its dtype and device; from ``generator`` when given), or z + (s²/2) ∇log p when ``noise`` is False.

    :param z: current position, any shape.
    :param grad: ∇ log p at ``z``, same shape.
    :param step_size: s, a float or a tensor broadcastable to ``z`` (e.g. one step size per row,
        shaped (R, 1, ..., 1)).
    :returns: the moved position, same shape, dtype and device as ``z``.
    """
    moved = z + (0.5 * step_size**2) * grad
    if noise:
        moved = moved + step_size * _randn_like(z, generator)
    return moved


def _randn_like(z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
