"""Optional accelerated fast-path Langevin loops: ``torch.compile`` and CUDA graphs.

Both run the same update as :func:`~pyro_lfbm.infer.langevin.short_run_langevin` on a model with
``log_joint(x, z=z) -> (B,)`` (a :class:`~pyro_lfbm.models.LatentModel`),

.. math:: z \\leftarrow z + \\tfrac{s^2}{2}\\nabla_z \\log p(x, z) + s\\,\\xi,

for a single latent site ``z`` of shape (B, D). Small models on a GPU are launch-bound (one
kernel per tiny op); compiling fuses the element-wise work, and a CUDA graph replays a whole
step with one launch. Pyro's argument validation is switched off inside these loops (it
synchronises with the host, which a CUDA graph cannot capture). The model's parameters are
frozen (``requires_grad=False``) while a loop runs, so no parameter gradient is ever formed.

.. note:: :class:`CUDAGraphLangevin` needs a CUDA device and was written without one at hand
   (this project's CI is CPU only); :class:`CompiledLangevin` is tested on the CPU.
"""

from __future__ import annotations

from typing import Optional

import pyro
import torch

from pyro_lfbm.infer.guide import frozen_parameters

__all__ = ["CompiledLangevin", "CUDAGraphLangevin", "frozen_parameters"]


def _noise(z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(z)
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


class CompiledLangevin:
    """Langevin steps whose gradient evaluation is ``torch.compile``-d.

    The model's ``log_joint(x, z=z)`` is compiled (AOTAutograd compiles its backward too; with the
    parameters frozen only the gradient to z is formed); ``torch.autograd.grad`` and the update
    run eagerly, and the noise is drawn eagerly (same random stream as the eager loop when the
    same ``generator`` is passed).

    :param model: has ``log_joint(x, z=z) -> (B,)``.
    :param float step_size: s.
    :param bool noise: False gives gradient ascent.
    :param str backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` to debug).
    :param str mode: ``torch.compile`` mode (e.g. ``"reduce-overhead"`` uses CUDA graphs on GPU).
    """

    def __init__(self, model, step_size: float = 0.1, noise: bool = True, backend: str = "inductor", mode: Optional[str] = None):
        self.model, self.step_size, self.noise = model, float(step_size), noise

        def log_joint(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return model.log_joint(x, z=z)

        self._log_joint = torch.compile(log_joint, backend=backend, mode=mode, dynamic=False)

    def _grad(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._log_joint(x, leaf).sum(), leaf)
        return g

    def grad(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """∇_z log p(x, z), shape of ``z`` (B, D)."""
        with frozen_parameters(self.model), pyro.validation_enabled(False):
            return self._grad(x, z)

    def run(self, x: torch.Tensor, z0: torch.Tensor, num_steps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num_steps`` steps from ``z0`` (B, D) for images ``x`` (B, C, H, W); returns z_K (B, D)."""
        half_sq = 0.5 * self.step_size**2
        z = z0.detach()
        with frozen_parameters(self.model), pyro.validation_enabled(False), torch.no_grad():
            for _ in range(num_steps):
                with torch.enable_grad():
                    g = self._grad(x, z)
                z = z + half_sq * g
                if self.noise:
                    z = z + self.step_size * _noise(z, generator)
        return z


class CUDAGraphLangevin:
    """Langevin steps replayed from one captured CUDA graph (fixed batch shape, CUDA only).

    One replay is one whole step (forward, backward to z, update and fresh noise drawn inside the
    graph), so K steps cost K graph launches. Inputs are copied into static buffers by
    :meth:`run`; a new batch shape needs a new instance.

    :param model: has ``log_joint(x, z=z) -> (B,)``; on a CUDA device, in eval mode.
    :param x_shape: (B, C, H, W) of the images it will serve.
    :param float step_size: s.
    :param bool noise: False gives gradient ascent.
    :param int warmup: eager warm-up steps on a side stream before capture.
    """

    def __init__(self, model, x_shape, step_size: float = 0.1, noise: bool = True, warmup: int = 3):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise RuntimeError("CUDAGraphLangevin needs the model on a CUDA device")
        self.model, self.step_size, self.noise = model, float(step_size), noise
        batch = x_shape[0]
        self.static_x = torch.zeros(tuple(x_shape), device=device)
        self.static_z = torch.zeros(batch, model.latent_dim, device=device)
        half_sq = 0.5 * self.step_size**2

        def step() -> None:
            z = self.static_z.detach().requires_grad_(True)
            log_joint = model.log_joint(self.static_x, z=z)
            (g,) = torch.autograd.grad(log_joint.sum(), z)
            new = self.static_z + half_sq * g
            if noise:
                new = new + self.step_size * torch.randn_like(new)
            self.static_z.copy_(new)

        with frozen_parameters(model), pyro.validation_enabled(False):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                step()

    def run(self, x: torch.Tensor, z0: torch.Tensor, num_steps: int) -> torch.Tensor:
        """``num_steps`` replays from ``z0`` (B, D) for images ``x`` (B, C, H, W); returns z_K (a copy)."""
        self.static_x.copy_(x)
        self.static_z.copy_(z0)
        for _ in range(num_steps):
            self.graph.replay()
        return self.static_z.clone()
