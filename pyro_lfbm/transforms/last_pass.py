"""Reuse of a coupling layer's last log-Jacobian (a mixin for ``TransformModule`` subclasses)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch


class LastPassMixin:
    """Keep the ``(x, y, log|det J|)`` of the last forward or inverse pass.

    ``TransformedDistribution.log_prob`` calls ``log_abs_det_jacobian(x, y)`` right after the
    pass that produced ``y``; a coupling layer would otherwise run its network a second time.
    The kept value is used once, and only when *both* tensors are the very objects of that pass,
    so in-place edits of ``x`` cannot return a stale value (unlike Pyro's identity-keyed cache).
    """

    _last: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def _keep_last(self, x: torch.Tensor, y: torch.Tensor, ladj: torch.Tensor) -> None:
        self._last = (x, y, ladj)

    def _take_last(self, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        """The kept log|det J| for exactly ``(x, y)``, else None; the kept pass is dropped either way."""
        last, self._last = self._last, None
        if last is not None and last[0] is x and last[1] is y:
            return last[2]
        return None

    def clear_cache(self) -> None:
        super().clear_cache()
        self._last = None

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle/deepcopy the kept tensors (non-leaf tensors cannot be deep-copied).
        state = super().__getstate__()
        state["_last"] = None
        return state
