"""Log joints of arbitrary Pyro models in unconstrained space, computed from traces.

These are the generic path of the Langevin guide and kernel. :func:`find_latent_sites` runs a model
once and describes every continuous latent site: whether it is *local* (inside the data plate,
one value per example) or *global*, its support and the bijection ``biject_to(support)`` from
unconstrained space, and the data plate (name, full size, subsample indices, dim).
:func:`log_joint_terms` then scores latents given in unconstrained space, split into a per-example
(local) part and a global part.

**Rows.** Local terms are reduced to one value per *row*: per example of the data plate, and per
element of every vectorised plate that was active *around* the model when the sites were found
(Pyro's particle plates, ``Predictive(parallel=True)``, ``Trace_ELBO(vectorize_particles=True)``).
Their shape is :attr:`LatentSites.rows_shape`: ``(B,)`` for B examples, ``(S, B)`` under one
particle plate of size S. Those outer plates are replayed into every later evaluation, so each
particle's latents form independent chains.

**Subsampling.** When the data plate (or any plate) subsamples, the indices drawn while finding
the sites are recorded (:attr:`LatentSites.subsamples`) and replayed into every evaluation of
:func:`log_joint_terms`: a chain targets the posterior of one fixed minibatch. The terms are
free of the subsampling factor ``size / subsample_size`` of every subsampled plate: the chain's
temperature does not depend on the minibatch size. Scaling the local part by N/B is the caller's
business (e.g. a global latent's full-data gradient estimate).

**Scales.** Every other scale of a site stays: ``poutine.scale(scale=β)`` around latent sites (KL
annealing, as in Pyro's DMM example) makes the chain target p(x | z) p(z)^β, the posterior of the
annealed objective. Only the plates' subsampling factors are divided out (:func:`user_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.broadcast_messenger import BroadcastMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame, IndepMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

from pyro_lfbm.ops.langevin import standard_normal

Latents = Dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Messengers
# --------------------------------------------------------------------------------------------
class _InitLatents(Messenger):
    """Give every unobserved, non-subsample sample site the value ``T(u)``, u ~ N(0, I) in the
    unconstrained space of ``T = biject_to(support)``, drawn in ``dtype`` / on ``device`` unless the
    site's distribution holds a floating tensor (then its dtype and device). The prior is never
    sampled (it may be expensive: an energy prior needs its own Langevin). Records u per site."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.dtype, self.device = dtype, device
        self.unconstrained: Latents = {}

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        fn = msg["fn"]
        support = fn.support
        name = msg["name"]
        if getattr(support, "is_discrete", False):
            raise ValueError(
                f"latent site '{name}' has discrete support {support}; Langevin inference needs continuous "
                "latents (marginalise it out, or observe it)"
            )
        try:
            transform = biject_to(support)
        except NotImplementedError:
            raise ValueError(
                f"latent site '{name}' has support {support}, which has no bijection to unconstrained space "
                "(torch.distributions.biject_to); reparametrise it or observe it"
            ) from None
        shape = fn.batch_shape + fn.event_shape
        ref = _tensor_of(fn)
        dtype = ref.dtype if ref is not None else self.dtype
        device = ref.device if ref is not None else self.device
        u = standard_normal(transform.inv.forward_shape(shape), dtype=dtype, device=device)
        self.unconstrained[name] = u
        msg["value"] = transform(u)


class _ParamsUnrecorded(Messenger):
    """Let ``pyro.param`` sites (``pyro.module`` registers one per parameter on every model call)
    bypass the handlers outside this one: the parameter store still answers them, but they are
    not recorded in the trace nor seen by ``block``. Only the sample sites' log probabilities
    are read from the per-step trace, and parameters are constants within a Langevin chain."""

    def _pyro_param(self, msg):
        msg["stop"] = True


