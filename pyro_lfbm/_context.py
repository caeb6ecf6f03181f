"""A flag that tells model components they are being evaluated inside posterior inference.

Inside a Langevin chain only gradients with respect to the latents matter, so components
may skip work that only serves parameter learning (the energy prior's negative samples).
"""

from __future__ import annotations

import contextlib
import contextvars

_IN_POSTERIOR_INFERENCE = contextvars.ContextVar("pyro_lfbm_in_posterior_inference", default=False)


@contextlib.contextmanager
def posterior_inference():
    """Mark the enclosed code as latent inference (no parameter gradients are wanted)."""
    token = _IN_POSTERIOR_INFERENCE.set(True)
    try:
        yield
    finally:
        _IN_POSTERIOR_INFERENCE.reset(token)


def in_posterior_inference() -> bool:
    """True inside :func:`posterior_inference`."""
    return _IN_POSTERIOR_INFERENCE.get()
