"""Polyak averaging of the trained weights: an exponential moving average (EMA) kept beside them.

The average follows every update, W̄ ← decay · W̄ + (1 − decay) · W (Polyak and Juditsky, SIAM J.
Control Optim. 1992; the EMA form of :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, whose update
is used here). It leaves training itself untouched: the optimiser steps the live weights, and the
average is read at the end (:meth:`ExponentialAverage.copy_to`). Unlike
:class:`torch.optim.swa_utils.AveragedModel` it keeps tensors, not a deep copy of the module, so
guides that hold compiled chains or the model itself can be averaged too; BatchNorm's running
statistics are averaged with the weights (``use_buffers=True`` there).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["ExponentialAverage", "check_decay"]


def check_decay(decay, name: str = "the averaging decay") -> None:
    """Raise a one-line ``ValueError`` naming ``name`` unless ``decay`` is a number in (0, 1)."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ValueError(f"{name} must be a number in (0, 1), e.g. 0.999 (None: no averaging), got {decay!r}")


class ExponentialAverage:
    """The running average of the floating-point parameters and buffers of ``modules``.

    :param modules: the modules whose state is averaged (their ``state_dict`` entries; integer buffers
        such as BatchNorm's ``num_batches_tracked`` are left alone).
    :param float decay: in (0, 1); the average spans about ``1 / (1 - decay)`` updates.
    :raises ValueError: a decay outside (0, 1), in one line.
    """

    def __init__(self, modules: Sequence[torch.nn.Module], decay: float) -> None:
        check_decay(decay)
        self.decay = float(decay)
        self._update = get_ema_multi_avg_fn(self.decay)
        self.averages: List[Dict[str, torch.Tensor]] = [
            {name: value.detach().clone() for name, value in module.state_dict().items()
             if isinstance(value, torch.Tensor) and value.is_floating_point()}
            for module in modules
        ]

    @torch.no_grad()
    def update(self, modules: Sequence[torch.nn.Module]) -> None:
        """Move the average towards the current state of ``modules`` (the same modules, in the same order)."""
        for average, module in zip(self.averages, modules, strict=True):
            current = module.state_dict()
            names = list(average)
            if names:
                self._update([average[name] for name in names], [current[name].detach() for name in names], None)

    @torch.no_grad()
    def copy_to(self, modules: Sequence[torch.nn.Module]) -> None:
        """Overwrite the floating-point state of ``modules`` with the average."""
        for average, module in zip(self.averages, modules, strict=True):
            module.load_state_dict(average, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        if len(state["averages"]) != len(self.averages):
            raise ValueError(f"the saved average covers {len(state['averages'])} modules, this one {len(self.averages)}")
        for own, saved in zip(self.averages, state["averages"]):
            if own.keys() != saved.keys():
                raise ValueError("the saved average does not fit these modules (different architecture)")
            for name, value in saved.items():
                own[name].copy_(value)