class _ReplaySubsamples(Messenger):
    """Give every subsample site (the index draw of a ``pyro.plate`` with ``subsample_size``) the
    recorded indices, so that every evaluation sees the same minibatch."""

    def __init__(self, subsamples: Dict[str, torch.Tensor]):
        super().__init__()
        self.subsamples = subsamples

    def _pyro_sample(self, msg):
        if site_is_subsample(msg) and msg["name"] in self.subsamples:
            msg["value"] = self.subsamples[msg["name"]]


class _ReplayOuterPlates(Messenger):
    """Re-create, inside a ``poutine.block``, the vectorised plates that were active around the
    model (a plate blocked from a message cannot broadcast it): each sample site gets their frames
    and is broadcast as the real plates would do. Unscaled (subsampling of outer plates is not
    replayed: log probabilities are read unscaled)."""

    def __init__(self, plates: Sequence["PlateInfo"]):
        super().__init__()
        self.frames = [CondIndepStackFrame(p.name, p.dim, p.subsample_size, 0, p.size) for p in plates]

    def _process_message(self, msg):
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        for frame in reversed(self.frames):  # the outermost frame ends up first, as with real plates
            msg["cond_indep_stack"] = (frame,) + tuple(msg["cond_indep_stack"])
        BroadcastMessenger._pyro_sample(msg)


# --------------------------------------------------------------------------------------------
# Site descriptions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlateInfo:
    """A vectorised plate: name, full size, subsample indices (None when not subsampled) and dim."""

    name: str
    size: int
    subsample: Optional[torch.Tensor]
    dim: int

    @property
    def subsample_size(self) -> int:
        """The number of elements present in one run (B): the subsample's length, or ``size``."""
        return self.size if self.subsample is None else int(self.subsample.shape[0])


