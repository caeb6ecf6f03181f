"""The learned normalizing-flow latent prior of LFBM (Xie et al., AAAI 2023)."""

from __future__ import annotations

from typing import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from pyro.distributions.transforms import Permute

from pyro_lfbm.priors.base import LatentPrior
from pyro_lfbm.priors.gaussian import _HALF_LOG_2PI, _check_latent, standard_normal_log_prob
from pyro_lfbm.transforms import ActNorm, BoundedAffineCoupling, LULinear

_PERMUTATIONS = ("lu", "permute")


class _BufferPermute(Permute, TransformModule):
    """
    :class:`~pyro.distributions.transforms.Permute` as a module: ``permutation`` is a registered
    buffer (so ``.to(device)`` and ``state_dict`` carry it), the inverse permutation is derived from
    it on every call (never stale after ``load_state_dict``), and Pyro's identity cache is off.

    :param torch.LongTensor permutation: a permutation of ``range(D)``, shape ``(D,)``.
    """

    def __init__(self, permutation: torch.Tensor):
        super().__init__(permutation, cache_size=0)
        del self.permutation  # Permute stores a plain attribute; replace it by a buffer.
        self.register_buffer("permutation", permutation)

    @property
    def inv_permutation(self) -> torch.Tensor:  # shadows Permute's cached lazy_property
        return torch.argsort(self.permutation)


def _random_permutation(dim: int) -> torch.Tensor:
    """A random permutation of ``range(dim)`` that is not the identity (``dim >= 2``)."""
    identity = torch.arange(dim)
    perm = torch.randperm(dim)
    while torch.equal(perm, identity):
        perm = torch.randperm(dim)
    return perm


