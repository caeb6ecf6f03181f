"""A hierarchical latent model: latents at several layers of the generator, one joint prior over all of them."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import pyro
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyro_lfbm.models.latent_model import LatentModel, _check_images
from pyro_lfbm.priors.base import LatentPrior


class _JointDraw:
    """One draw of the joint latent vector from the prior, made on the first request of a model
    call and shared by the layer sites of that call (so that the layers of a prior sample belong
    to one draw of the joint distribution)."""

    def __init__(self, prior: LatentPrior):
        self.prior, self.value = prior, None

    def get(self, shape: torch.Size) -> torch.Tensor:
        """The joint draw of batch shape ``shape``: (*shape, D)."""
        if self.value is None or self.value.shape[:-1] != shape:
            self.value = self.prior.sample(shape)
        return self.value


class LayerOfJoint(TorchDistribution):
    """The Pyro site of one layer of a latent vector whose density is joint over all layers.

    ``sample()`` returns the columns ``[start, end)`` of one draw of the joint vector from the
    prior (shared by the layer sites of the same model call: a prior sample of the model is a
    sample of the joint prior); ``log_prob`` is 0, because the joint density enters the model
    once, as the factor ``"prior"`` (see :class:`HierarchicalLatentModel`). Batch shape (B,),
    event shape (end - start,), support ``real_vector``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, draw: _JointDraw, start: int, end: int, batch_shape=torch.Size(), validate_args=None):
        self._draw, self._start, self._end = draw, int(start), int(end)
        self._like = draw.prior.base_loc  # the dtype and device of the latents (read by the Langevin guide)
        super().__init__(torch.Size(batch_shape), torch.Size((self._end - self._start,)), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LayerOfJoint, _instance)
        LayerOfJoint.__init__(new, self._draw, self._start, self._end, batch_shape)
        return new

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return self._draw.get(shape)[..., self._start : self._end]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value.new_zeros(torch.broadcast_shapes(value.shape[:-1], self.batch_shape))


