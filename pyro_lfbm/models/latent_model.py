"""The joint p(x, z) = p_α(z) p_β(x | z) as a Pyro model."""

from __future__ import annotations

from typing import Optional

import torch
import pyro
import pyro.distributions as dist
from torch import nn
from pyro.nn import PyroModule
from pyro.poutine.util import is_validation_enabled

from pyro_lfbm.ops.bernoulli import bernoulli_log_likelihood, bernoulli_pixel_log_prob
from pyro_lfbm.ops.gaussian import gaussian_log_likelihood
from pyro_lfbm.priors.base import LatentPrior

#: The pixel likelihoods p_β(x | z) of :class:`LatentModel`: ``"gaussian"``, N(g(z), σ²) per pixel; ``"bernoulli"``,
#: :class:`PixelBernoulli` (ink probability (g(z) + 1)/2 per pixel; σ is not used).
PIXEL_LIKELIHOODS = ("gaussian", "bernoulli")


def check_pixel_likelihood(name: str) -> str:
    """``name`` if it is one of :data:`PIXEL_LIKELIHOODS`, else a one-line ``ValueError`` listing them."""
    if name not in PIXEL_LIKELIHOODS:
        raise ValueError(f"unknown pixel_likelihood {name!r}; choose one of {', '.join(PIXEL_LIKELIHOODS)}")
    return name