def mixture_log_prob(x: torch.Tensor, logits: torch.Tensor, locs: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log Σ_k π_k N(x; μ_k, diag σ_k²) over the last dimension: ``x`` (..., D) -> (...), for weights
    π = softmax(``logits``) (K,), means ``locs`` (K, D) and log standard deviations ``log_scales`` (K, D).

    The value of ``MixtureSameFamily(Categorical(logits=logits), Normal(locs, exp(log_scales)).to_event(1))
    .log_prob(x)`` as plain tensor code (for every Langevin step and for ``torch.compile``)."""
    u = (x.unsqueeze(-2) - locs) * torch.exp(-log_scales)  # (..., K, D)
    components = (-(u * u) / 2 - log_scales - _HALF_LOG_2PI).sum(-1)  # (..., K)
    return torch.logsumexp(components + torch.log_softmax(logits, -1), dim=-1)


class FlowDistribution(dist.TransformedDistribution):
    """``TransformedDistribution(base, [prior.flow.inv])`` of a :class:`FlowPrior` (base: N(0, I) or the
    prior's learned mixture, :meth:`FlowPrior.base_dist`), made cheap
    for use inside Pyro models that are evaluated at every Langevin step.

    Sampling is that of the parent class (base sample, then the inverse flow). Two things differ:
    :meth:`log_prob` is :meth:`FlowPrior.log_prob` (one forward pass of the flow, instead of the
    parent's pass plus a recomputation of every intermediate for the log-Jacobians), and
    construction skips the parent's recursive domain/codomain bookkeeping of the composed
    transform (the event shape is ``(latent_dim,)``; the support is ``real_vector``).

    :param FlowPrior prior: the prior whose flow and base distribution are used.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, prior: "FlowPrior", validate_args=None):
        self._prior = prior
        self.base_dist = prior.base_dist()
        self.transforms = [prior.flow.inv]
        torch.distributions.Distribution.__init__(
            self, torch.Size(), torch.Size((prior.latent_dim,)), validate_args=validate_args
        )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FlowDistribution, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._prior = self._prior
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """:param value: (..., D). :returns: log p(value), shape ``broadcast(value.shape[:-1], batch_shape)``."""
        if self._validate_args:
            self._validate_sample(value)
        log_prob = self._prior.log_prob(value)
        shape = torch.broadcast_shapes(log_prob.shape, self.batch_shape)
        return log_prob if shape == log_prob.shape else log_prob.expand(shape)


def flow_forward(parts, z: torch.Tensor):
    """Run the flow steps ``parts`` (in the direction z -> ε) on ``z`` (..., D), accumulating the
    log-Jacobians: returns ``(ε (..., D), Σ log|det J| (...))``.

    The value of ``y = part(x); log_det += part.log_abs_det_jacobian(x, y)`` over the parts, in
    the same order of operations, computed directly for the flow's own step types
    (:class:`~pyro_lfbm.transforms.ActNorm`, :class:`~pyro_lfbm.transforms.LULinear`, the
    buffered permutation, :class:`~pyro_lfbm.transforms.BoundedAffineCoupling`): no Pyro transform
    machinery per call (cache checks, expanded constants, the coupling's kept-pass bookkeeping),
    and plain tensor code that ``torch.compile`` traces in one graph. Other transforms go through
    their ``__call__`` and ``log_abs_det_jacobian``.
    """
    x, log_det = z, 0.0
    for part in parts:
        kind = type(part)
        if kind is ActNorm:
            y = x * part.log_scale.exp() + part.loc
            ladj = part.log_scale.sum()  # constant in x (broadcast by the addition below)
        elif kind is LULinear:
            # (the cached ``weight`` property asks about inference mode, which torch.compile cannot trace)
            weight = part._assemble() if torch.compiler.is_compiling() else part.weight
            y = torch.nn.functional.linear(x, weight)
            ladj = part.log_abs_diag.sum()
        elif kind is _BufferPermute:
            y = x[..., part.permutation]
            ladj = None  # log|det| = 0
        elif kind is BoundedAffineCoupling:
            x1, x2 = part._split(x)
            shift, scale, log_scale = part._shift_scale(x1)
            y = torch.cat([x1, (x2 + shift) * scale], dim=-1)
            ladj = log_scale.sum(-1)
        else:
            y = part(x)
            ladj = part.log_abs_det_jacobian(x, y)
        if ladj is not None:
            log_det = log_det + ladj
        x = y
    if not torch.is_tensor(log_det):  # only permutations: log|det J| = 0 for every row
        log_det = x.new_zeros(x.shape[:-1])
    elif log_det.shape != x.shape[:-1]:  # only constant terms so far
        log_det = log_det.expand(x.shape[:-1])
    return x, log_det


class FlowPrior(LatentPrior):
    r"""
    Learned flow prior :math:`p_\alpha(z)` of LFBM: a Glow-style bijection :math:`f_\alpha: z \mapsto
    \epsilon` onto a standard normal, so that

        :math:`\log p_\alpha(z) = \log\mathcal{N}(f_\alpha(z); 0, I)
        + \log|\det \partial f_\alpha / \partial z|`

    needs only forward passes of :math:`f_\alpha` and sampling is :math:`z = f_\alpha^{-1}(\epsilon)`.
    With ``num_components`` K ≥ 1 the base is instead a learned mixture of K diagonal Gaussians,
    :math:`\sum_k \pi_k \mathcal{N}(\epsilon; \mu_k, \operatorname{diag}\sigma_k^2)` (FlowGMM: Izmailov,
    Kirichenko, Finzi and Wilson, ICML 2020), whose weights, means and scales are parameters of the prior
    (``mixture_logits`` (K,), ``mixture_locs`` (K, D), ``mixture_log_scales`` (K, D); at the start equal
    weights, means drawn from N(0, I), unit scales): the flow can map clusters of latents onto separate
    components and keep the space between them at low density.
    Each of the ``num_steps`` steps is :class:`~pyro_lfbm.transforms.ActNorm` ->
    :class:`~pyro_lfbm.transforms.LULinear` (``permutation="lu"``, the paper's choice) or a fixed
    random non-identity :class:`~pyro.distributions.transforms.Permute` (``"permute"``) ->
    :class:`~pyro_lfbm.transforms.BoundedAffineCoupling`. The step list, in the direction
    :math:`z \to \epsilon`, is ``self.flow`` (a ``ComposeTransformModule``); the transforms are
    randomly initialised from the global torch RNG.

    :meth:`log_prob` runs :math:`f_\alpha` once (:func:`flow_forward`), accumulating the
    log-Jacobians; it equals ``self.dist().log_prob(z)`` (which also recomputes the intermediates
    by inverse passes) and is several times faster. No value is reused across calls, so ``z`` may
    be edited in place.

    Example::

        >>> prior = FlowPrior(4, num_steps=2, hidden_dim=16)
        >>> z = prior.sample((10,))
        >>> z.shape, prior.log_prob(z).shape
        (torch.Size([10, 4]), torch.Size([10]))

    :param int latent_dim: size D >= 2 of the latent vector.
    :param int num_steps: number of flow steps (the paper uses 5).
    :param int hidden_dim: hidden width of each coupling's hypernet (the paper uses 64).
    :param str permutation: ``"lu"`` (learned invertible linear map) or ``"permute"`` (fixed
        random permutation).
    :param int num_components: 0 (default, the paper's): the base is N(0, I); K ≥ 1: a learned mixture
        of K diagonal Gaussians.
    """

    def __init__(
        self,
        latent_dim: int,
        num_steps: int = 5,
        hidden_dim: int = 64,
        permutation: str = "lu",
        num_components: int = 0,
    ):
        if not isinstance(latent_dim, int) or latent_dim < 2:
            raise ValueError(f"latent_dim must be an integer >= 2 for a coupling flow, got {latent_dim!r}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be an integer >= 1, got {hidden_dim!r}")
        if permutation not in _PERMUTATIONS:
            raise ValueError(f"permutation must be one of {_PERMUTATIONS}, got {permutation!r}")
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 0:
            raise ValueError(f"num_components must be 0 (a standard normal base) or a positive integer, got {num_components!r}")
        super().__init__(latent_dim)
        self.num_steps = num_steps
        self.hidden_dim = hidden_dim
        self.permutation = permutation
        self.num_components = num_components
        parts: list[TransformModule] = []
        for _ in range(num_steps):
            if permutation == "lu":
                mixer: TransformModule = LULinear(latent_dim)
            else:
                mixer = _BufferPermute(_random_permutation(latent_dim))
            parts += [ActNorm(latent_dim), mixer, BoundedAffineCoupling(latent_dim, hidden_dim)]
        self.flow = ComposeTransformModule(parts)
        if num_components:
            self.mixture_logits = torch.nn.Parameter(torch.zeros(num_components))
            self.mixture_locs = torch.nn.Parameter(torch.randn(num_components, latent_dim))
            self.mixture_log_scales = torch.nn.Parameter(torch.zeros(num_components, latent_dim))

    def base_dist(self) -> dist.Distribution:
        """The base of the flow, event shape (D,): N(0, I), or the learned Gaussian mixture."""
        if not self.num_components:
            return super().base_dist()
        components = dist.Normal(self.mixture_locs, self.mixture_log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.mixture_logits), components)

    def _base_log_prob_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """ε (..., D) -> log p(ε) (...) of the base, as plain tensor code."""
        if not self.num_components:
            return standard_normal_log_prob
        logits, locs, log_scales = self.mixture_logits, self.mixture_locs, self.mixture_log_scales
        return lambda eps: mixture_log_prob(eps, logits, locs, log_scales)

    def dist(self) -> dist.Distribution:
        """The prior as a Pyro distribution.

        :returns: ``TransformedDistribution(N(0, I), [flow.inv])``, event shape ``(latent_dim,)``
            (a :class:`FlowDistribution`, whose ``log_prob`` is the single pass of :meth:`log_prob`).
        """
        return FlowDistribution(self)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """
        :param torch.Tensor z: latent vectors, shape ``(..., latent_dim)``.
        :returns: :math:`\\log p(z)`, shape ``(...)``; differentiable in ``z`` and the parameters.
        """
        _check_latent(z, self.latent_dim)
        parts = self.flow.parts  # (inside a running Pyro model this access registers the parameters)
        x, log_det = flow_forward(parts, z)
        if torch.distributions.Distribution._validate_args:
            LatentPrior.base_dist(self)._validate_sample(x)
        return self._base_log_prob_fn()(x) + log_det

    def tensor_log_prob_fn(self):
        """z (B, D) -> log p(z) (B,) by one pass of :func:`flow_forward` over the flow's parts (see
        :meth:`~pyro_lfbm.priors.base.LatentPrior.tensor_log_prob_fn`)."""
        parts = list(self.flow.parts)
        base_log_prob = self._base_log_prob_fn()

        def flow_log_prob(z: torch.Tensor) -> torch.Tensor:
            eps, log_det = flow_forward(parts, z)
            return base_log_prob(eps) + log_det

        return flow_log_prob

    def clear_cache(self) -> None:
        """Clear every transform cache of the flow (none is used by default; safe to call)."""
        flow = self.flow
        flow.clear_cache()
        for part in flow.parts:
            part.clear_cache()

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, num_steps={self.num_steps}, "
            f"hidden_dim={self.hidden_dim}, permutation={self.permutation!r}"
            + (f", num_components={self.num_components}" if self.num_components else "")
        )