@dataclass(frozen=True)
class LatentSite:
    """One continuous latent site of a model run.

    :ivar name: the site name.
    :ivar local: True when the site is inside the data plate (one value per example).
    :ivar event_dim: the event dim of the site's distribution (constrained space).
    :ivar support: the distribution's support.
    :ivar transform: ``biject_to(support)``, unconstrained -> constrained.
    :ivar unconstrained_event_dim: the event dim of the unconstrained value.
    :ivar shape: the constrained value's shape in this run (batch + event).
    :ivar unconstrained_shape: the unconstrained value's shape.
    """

    name: str
    local: bool
    event_dim: int
    support: constraints.Constraint
    transform: Transform
    unconstrained_event_dim: int
    shape: torch.Size
    unconstrained_shape: torch.Size

    @property
    def is_identity(self) -> bool:
        """True when the site is real-valued (the transform is the identity)."""
        return _is_identity(self.transform)

    def log_abs_det_jacobian(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log|det ∂z/∂u| summed over the site's event dims: shape ``u``'s batch shape."""
        ladj = self.transform.log_abs_det_jacobian(u, z)
        extra = self.unconstrained_event_dim - self.transform.domain.event_dim
        return ladj.sum(tuple(range(-extra, 0))) if extra > 0 else ladj


def _is_identity(transform: Transform) -> bool:
    if isinstance(transform, torch.distributions.transforms.IndependentTransform):
        return _is_identity(transform.base_transform)
    if isinstance(transform, torch.distributions.transforms.ComposeTransform):
        return all(_is_identity(part) for part in transform.parts)
    return False


@dataclass(frozen=True)
class LatentSites:
    """The latent sites of a model run, what the Langevin guide and kernel need to move them.

    :ivar initial: ``{site: u₀}``, unconstrained initial values u₀ ~ N(0, I) for every latent site
        (local and global), in the dtype and on the device of the site's distribution (or of the
        model's parameters / data); shape ``sites[name].unconstrained_shape``.
    :ivar event_dims: ``{site: event dim}`` of each latent site's distribution.
    :ivar plate: the data plate, or None when no latent site is in a plate.
    :ivar params: the unconstrained leaf tensors of the model's param sites.
    :ivar sites: ``{site: LatentSite}`` in model order.
    :ivar batch_plates: the vectorised plates active around the model when the sites were found
        (particle plates), outermost first; replayed into every evaluation.
    :ivar subsamples: ``{plate name: indices}`` of every subsampled plate of the run; replayed
        into every evaluation.
    """

    initial: Latents
    event_dims: Dict[str, int]
    plate: Optional[PlateInfo]
    params: Tuple[torch.Tensor, ...] = ()
    sites: Dict[str, LatentSite] = field(default_factory=dict)
    batch_plates: Tuple[PlateInfo, ...] = ()
    subsamples: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def local_names(self) -> List[str]:
        return [name for name, site in self.sites.items() if site.local]

    @property
    def global_names(self) -> List[str]:
        return [name for name, site in self.sites.items() if not site.local]

    @property
    def row_dims(self) -> Tuple[int, ...]:
        """The (negative) batch dims of a row, outermost first: the batch plates' and the data plate's."""
        dims = [p.dim for p in self.batch_plates] + ([self.plate.dim] if self.plate is not None else [])
        return tuple(sorted(dims))

    @property
    def rows_shape(self) -> torch.Size:
        """Shape of the local term: one entry per row, ordered as :attr:`row_dims`."""
        sizes = {p.dim: p.subsample_size for p in self.batch_plates}
        if self.plate is not None:
            sizes[self.plate.dim] = self.plate.subsample_size
        return torch.Size(sizes[d] for d in self.row_dims)

    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the global term: one entry per element of the batch (particle) plates."""
        plates = sorted(self.batch_plates, key=lambda p: p.dim)
        return torch.Size(p.subsample_size for p in plates)

    def constrain(self, unconstrained: Latents) -> Latents:
        """``{site: T(u)}``: constrained values of unconstrained latents."""
        return {name: self.sites[name].transform(u) for name, u in unconstrained.items()}

    def reduce_to_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a batch-shaped tensor (right-aligned plate dims, no event dims) over every dim but
        the row dims; returns :attr:`rows_shape` (broadcast where ``t`` lacks a row dim)."""
        return _reduce_to(t, self.row_dims, self.rows_shape)

    def reduce_to_batch(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a batch-shaped tensor over every dim but the batch plates'; returns :attr:`batch_shape`."""
        dims = tuple(sorted(p.dim for p in self.batch_plates))
        return _reduce_to(t, dims, self.batch_shape)

    def site_row_dims(self, name: str) -> Tuple[int, ...]:
        """The (negative) batch dims that index a site's rows: :attr:`row_dims` for a local site,
        the batch plates' dims for a global one (each particle's globals form one chain)."""
        if self.sites[name].local:
            return self.row_dims
        return tuple(sorted(p.dim for p in self.batch_plates))

    def site_rows_shape(self, name: str) -> torch.Size:
        """:attr:`rows_shape` for a local site, :attr:`batch_shape` for a global one."""
        return self.rows_shape if self.sites[name].local else self.batch_shape

    def pack(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A site's unconstrained value with its row dims (:meth:`site_row_dims`) moved to the front
        and flattened: shape (R, ...) with R = prod(rows), the other dims kept in order (R = 1 for a
        global site without batch plates). A no-op for the usual (B, ...) local site of a data plate
        at dim -1 without particle plates."""
        dims = self.site_row_dims(name)
        batch_dims = value.dim() - self.sites[name].unconstrained_event_dim
        positions = [batch_dims + d for d in dims]
        if any(p < 0 for p in positions):
            raise ValueError(f"site '{name}' of shape {tuple(value.shape)} lacks the row dims {dims}")
        moved = value.movedim(positions, list(range(len(positions))))
        return moved.reshape((-1,) + moved.shape[len(positions):])

    def unpack(self, name: str, packed: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pack`."""
        dims = self.site_row_dims(name)
        value = packed.reshape(self.site_rows_shape(name) + packed.shape[1:])
        batch_dims = value.dim() - self.sites[name].unconstrained_event_dim
        positions = [batch_dims + d for d in dims]
        return value.movedim(list(range(len(positions))), positions)


def _reduce_to(t: torch.Tensor, keep_dims: Tuple[int, ...], shape: torch.Size) -> torch.Tensor:
    if not keep_dims:
        return t.sum()
    need = -min(keep_dims)
    if t.dim() < need:
        t = t.reshape((1,) * (need - t.dim()) + t.shape)
    positions = [t.dim() + d for d in keep_dims]
    others = [i for i in range(t.dim()) if i not in positions]
    if others:
        t = t.sum(others)
    return t.expand(shape)


# --------------------------------------------------------------------------------------------
# Finding the sites
# --------------------------------------------------------------------------------------------
def active_batch_plates() -> Tuple[PlateInfo, ...]:
    """The vectorised plates active at the caller (e.g. Pyro's particle plates around a guide),
    outermost first."""
    plates = []
    for messenger in _PYRO_STACK:
        if isinstance(messenger, IndepMessenger) and messenger.dim is not None and getattr(messenger, "_vectorized", True):
            size = messenger.size
            subsample_size = getattr(messenger, "subsample_size", size)
            indices = getattr(messenger, "_indices", None)
            subsample = indices if subsample_size != size else None
            plates.append(PlateInfo(messenger.name, int(size), subsample, int(messenger.dim)))
    return tuple(plates)


def _reference_tensor(model, args, kwargs) -> Optional[torch.Tensor]:
    """A floating tensor whose dtype/device the model uses: its first parameter, else its data."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p
    for value in [*args, *kwargs.values()]:
        if torch.is_tensor(value) and value.is_floating_point():
            return value
    return None


def _tensor_of(fn) -> Optional[torch.Tensor]:
    """The first floating tensor held by a distribution (or its base distributions)."""
    for value in vars(fn).values():
        if torch.is_tensor(value) and value.is_floating_point():
            return value
    for attr in ("base_dist",):
        base = getattr(fn, attr, None)
        if base is not None:
            return _tensor_of(base)
    return None


def find_latent_sites(
    model,
    args: Tuple,
    kwargs: Dict,
    *,
    data_plate: Optional[str] = None,
    batch_plates: Optional[Tuple[PlateInfo, ...]] = None,
) -> LatentSites:
    """Run ``model`` once (no gradients, hidden from outer handlers) and describe its latent sites.

    Every unobserved sample site must be continuous with a support that ``biject_to`` maps from
    unconstrained space (real, positive, interval, simplex, ...); a discrete site raises
    ``ValueError``. Initial values are u₀ ~ N(0, I) in unconstrained space.

    The *data plate* is ``data_plate`` when given; otherwise the outermost vectorised plate of
    the latent sites (a plate that no latent site nests inside another one). When several plates
    qualify, a subsampled one is chosen, then one named ``"data"``; otherwise ``ValueError`` asks
    for ``data_plate=``. Latent sites inside the data plate are local, the others global.

    :param batch_plates: vectorised plates to replay around the model (default: those active at
        the caller, :func:`active_batch_plates`, e.g. Pyro's particle plate around a guide).
    """
    batch_plates = active_batch_plates() if batch_plates is None else tuple(batch_plates)
    ref = _reference_tensor(model, args, kwargs)
    init = _InitLatents(ref.dtype if ref is not None else torch.get_default_dtype(),
                        ref.device if ref is not None else torch.device("cpu"))
    with torch.no_grad(), poutine.block():
        traced = init(_ReplayOuterPlates(batch_plates)(model))
        trace = poutine.trace(traced).get_trace(*args, **kwargs)
    batch_names = {p.name for p in batch_plates}
    params, latent_frames, subsamples = [], {}, {}
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            unconstrained = getattr(site["value"], "unconstrained", None)
            leaf = unconstrained() if callable(unconstrained) else site["value"]
            if torch.is_tensor(leaf) and leaf.is_leaf:
                params.append(leaf)
            continue
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            subsamples[name] = site["value"]
            continue
        if site["is_observed"] or name not in init.unconstrained:
            continue
        latent_frames[name] = [f for f in site["cond_indep_stack"] if f.vectorized and f.name not in batch_names]
    if not latent_frames:
        raise ValueError("the model has no latent sample sites for Langevin inference to move")
    frame = _choose_data_plate(latent_frames, data_plate, subsamples)
    plate = None
    if frame is not None:
        full_size = frame.full_size if frame.full_size is not None else frame.size
        subsample = subsamples.get(frame.name)
        plate = PlateInfo(frame.name, int(full_size), subsample, int(frame.dim))
    sites: Dict[str, LatentSite] = {}
    for name in latent_frames:
        node = trace.nodes[name]
        fn = node["fn"]
        transform = biject_to(fn.support)
        event_dim = len(fn.event_shape)
        u = init.unconstrained[name]
        unconstrained_event_dim = event_dim - transform.codomain.event_dim + transform.domain.event_dim
        local = frame is not None and any(f.name == frame.name for f in latent_frames[name])
        sites[name] = LatentSite(name, local, event_dim, fn.support, transform, unconstrained_event_dim,
                                 node["value"].shape, u.shape)
    initial = {name: init.unconstrained[name] for name in sites}
    event_dims = {name: s.event_dim for name, s in sites.items()}
    return LatentSites(initial, event_dims, plate, tuple(params), sites, batch_plates, subsamples)


def _choose_data_plate(latent_frames: Dict[str, List[CondIndepStackFrame]], data_plate, subsamples):
    all_frames = {}
    for frames in latent_frames.values():
        for f in frames:
            all_frames[f.name] = f
    if data_plate is not None:
        if data_plate not in all_frames:
            raise ValueError(
                f"data_plate='{data_plate}' encloses no latent site; the latent sites' plates are {sorted(all_frames)}"
            )
        return all_frames[data_plate]
    if not all_frames:
        return None
    # cond_indep_stack lists a site's plates outermost first
    nested = {f.name for frames in latent_frames.values() for f in frames[1:]}
    top = [all_frames[n] for n in all_frames if n not in nested]
    if len(top) == 1:
        return top[0]
    if not top:  # plates nested in different orders at different sites
        top = list(all_frames.values())
    for choose in (lambda f: f.name in subsamples and (f.full_size or f.size) != f.size, lambda f: f.name == "data"):
        picked = [f for f in top if choose(f)]
        if len(picked) == 1:
            return picked[0]
    raise ValueError(
        f"the latent sites are in several outermost plates {sorted(f.name for f in top)}; "
        "say which one is the data plate (data_plate='name')"
    )


# --------------------------------------------------------------------------------------------
# Log joints
# --------------------------------------------------------------------------------------------
def user_scale(site: dict, skip: Sequence[str] = ()):
    """A sample site's scale without its plates' subsampling factors: ``site["scale"]`` divided by
    ``size / subsample_size`` of every subsampled plate around it (except the plates named in
    ``skip``, replayed particle plates, which add no factor). What remains is the user's own scale
    (``poutine.scale``: KL annealing β, per-example weights), a number or a tensor; exactly 1.0
    when there is none."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size and frame.name not in skip:
            factor = factor * frame.full_size / frame.size
    scale = site["scale"]
    if factor == 1.0:
        return scale
    scale = scale / factor
    if not torch.is_tensor(scale) and math.isclose(scale, 1.0, rel_tol=1e-12):
        return 1.0  # N/B · (B/N) up to rounding: no scale at all (the chain stays bit-identical)
    return scale


def log_joint_terms(model, unconstrained: Latents, args: Tuple, kwargs: Dict, sites: LatentSites):
    """``(local, global_)``: the log joint of ``model`` at latents given in unconstrained space.

    Each latent u of ``unconstrained`` (a subset of ``sites.sites``; the others are sampled from
    the model as usual, so pass them all) is mapped to ``z = T(u)`` through its site's bijection
    and log|det ∂z/∂u| is added to the term of that site. Every sample site contributes its
    masked log probability, scaled by the user's scale but not by subsampling (:func:`user_scale`;
    the recorded subsample indices and outer batch plates of ``sites`` are replayed).

    :returns: ``local``, shape ``sites.rows_shape`` ((B,) or (S, B) under a particle plate): the
        per-example log joint of every site inside the data plate (None when no site is inside
        it), and ``global_``, shape ``sites.batch_shape`` (a scalar without particle plates): the
        sum of every other site's log probability (global latents' priors and Jacobians, global
        observations). The full-data log joint of a run whose plate is not subsampled is
        ``global_ + local.sum(-1)``; with subsampling, ``global_ + (N/B) local.sum(-1)`` estimates it.
    """
    values, ladj = {}, {}
    for name, u in unconstrained.items():
        site = sites.sites[name]
        z = site.transform(u)
        values[name] = z
        if not site.is_identity:
            ladj[name] = site.log_abs_det_jacobian(u, z)
    with poutine.block():
        conditioned = _ParamsUnrecorded()(poutine.condition(model, data=values))
        replayed = _ReplaySubsamples(sites.subsamples)(_ReplayOuterPlates(sites.batch_plates)(conditioned))
        trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
    plate = sites.plate
    replayed_plates = [p.name for p in sites.batch_plates]
    local, global_ = None, None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        scale = user_scale(site, replayed_plates)
        log_prob = scale_and_mask(site["unscaled_log_prob"], scale=scale, mask=site["mask"])  # poutine.mask and .scale
        if name in ladj:
            log_prob = log_prob + ladj[name]
        in_plate = plate is not None and any(f.name == plate.name for f in site["cond_indep_stack"])
        if in_plate:
            term = sites.reduce_to_rows(log_prob)
            local = term if local is None else local + term
        else:
            term = sites.reduce_to_batch(log_prob)
            global_ = term if global_ is None else global_ + term
    if global_ is None:
        ref = next(iter(values.values()))
        global_ = torch.zeros(sites.batch_shape, dtype=ref.dtype, device=ref.device)
    return local, global_


def per_example_log_joint(model, latents: Latents, args: Tuple, kwargs: Dict, plate: Optional[PlateInfo]):
    """log p(x, z) per example, shape (B,) (or () without a data plate), unscaled by subsampling.

    Latents are given in *constrained* space and no Jacobian is added. The sum of every sample
    site's masked log probability, scaled by the user's scale only (:func:`user_scale`), reduced
    over all dims but the data plate's. Sites
    outside the data plate (global ones) are left out; they do not depend on the local latents.
    Kept for callers of real-valued models; :func:`log_joint_terms` is the general form.
    """
    subsamples = {plate.name: plate.subsample} if plate is not None and plate.subsample is not None else {}
    with poutine.block():
        conditioned = _ParamsUnrecorded()(poutine.condition(model, data=latents))
        trace = poutine.trace(_ReplaySubsamples(subsamples)(conditioned)).get_trace(*args, **kwargs)
    trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
    total = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        log_prob = scale_and_mask(site["unscaled_log_prob"], scale=user_scale(site), mask=site["mask"])
        if plate is None:
            term = log_prob.sum()
        else:
            if not any(f.name == plate.name for f in site["cond_indep_stack"]):
                continue
            term = _sum_except(log_prob, plate.dim)
        total = term if total is None else total + term
    return total


def _sum_except(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum a batch-shaped log prob over every dim but ``dim`` (a negative plate dim)."""
    if log_prob.dim() < -dim:
        return log_prob.sum()  # broadcast over the plate: same for every example
    keep = log_prob.dim() + dim
    other = [d for d in range(log_prob.dim()) if d != keep]
    return log_prob.sum(other) if other else log_prob
