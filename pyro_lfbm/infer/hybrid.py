r"""Hybrid inference: short-run Langevin started at the encoder's mean.

The encoder gives a cheap, amortized guess μ_φ(x); a few Langevin steps on log p(x, z) then
refine it, so the chain starts near the posterior mode instead of at z₀ ~ N(0, I):

.. math:: z_0 = \mu_\phi(x), \qquad z_{k+1} = z_k + \tfrac{s^2}{2}\nabla_z \log p(x, z_k) + s\,\xi_k.

At test time use :func:`hybrid_infer_dataset` (or :class:`HybridGuide` directly). In training,
``SVI(model, HybridGuide(model, encoder_guide), optim, Trace_ELBO())`` learns the model from the
refined z_K (as LFBM's Algorithm 1 does from z_K) and, in the same step, trains the encoder to
predict the refined latents (amortized MCMC): the loss of one step is

.. math:: -\log p_\theta(x, z_K) \;-\; \log q_\phi(z_K \mid x), \qquad z_K \text{ detached},

where the first term moves only the model and the second only the encoder.
"""

from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_lfbm.infer.dataset import InferenceResult, infer_dataset
from pyro_lfbm.infer.encoder_guide import EncoderGuide
from pyro_lfbm.infer.guide import LangevinGuide


class HybridGuide(PyroModule):
    """Short-run Langevin whose chains start at the encoder mean μ_φ(x), as a Pyro guide.

    Its initial state is exactly ``encoder_guide.mean(x, mask)`` (so ``num_steps=0`` returns the
    encoder mean). Called as a guide with the model's arguments ``(x, mask=None)`` it runs the
    chain (a :class:`~pyro_lfbm.infer.LangevinGuide` with ``init=encoder_guide.init_fn``), emits
    the refined latents as ``Delta`` sites in the data plate and, when ``train_encoder`` is true,
    a factor ``-log q_φ(z_K | x)`` (the amortization loss). The encoder guide is a child module,
    so its parameters are registered with Pyro under ``"encoder_guide."`` and checkpointed by
    :func:`~pyro_lfbm.train.svi.fit`; the model is *not* a child (its parameters belong to the model).

    :param model: a :class:`~pyro_lfbm.models.LatentModel` (the encoder guide's latent site(s), in
        ``pyro.plate("data", B)``; several for a :class:`~pyro_lfbm.models.HierarchicalLatentModel`).
    :param EncoderGuide encoder_guide: gives μ_φ(x) and q_φ(z | x).
    :param int num_steps: Langevin refinement steps K (gradient evaluations per image).
    :param float step_size: s.
    :param bool noise: False for gradient ascent on log p(x, z) (test time).
    :param bool train_encoder: add the amortization factor when used as a guide in SVI.

    After each call, :attr:`latents` holds the refined latents ({site: (B, D)}).
    """

    def __init__(
        self,
        model,
        encoder_guide: EncoderGuide,
        num_steps: int = 5,
        step_size: float = 0.1,
        noise: bool = True,
        train_encoder: bool = True,
        use_fast_path: bool = True,
        name: str = "",
    ):
        if not isinstance(encoder_guide, EncoderGuide):
            raise TypeError(f"encoder_guide must be an EncoderGuide, got {type(encoder_guide).__name__}")
        super().__init__(name)
        self.encoder_guide = encoder_guide
        # Not a child module (the state dict keeps only the encoder guide); the model is not one either.
        self.__dict__["langevin"] = LangevinGuide(model, num_steps=num_steps, step_size=step_size, noise=noise,
                                                  init=encoder_guide.init_fn, use_fast_path=use_fast_path)
        self.train_encoder = train_encoder

    @property
    def num_steps(self) -> int:
        return self.langevin.num_steps

    @property
    def latents(self):
        return self.langevin.latents

    def infer(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Run the refinement without emitting Pyro sites; returns {site: z_K (B, D)} (detached)."""
        return self.langevin.infer(x, mask)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        sites = self.encoder_guide.sites
        refined = self.langevin.infer(x, mask)  # {site: z_K (B, d)}, detached
        with pyro.plate("data", x.shape[0]):
            out = {name: pyro.sample(name, dist.Delta(refined[name], event_dim=refined[name].dim() - 1)) for name in sites}
            if self.train_encoder:
                q = self.encoder_guide.distribution(x, mask)
                pyro.factor("amortization", -q.log_prob(torch.cat([out[name] for name in sites], -1)), has_rsample=True)
        return out


def hybrid_infer_dataset(
    model,
    encoder_guide: EncoderGuide,
    x: torch.Tensor,
    *,
    num_steps: int,
    step_size: float = 0.1,
    noise: bool = False,
    batch_size: int = 500,
    progress: bool = True,
) -> InferenceResult:
    """Hybrid inference over a data set x (N, C, H, W): ``num_steps`` Langevin steps from μ_φ(x).

    The reported wall time includes the encoder passes; the gradient evaluations per image are
    ``num_steps``. Models and encoder are used in whatever train/eval mode they are in.
    """
    return infer_dataset(model, x, num_steps=num_steps, step_size=step_size, noise=noise, batch_size=batch_size,
                         init=encoder_guide.init_fn, progress=progress, desc=f"hybrid K={num_steps}")