class HierarchicalLatentModel(LatentModel):
    r"""A latent-variable model whose generator takes latents at several layers, with one joint prior.

    .. math:: (z_1, \dots, z_L) \sim p_\alpha(z_1, \dots, z_L), \qquad
              x = g_\beta(z_1, \dots, z_L) + \sigma\,\epsilon,

    z₁ at the top of the generator and the lower layers injected further down (e.g.
    :class:`~pyro_lfbm.nets.HierarchicalMNISTGenerator`), as in the ICCV 2023 model of Cui, Wu &
    Han ("Learning Hierarchical Features with Joint Latent Space Energy-Based Prior") with, as
    LFBM's counterpart of their joint EBM prior, a learned flow (:class:`~pyro_lfbm.priors.FlowPrior`)
    over the concatenation z = [z₁, …, z_L] of dimension Σ d_l. Any
    :class:`~pyro_lfbm.priors.LatentPrior` over that dimension works (Gaussian: a hierarchical
    ABP / the prior of a mean-field hierarchical VAE).

    **Pyro sites.** Calling ``model(x, mask=None)`` runs, in ``pyro.plate("data", B)``, one latent
    site per layer, ``z1, z2, ...`` (names ``latent_sites``, shapes (B, d_l)), then
    ``pyro.factor("prior", log p_α([z₁, …, z_L]))`` and the masked Gaussian likelihood ``x``.
    The layer sites are :class:`LayerOfJoint`: their own log probability is 0 and the joint
    density is the one factor. Why this and not one site ``z`` split inside the generator: every
    layer is a local site of its own, so :class:`~pyro_lfbm.infer.LangevinGuide` moves several
    sites (and a site can be conditioned alone, e.g. to infer the lower layers given the top one),
    the encoder guide emits one Gaussian per layer, and the trace's log joint is still exactly
    log p_α(z) + log p_β(x | z) with a flow that mixes the layers (a flow over the concatenation
    has no tractable per-layer conditional, so the layers cannot each carry a normalised
    conditional density). Sampling the model (``Predictive``) draws the joint vector once from
    the prior and hands each site its slice.

    **The concatenated latent.** :meth:`log_joint_terms`, :meth:`sample` and the generator work on
    z (B, Σ d_l) in site order; :meth:`split_latents` / :meth:`join_latents` convert between it
    and ``{site: (B, d_l)}``. :meth:`log_joint` takes the sites as keywords (the guide's fast path).

    :param LatentPrior prior: p_α over R^{Σ d_l}.
    :param torch.nn.Module generator: g_β, maps z (B, Σ d_l) in site order to (B, C, H, W).
    :param float sigma: pixel noise σ.
    :param str pixel_likelihood: as for :class:`~pyro_lfbm.models.LatentModel`.
    :param latent_dims: (d₁, …, d_L), top layer first; at least two layers, each ≥ 1.
    :param site_names: the Pyro site names (default ``z1, …, zL``).

    Example::

        >>> prior = FlowPrior(16, num_steps=2, hidden_dim=16)
        >>> model = HierarchicalLatentModel(prior, HierarchicalMNISTGenerator((8, 4, 4), 64, 16), latent_dims=(8, 4, 4))
        >>> guide = LangevinGuide(model, num_steps=20, step_size=0.1)   # moves z1, z2, z3
    """

    def __init__(self, prior: LatentPrior, generator: nn.Module, sigma: float = 0.3, latent_dims: Sequence[int] = (20, 10, 10),
                 site_names: Optional[Sequence[str]] = None, name: str = "", *, pixel_likelihood: str = "gaussian"):
        super().__init__(prior, generator, sigma, name, pixel_likelihood=pixel_likelihood)
        dims = tuple(latent_dims)
        if len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"latent_dims must be two or more positive integers (top layer first), got {latent_dims!r}")
        if sum(dims) != prior.latent_dim:
            raise ValueError(f"the prior is over {prior.latent_dim} dimensions but latent_dims {dims} sum to {sum(dims)}; "
                             f"build the prior with latent_dim={sum(dims)}")
        gen_dim = getattr(generator, "latent_dim", None)
        if gen_dim is not None and gen_dim != sum(dims):
            raise ValueError(f"the generator takes {gen_dim} latent dimensions but latent_dims {dims} sum to {sum(dims)}")
        names = tuple(site_names) if site_names is not None else tuple(f"z{i + 1}" for i in range(len(dims)))
        if len(names) != len(dims) or len(set(names)) != len(names) or {"x", "prior", "data"} & set(names):
            raise ValueError(f"site_names must be {len(dims)} distinct names other than x, prior, data; got {names!r}")
        self.latent_dims, self.latent_sites = dims, names

    def split_latents(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """z (..., Σ d_l) → ``{site: (..., d_l)}`` (views)."""
        if z.shape[-1] != sum(self.latent_dims):
            raise ValueError(f"expected z of shape (..., {sum(self.latent_dims)}), got {tuple(z.shape)}")
        return dict(zip(self.latent_sites, z.split(self.latent_dims, dim=-1)))

    def join_latents(self, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``{site: (..., d_l)}`` → z (..., Σ d_l) in site order."""
        missing = [name for name in self.latent_sites if name not in latents]
        extra = sorted(set(latents) - set(self.latent_sites))
        if missing or extra:
            raise ValueError(f"expected the latent sites {list(self.latent_sites)}; missing {missing}, unknown {extra}")
        return torch.cat([latents[name] for name in self.latent_sites], dim=-1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The Pyro model (see the class docstring); returns the concatenated z (B, Σ d_l)."""
        _check_images(x, mask, getattr(self.generator, "image_shape", None))
        with pyro.plate("data", x.shape[0]):
            draw, start, layers = _JointDraw(self.prior), 0, {}
            for name, dim in zip(self.latent_sites, self.latent_dims):
                layers[name] = pyro.sample(name, LayerOfJoint(draw, start, start + dim, (x.shape[0],)))
                start += dim
            z = self.join_latents(layers)
            pyro.factor("prior", self.prior.dist().log_prob(z))
            pyro.sample("x", self.likelihood(z, mask), obs=x)
        return z

    def log_joint(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, **latents: torch.Tensor) -> torch.Tensor:
        """Per-example log p(x, z₁, …, z_L) (B,), the layers as keywords ``z1=(B, d₁), ...``: the
        log probability of a trace of ``self(x, mask)`` with them conditioned, without Pyro handlers."""
        z = self.join_latents(latents)
        return self.prior.log_prob(z) + self._log_likelihood(x, z, mask)

    def extra_repr(self) -> str:
        noise = f"sigma={self.sigma}" if self.pixel_likelihood == "gaussian" else f"pixel_likelihood={self.pixel_likelihood!r}"
        return f"latent_dims={self.latent_dims}, latent_sites={self.latent_sites}, {noise}"