class PixelBernoulli(dist.TorchDistribution):
    """Independent Bernoulli pixels on images in [−1, 1]: a pixel x has ink probability p = (x + 1)/2 and the
    model's μ = g(z) gives q = (μ + 1)/2; ``log_prob(x)`` is p log q + (1 − p) log(1 − q) per pixel
    (:func:`~pyro_lfbm.ops.bernoulli_pixel_log_prob`, which also explains the grey pixels). ``sample()`` draws
    pixels in {−1, 1}. Batch shape: ``mean.shape``; no event dimensions (use ``.to_event``).

    :param mean: μ in [−1, 1], any shape.
    """

    arg_constraints = {"loc": dist.constraints.interval(-1.0, 1.0)}
    support = dist.constraints.interval(-1.0, 1.0)
    has_rsample = False

    def __init__(self, mean: torch.Tensor, validate_args=None):
        self.loc = mean
        super().__init__(mean.shape, torch.Size(), validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PixelBernoulli, _instance)
        new.loc = self.loc.expand(batch_shape)
        super(PixelBernoulli, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return bernoulli_pixel_log_prob(value, self.loc)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            probs = ((self.loc + 1) / 2).expand(self._extended_shape(sample_shape))
            return 2 * torch.bernoulli(probs) - 1


class LatentModel(PyroModule):
    r"""A deep latent-variable model with a Gaussian (or Bernoulli) pixel likelihood.

    .. math:: z \sim p_\alpha(z), \qquad x = g_\beta(z) + \sigma\,\epsilon.

    Calling ``model(x, mask=None)`` runs the Pyro model: a ``pyro.plate("data", B)`` over the
    batch, ``z = pyro.sample("z", prior.dist())`` and
    ``pyro.sample("x", Normal(g(z), sigma).mask(mask).to_event(3), obs=x)`` (with
    ``pixel_likelihood="bernoulli"``, :class:`PixelBernoulli` ``(g(z))`` instead of the Normal). Masked pixels
    (``mask == 0``) contribute nothing to the likelihood. ``x`` must end in the generator's
    ``image_shape`` (C, H, W) and ``mask`` must be bool or 0/1 and broadcast to ``x``; otherwise
    ``forward``, ``log_joint`` and ``log_joint_terms`` raise one ``ValueError`` naming the
    expected shape (a generator without ``image_shape`` is not checked).

    :param LatentPrior prior: p_α(z) over R^D (:class:`~pyro_lfbm.priors.FlowPrior`, ...).
    :param torch.nn.Module generator: g_β, maps (B, D) to (B, C, H, W).
    :param float sigma: standard deviation σ of the pixel noise (paper: 0.3); the Gaussian likelihood's only.
    :param str pixel_likelihood: one of :data:`PIXEL_LIKELIHOODS` (``"gaussian"``, the paper's).

    Example::

        >>> prior = FlowPrior(latent_dim=16)
        >>> model = LatentModel(prior, MNISTGenerator(16, hidden_dim=128, channels=32))
        >>> guide = LangevinGuide(model, num_steps=20, step_size=0.1)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 4e-4}), pyro.infer.Trace_ELBO())
        >>> loss = svi.step(x)      # x: (B, 1, 28, 28) in [-1, 1]; one step of Algorithm 1
    """

    #: The pixel likelihood (a class attribute as well, so that models pickled before there was a choice load as
    #: Gaussian ones).
    pixel_likelihood = "gaussian"

    def __init__(self, prior: LatentPrior, generator: nn.Module, sigma: float = 0.3, name: str = "", *,
                 pixel_likelihood: str = "gaussian"):
        super().__init__(name)
        if not isinstance(prior, LatentPrior):
            raise TypeError(f"prior must be a pyro_lfbm LatentPrior, got {type(prior).__name__}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.prior = prior
        self.generator = generator
        self.sigma = float(sigma)
        self.pixel_likelihood = check_pixel_likelihood(pixel_likelihood)

    #: The latent Pyro sites, in the order of the concatenated z (one here; several in
    #: :class:`~pyro_lfbm.models.HierarchicalLatentModel`).
    latent_sites = ("z",)

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def split_latents(self, z: torch.Tensor) -> dict:
        """z (B, D) → ``{site: value}`` (here ``{"z": z}``)."""
        return {"z": z}

    def join_latents(self, latents: dict) -> torch.Tensor:
        """``{site: value}`` (a guide's latents) → z (B, D) (here ``latents["z"]``)."""
        return latents["z"]

    def likelihood(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dist.Distribution:
        """p_β(x | z) with event shape (C, H, W) and batch shape (B,); ``mask`` (B or 1, C, H, W)
        of 0/1 (or bool) removes pixels before the event dimensions are summed."""
        mean = self.generator(z)
        likelihood = PixelBernoulli(mean) if self.pixel_likelihood == "bernoulli" else dist.Normal(mean, self.sigma)
        if mask is not None:
            likelihood = likelihood.mask(mask.bool())
        return likelihood.to_event(mean.dim() - (z.dim() - 1))  # every output dim beyond z's batch dims

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The Pyro model. ``x``: (B, C, H, W) observed images; returns z of shape (B, D)."""
        _check_images(x, mask, getattr(self.generator, "image_shape", None))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior.dist())
            pyro.sample("x", self.likelihood(z, mask), obs=x)
        return z

    def log_joint(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, *, z: torch.Tensor) -> torch.Tensor:
        """Per-example log p(x, z) = log p_α(z) + log p_β(x | z), shape (B,), without Pyro handlers.

        Equal to the per-example log probability of a trace of ``self(x, mask)`` with ``z``
        conditioned; this is the fast path that :class:`~pyro_lfbm.infer.LangevinGuide` uses. The
        likelihood is computed without distribution objects (:meth:`pixel_log_likelihood`, the same float
        operations as ``self.likelihood(z, mask).log_prob(x)``).
        """
        return self.prior.log_prob(z) + self._log_likelihood(x, z, mask)

    def _log_likelihood(self, x: torch.Tensor, z: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """log p_β(x | z) per example (B,), after the shape checks."""
        _check_images(x, mask, getattr(self.generator, "image_shape", None))
        mean = self.generator(z)
        return self.pixel_log_likelihood(x, mean, mask, event_dim=mean.dim() - (z.dim() - 1))

    def pixel_log_likelihood(self, x: torch.Tensor, mean: torch.Tensor, mask: Optional[torch.Tensor] = None,
                             event_dim: int = 3) -> torch.Tensor:
        """log p_β(x | z) per example from the generator's output ``mean`` = g(z), as plain tensor code (what the
        fused chains of :mod:`pyro_lfbm.infer.accelerate` differentiate): x and mean (B, C, H, W) (or the
        generator's native pixel order), ``mask`` as in :meth:`likelihood`; returns (B,)."""
        if self.pixel_likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, mean, mask, event_dim)
        return gaussian_log_likelihood(x, mean, self.sigma, mask, event_dim)

    def log_joint_terms(self, x: torch.Tensor, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict:
        """The two parts of the log joint, each (B,): ``{"prior": log p_α(z), "likelihood": log p_β(x|z)}``."""
        return {"prior": self.prior.log_prob(z), "likelihood": self._log_likelihood(x, z, mask)}

    @torch.no_grad()
    def sample(self, num_samples: int, noise: bool = False) -> torch.Tensor:
        """Synthesis: z ~ p_α, x = g(z) (a draw of p_β(x | z) when ``noise``: σ-noise, or Bernoulli pixels).
        Returns (N, C, H, W)."""
        z = self.prior.sample((num_samples,))
        x = self.generator(z)
        if not noise:
            return x
        return PixelBernoulli(x).sample() if self.pixel_likelihood == "bernoulli" else x + self.sigma * torch.randn_like(x)


def _check_images(x: torch.Tensor, mask: Optional[torch.Tensor], image_shape=None) -> None:
    """One clear error for images that do not end in the generator's (C, H, W), and for masks that
    are not bool or 0/1 or do not broadcast to the images (the 0/1 check runs while Pyro's
    validation is enabled: the Langevin guide switches it off after a chain's first step)."""
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (B, C, H, W); got {getattr(x, 'shape', type(x))}")
    if image_shape:
        expected = tuple(image_shape)
        if x.dim() < len(expected) + 1 or tuple(x.shape[-len(expected):]) != expected:
            want = "(B, " + ", ".join(str(n) for n in expected) + ")"
            hint = ""
            if tuple(x.shape[-2:]) == expected[-2:] and x.dim() == len(expected):
                hint = "; add the channel dimension (x.unsqueeze(1))"
            elif tuple(x.shape[-2:]) == expected[-2:]:
                hint = f"; the generator makes {expected[0]} channel(s), x has {x.shape[-3]}"
            raise ValueError(
                f"x must have shape {want}, ending in the generator's (C, H, W) = {expected}; got {tuple(x.shape)}{hint}"
            )
    if mask is None:
        return
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a tensor (bool, or 0/1) broadcastable to x {tuple(x.shape)}; got {type(mask).__name__}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not broadcast to image shape {tuple(x.shape)}; "
            "use a mask of the images' shape (B, C, H, W), or (1, C, H, W) / (C, H, W) for one mask for all"
        )
    if mask.dtype != torch.bool and is_validation_enabled():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                "mask must be bool or hold only 0 and 1 (1 = observed pixel); got other values "
                f"(min {float(mask.min()):g}, max {float(mask.max()):g}); threshold it first, e.g. mask > 0.5"
            )
