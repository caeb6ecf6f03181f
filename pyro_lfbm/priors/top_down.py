"""A prior over latent layers that factorises top-down: p(z₁) p(z₂ | z₁) … p(z_L | z_{<L})."""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_lfbm.nets import AffineConditioner
from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.priors.gaussian import _check_latent

#: Bound on each conditional's log-scale, |log s| ≤ this (as the flow's bounded couplings bound theirs).
LOG_SCALE_BOUND = 5.0


class TopDownDistribution(dist.TorchDistribution):
    """The distribution of a :class:`TopDownPrior` over the concatenated layers, event shape (D,):
    ``log_prob`` is :meth:`TopDownPrior.log_prob`, ``sample`` is ancestral (top layer first)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, prior: "TopDownPrior", batch_shape=torch.Size(), validate_args=None):
        self.prior = prior
        super().__init__(torch.Size(batch_shape), torch.Size((prior.latent_dim,)), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_prob = self.prior.log_prob(value)
        shape = torch.broadcast_shapes(log_prob.shape, self.batch_shape)
        return log_prob if shape == log_prob.shape else log_prob.expand(shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.prior.sample(torch.Size(sample_shape) + self.batch_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TopDownDistribution, _instance)
        TopDownDistribution.__init__(new, self.prior, batch_shape)
        return new


class TopDownPrior(LatentPrior):
    r"""A prior over the layers z = [z₁, …, z_L] (top first) of a hierarchical latent model, with an exact
    density for every layer given the layers above it:

    .. math:: p(z) = p_1(z_1) \prod_{l=2}^{L} p(z_l \mid z_{<l}), \qquad
              z_l = \mu_l(z_{<l}) + s_l(z_{<l}) \odot u_l, \quad u_l \sim p_l,

    so that :math:`\log p(z_l \mid z_{<l}) = \log p_l(u_l) - \sum \log s_l(z_{<l})`. Each p_l is a
    :class:`~pyro_lfbm.priors.LatentPrior` of its own (a :class:`~pyro_lfbm.priors.FlowPrior`, or
    N(0, I) for a layer of one dimension) and (μ_l, log s_l) an :class:`~pyro_lfbm.nets.AffineConditioner` of the
    layers above, whose last layer starts at zero (the layers start independent). This is the
    top-down prior of ladder and hierarchical VAEs (Sønderby et al., "Ladder Variational
    Autoencoders", NeurIPS 2016; Maaløe et al., "BIVA", NeurIPS 2019) with a flow in each layer,
    beside the one flow over the concatenation (:class:`~pyro_lfbm.priors.FlowPrior`, which mixes
    the layers and so has no tractable conditional).

    What it adds: the conditionals are exact, so the k lowest layers can be redrawn given the ones
    above (:meth:`sample_lower_layers`, the draws of Havtorn et al.'s likelihood ratio) and each
    layer's term can be read apart (:meth:`layer_log_probs`).

    Example::

        >>> prior = TopDownPrior([FlowPrior(4, num_steps=2, hidden_dim=16), FlowPrior(2, num_steps=2, hidden_dim=16)])
        >>> z = prior.sample((10,))                  # (10, 6): z₁ in columns 0-3, z₂ in 4-5
        >>> prior.layer_log_probs(z).shape           # log p(z₁), log p(z₂ | z₁)
        torch.Size([10, 2])

    :param layer_priors: p₁, …, p_L, top layer first (at least two); layer l has p_l's ``latent_dim``.
    :param int hidden_dim: hidden width of each conditioner MLP (two hidden layers).
    """

    def __init__(self, layer_priors: Sequence[LatentPrior], hidden_dim: int = 64):
        layer_priors = list(layer_priors)
        if len(layer_priors) < 2 or not all(isinstance(p, LatentPrior) for p in layer_priors):
            raise ValueError(f"layer_priors must be two or more LatentPrior modules (top layer first), got {layer_priors!r}")
        if not isinstance(hidden_dim, int) or isinstance(hidden_dim, bool) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {hidden_dim!r}")
        dims = tuple(p.latent_dim for p in layer_priors)
        super().__init__(sum(dims))
        self.latent_dims, self.hidden_dim = dims, hidden_dim
        self.layer_priors = nn.ModuleList(layer_priors)
        self.conditioners = nn.ModuleList(
            AffineConditioner(sum(dims[:l]), (hidden_dim, hidden_dim), dims[l], LOG_SCALE_BOUND) for l in range(1, len(dims)))

    @property
    def normalised_density(self) -> bool:
        """Normalised when every layer's prior is (the conditionals are shifted and scaled copies of them)."""
        return all(p.normalised_density for p in self.layer_priors)

    def _shift_log_scale(self, layer: int, upper: torch.Tensor):
        """(μ_l, log s_l) of layer ``layer`` ≥ 1 (0-based) given the layers above, upper (..., Σ_{k<l} d_k)."""
        return self.conditioners[layer - 1](upper)

    def layer_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) → (..., L): log p₁(z₁), then log p(z_l | z_{<l}) for each lower layer."""
        _check_latent(z, self.latent_dim)
        layers = z.split(self.latent_dims, dim=-1)
        terms = [self.layer_priors[0].log_prob(layers[0])]
        for l in range(1, len(layers)):
            shift, log_scale = self._shift_log_scale(l, z[..., : sum(self.latent_dims[:l])])
            u = (layers[l] - shift) * torch.exp(-log_scale)
            terms.append(self.layer_priors[l].log_prob(u) - log_scale.sum(-1))
        return torch.stack(terms, dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) (...) for z (..., D): the sum of :meth:`layer_log_probs`."""
        return self.layer_log_probs(z).sum(-1)

    def dist(self) -> TopDownDistribution:
        return TopDownDistribution(self)

    def _draw_below(self, upper: torch.Tensor, first: int) -> torch.Tensor:
        """Complete ``upper`` (..., Σ_{k<first} d_k) by ancestral draws of layers ``first``, … (no gradient)."""
        z = upper
        for l in range(first, len(self.latent_dims)):
            shift, log_scale = self._shift_log_scale(l, z)
            u = self.layer_priors[l].sample(z.shape[:-1])
            z = torch.cat([z, shift + torch.exp(log_scale) * u], dim=-1)
        return z

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Ancestral draws z, shape ``sample_shape + (D,)``: z₁ ~ p₁, then each lower layer given the ones above."""
        with torch.no_grad():
            return self._draw_below(self.layer_priors[0].sample(torch.Size(sample_shape)), 1)

    def sample_lower_layers(self, upper: torch.Tensor, num_layers: int, num_samples: int = 1) -> torch.Tensor:
        """Exact draws of the ``num_layers`` lowest layers given the layers above them.

        :param upper: (B, D − Σ of the lowest ``num_layers`` sizes), the upper layers of B latents.
        :param int num_layers: k, from 1 to L − 1.
        :returns: (num_samples, B, Σ of the k lowest sizes), drawn from p(z_{≤k} | z_{>k}) (no gradient).
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < len(self.latent_dims):
            raise ValueError(f"num_layers must be from 1 to {len(self.latent_dims) - 1}, got {num_layers!r}")
        first = len(self.latent_dims) - num_layers
        if upper.dim() != 2 or upper.shape[-1] != sum(self.latent_dims[:first]):
            raise ValueError(f"upper must be (B, {sum(self.latent_dims[:first])}) for the {num_layers} lowest layers, "
                             f"got {tuple(upper.shape)}")
        with torch.no_grad():
            z = self._draw_below(upper.expand(num_samples, *upper.shape), first)
        return z[..., upper.shape[-1]:]

    def extra_repr(self) -> str:
        return f"latent_dims={self.latent_dims}, hidden_dim={self.hidden_dim}"
