"""The Langevin move, written once.

It lives in this low layer (pure tensor code, no Pyro) so that every Langevin-type update of the
package calls the same function: the ULA sampler (:class:`pyro_lfbm.infer.samplers.ULA`, the
guide's default chain; :mod:`pyro_lfbm.infer.langevin` re-exports the move as
``pyro_lfbm.infer.langevin.langevin_move``), MALA's proposal, the energy prior's negative sampling
and CoopFlow's revision.

Every standard-normal draw of a chain (its start z₀ and the move's noise ξ) goes through
:func:`standard_normal`, so that data-parallel training can give each example the noise it gets in
a one-process run (:func:`global_batch_noise`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

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


# (rows, total) of the innermost global_batch_noise context
_SHARDS: List[Tuple[torch.Tensor, int]] = []


@contextlib.contextmanager
def global_batch_noise(rows: torch.Tensor, total: int) -> Iterator[None]:
    """Inside this context a process holds only the rows ``rows`` (R,) (int64, distinct, in
    ``[0, total)``) of a global batch of ``total`` examples: every :func:`standard_normal` draw whose
    leading size is R is drawn for all ``total`` rows, from the same generator state, and rows
    ``rows`` of it are returned. Other draws are unchanged.

    Processes whose random number generators are in the same state therefore give each example the
    noise that a single process holding the whole batch gives it, and stay in step (each draws as
    much as the single process). Used by data-parallel training (``pyro_lfbm.train.distributed``).
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    if rows.dim() != 1 or (rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= total)):
        raise ValueError(f"rows must be a vector of row numbers in [0, {total}), got shape {tuple(rows.shape)}")
    _SHARDS.append((rows, int(total)))
    try:
        yield
    finally:
        _SHARDS.pop()


def standard_normal(
    shape: Sequence[int],
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[torch.device, str]] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """ξ ~ N(0, I) of ``shape`` (rows first): ``torch.randn``, or, inside :func:`global_batch_noise`,
    this process's rows of the global batch's draw."""
    shape = torch.Size(shape)
    if _SHARDS and len(shape) > 0 and shape[0] == _SHARDS[-1][0].numel():
        rows, total = _SHARDS[-1]
        full = torch.randn((total,) + shape[1:], dtype=dtype, device=device, generator=generator)
        return full[rows.to(full.device)]
    return torch.randn(shape, dtype=dtype, device=device, generator=generator)


def _randn_like(z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if _SHARDS:
        return standard_normal(z.shape, dtype=z.dtype, device=z.device, generator=generator)
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
