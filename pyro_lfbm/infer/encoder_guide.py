"""An amortized Gaussian guide q_φ(z | x) for :class:`~pyro_lfbm.models.LatentModel` (LFBM-VAE).

With a learned flow prior this is the paper's LFBM-VAE variant; with the Gaussian prior it is a
plain VAE. The guide mirrors the model's structure: the same ``pyro.plate("data", B)`` and a
``pyro.sample("z", Normal(loc, scale).to_event(1))`` site, so that::

    guide = EncoderGuide(make_encoder((1, 28, 28), latent_dim=20))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x)                      # joint step on prior, generator and encoder (reparametrized ELBO)

trains the prior, the generator and the encoder together (:func:`pyro_lfbm.train.fit_encoder`
instead fits the encoder alone to a *frozen* model: a post-hoc inference network for a model that
was learned by short-run Langevin), and :func:`encode_dataset` is amortized inference over a whole
data set. :class:`ConditionalEncoderGuide` is the same for a hierarchical model with each layer
conditioned on the layers above (:class:`LayerChainNormal`).
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.nn import PyroModule
from torch import nn
from tqdm.auto import tqdm

from pyro_lfbm.infer.dataset import InferenceResult, batched_log_joint_terms


class EncoderGuide(PyroModule):
    r"""Amortized diagonal-Gaussian guide :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.

    Calling ``guide(x, mask=None)`` (the model's signature) samples ``z`` of shape (B, D) in a
    ``pyro.plate("data", B)``. Masked pixels (``mask == 0``) are set to 0 (mid-grey in [-1, 1])
    before encoding, so the encoder never sees the values the likelihood ignores.

    :param torch.nn.Module encoder: maps x (B, C, H, W) to ``(loc, scale)``, each (B, D), with
        ``scale > 0``, e.g. :class:`~pyro_lfbm.nets.MNISTEncoder`. It is registered with Pyro
        under ``"encoder."`` (a plain ``nn.Module`` attribute of a ``PyroModule``).
    :param site: name of the latent site of the model (``"z"`` for ``LatentModel``), or the names
        of several sites (``HierarchicalLatentModel``'s ``latent_sites``) with their ``sizes``: the
        encoder's (loc, scale) over the concatenation (B, Σ sizes) are split into one diagonal
        Gaussian site per name (a mean-field guide over the layers: the product of those Gaussians
        is :meth:`distribution`).
    :param sizes: the sizes of the sites (several sites only), in their order.
    """

    def __init__(self, encoder: nn.Module, site: Union[str, Sequence[str]] = "z", sizes: Optional[Sequence[int]] = None,
                 name: str = ""):
        super().__init__(name)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module returning (loc, scale), got {type(encoder).__name__}")
        if getattr(encoder, "deterministic", False):
            raise ValueError("the encoder is deterministic (returns one code); build it with deterministic=False")
        self.encoder = encoder
        if isinstance(site, str):
            if sizes is not None:
                raise ValueError(f"sizes is for several sites; one site ({site!r}) takes the encoder's whole output")
            self.sites, self.sizes = (site,), None
        else:
            self.sites, self.sizes = tuple(site), tuple(sizes or ())
            if len(self.sizes) != len(self.sites) or len(set(self.sites)) != len(self.sites) or not self.sites:
                raise ValueError(f"several sites need distinct names and one size each; got sites {self.sites}, sizes {sizes}")
            width = getattr(encoder, "latent_dim", None)
            if width is not None and width != sum(self.sizes):
                raise ValueError(f"the encoder gives {width} dimensions but the sizes {self.sizes} sum to {sum(self.sizes)}")
        self.site = self.sites[0] if self.sizes is None else self.sites

    def split(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """z (B, D) → ``{site: value}``: ``{site: z}`` for one site, else the columns of each site."""
        if self.sizes is None:
            return {self.sites[0]: z}
        return dict(zip(self.sites, z.split(self.sizes, dim=-1)))

    @staticmethod
    def _inputs(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, C, H, W) checked, its masked pixels set to 0."""
        if not torch.is_tensor(x) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (B, C, H, W); got {getattr(x, 'shape', type(x))}")
        return x if mask is None else x * mask.to(x.dtype)

    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """``(loc, scale)`` of q(z | x), each (B, D), for images x (B, C, H, W)."""
        return self.encoder(self._inputs(x, mask))

    def distribution(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dist.Distribution:
        """q(z | x) with batch shape (B,) and event shape (D,)."""
        loc, scale = self.encode(x, mask)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The Pyro guide: ``z ~ q(z | x)`` in ``pyro.plate("data", B)`` (one site per name, each
        (B, d)); returns z (B, D) (the sites concatenated)."""
        if self.sizes is None:
            q = self.distribution(x, mask)
            with pyro.plate("data", x.shape[0]):
                return pyro.sample(self.sites[0], q)
        loc, scale = self.encode(x, mask)
        locs, scales = self.split(loc), self.split(scale)
        with pyro.plate("data", x.shape[0]):
            return torch.cat([pyro.sample(name, dist.Normal(locs[name], scales[name]).to_event(1)) for name in self.sites], -1)

    @torch.no_grad()
    def mean(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The encoder mean μ_φ(x), shape (B, D), detached."""
        return self.encode(x, mask)[0]

    def init_fn(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{site: μ_φ(x)}`` (each site's columns): the ``init=`` of
        :class:`~pyro_lfbm.infer.LangevinGuide` for hybrid inference."""
        return self.split(self.mean(x, mask))


class LayerChainNormal(TorchDistribution):
    r"""q(z | x) = Π_l N(z_l; μ_l(x, z_{<l}), diag σ_l(x, z_{<l})²) over the concatenated layers of a
    hierarchical model, from a :class:`~pyro_lfbm.nets.LayerConditionalEncoder` and an image's context.

    Batch shape (B,), event shape (D,) = (Σ d_l,). ``rsample`` draws the layers top-down
    (reparametrised); ``log_prob`` evaluates each layer's Gaussian at the given layers above;
    ``mean`` is the chain of conditional means, z_l = μ_l(x, z_{<l}) at the means above (the mode
    of each conditional in turn, not the marginal mean, which has no closed form).

    :param encoder: the :class:`~pyro_lfbm.nets.LayerConditionalEncoder`.
    :param loc: the encoder's context ``loc`` (B, D) (``encoder.context(x)[0]``).
    :param scale: its ``scale`` (B, D).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, encoder, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.encoder, self.context_loc, self.context_scale = encoder, loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def layer(self, index: int, upper: torch.Tensor) -> dist.Normal:
        """q(z_index | z_{<index}, x) as a ``Normal`` of shape (..., B, d_index), upper (..., B, Σ_{k<index} d_k)."""
        shape = upper.shape[:-1] + self.event_shape
        return dist.Normal(*self.encoder.layer(index, self.context_loc.expand(shape), self.context_scale.expand(shape), upper))

    def _chain(self, sample_shape, draw) -> torch.Tensor:
        upper = self.context_loc.new_zeros(torch.Size(sample_shape) + self.batch_shape + (0,))
        for index in range(len(self.encoder.latent_dims)):
            upper = torch.cat([upper, draw(self.layer(index, upper))], -1)
        return upper

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self._chain(sample_shape, lambda q: q.rsample())

    @property
    def mean(self) -> torch.Tensor:
        return self._chain((), lambda q: q.loc)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale = self.encoder.params(self.context_loc.expand(value.shape), self.context_scale.expand(value.shape), value)
        return dist.Normal(loc, scale).log_prob(value).sum(-1)


class ConditionalEncoderGuide(EncoderGuide):
    r"""An amortized guide over the layers of a hierarchical latent model in which each layer is
    conditioned on the layers above: q(z₁ | x) q(z₂ | z₁, x) … (:class:`LayerChainNormal`), instead of
    :class:`EncoderGuide`'s mean-field Gaussian over the layers.

    Calling ``guide(x, mask=None)`` samples the sites in ``pyro.plate("data", B)`` top-down, each
    site's Gaussian computed from the values of the sites above it (so a site conditioned by
    ``poutine.condition`` conditions the ones below). ``mean`` and ``init_fn`` give the chain of
    conditional means; ``distribution`` is the :class:`LayerChainNormal` (importance-weighted estimates
    draw from it through :class:`~pyro_lfbm.metrics.evaluation.GuideProposal`). ``encode`` is refused:
    this q is not one Gaussian, so it has no (loc, scale).

    :param encoder: a :class:`~pyro_lfbm.nets.LayerConditionalEncoder`.
    :param sites: the model's latent site names, top layer first (one per ``encoder.latent_dims``).
    """

    def __init__(self, encoder: nn.Module, sites: Sequence[str], name: str = ""):
        dims = getattr(encoder, "latent_dims", None)
        if not isinstance(encoder, nn.Module) or not hasattr(encoder, "layer") or dims is None:
            raise TypeError(f"encoder must be a LayerConditionalEncoder, got {type(encoder).__name__}")
        super().__init__(encoder, site=sites, sizes=dims, name=name)

    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None):
        raise ValueError("a conditional encoder's q(z | x) is not one diagonal Gaussian, so it has no (loc, scale); "
                         "use distribution(x) (a LayerChainNormal), or the mean-field EncoderGuide")

    def distribution(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> LayerChainNormal:
        """q(z | x), batch shape (B,), event shape (D,)."""
        return LayerChainNormal(self.encoder, *self.encoder.context(self._inputs(x, mask)))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The Pyro guide: each site ``z_l ~ q(z_l | z_{<l}, x)`` in turn; returns z (B, D)."""
        q = self.distribution(x, mask)
        upper = q.context_loc.new_zeros(x.shape[0], 0)
        with pyro.plate("data", x.shape[0]):
            for index, name in enumerate(self.sites):
                upper = torch.cat([upper, pyro.sample(name, q.layer(index, upper).to_event(1))], -1)
        return upper

    @torch.no_grad()
    def mean(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The chain of conditional means (B, D), detached (see :class:`LayerChainNormal`)."""
        return self.distribution(x, mask).mean


def encode_dataset(
    guide: EncoderGuide,
    x: torch.Tensor,
    model=None,
    *,
    batch_size: int = 500,
    progress: bool = True,
) -> InferenceResult:
    """Amortized inference over a data set: z = μ_φ(x) for every image of x (N, C, H, W).

    Costs one encoder pass per image and no gradient evaluation. With ``model`` given, the
    log joint (N,) and its terms at z are filled in (outside the timed part); otherwise they
    are empty tensors. The guide is used in whatever train/eval mode it is in. Returns CPU tensors.
    """
    device = next(iter(guide.parameters())).device
    zs = []
    started = time.perf_counter()
    for start in tqdm(range(0, x.shape[0], batch_size), desc="encoder", disable=not progress, leave=False):
        zs.append(guide.mean(x[start : start + batch_size].to(device)).cpu())
    seconds = time.perf_counter() - started
    z = torch.cat(zs)
    terms: Dict[str, torch.Tensor] = {}
    log_joint = torch.empty(0)
    if model is not None:
        terms = batched_log_joint_terms(model, x, z, batch_size=batch_size)
        log_joint = terms["prior"] + terms["likelihood"]
    return InferenceResult(z=z, log_joint=log_joint, log_joint_terms=terms, gradient_evaluations=0, seconds=seconds)
