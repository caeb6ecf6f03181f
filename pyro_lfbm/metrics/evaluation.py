r"""Scoring posterior inference on a :class:`~pyro_lfbm.models.LatentModel`.

Given images x (N, C, H, W) and inferred latents z (N, D) these helpers compute

- the reconstruction error :func:`reconstruction_mse`, mean over pixels of (g(z) − x)², (N,);
- the log joint and its parts :func:`log_joint_terms`, log p_α(z) and log p_β(x | z), (N,);
- the rate :func:`latent_rate`, KL(q(z | x) ‖ p_α(z)) of a proposal against the prior, (N,);
- an importance-weighted estimate of the marginal likelihood :func:`iwae_log_px`,

  .. math:: \hat{\mathcal L}_P(x) = \log \frac1P \sum_{p=1}^P \frac{p(x, z_p)}{q(z_p)},
            \qquad z_p \sim q,

  whose expectation is a lower bound of log p(x) for every proposal q and rises to log p(x) as
  P grows (Burda et al., 2016). Proposals (:class:`GaussianProposal`) come from an encoder guide
  (:meth:`GaussianProposal.from_guide`), from a Laplace approximation around a Langevin result
  (:meth:`GaussianProposal.laplace`) or from posterior samples (:meth:`GaussianProposal.from_samples`),
  or are any amortized guide's q(z | x) (:class:`GuideProposal`);

and :func:`langevin_trajectory` records the latents (and the wall time) of one Langevin run at
several step counts, for error-against-cost curves. Every helper evaluates the model in
``eval()`` mode (BatchNorm with running statistics, so images and particles do not interact)
and restores its mode afterwards. Results are CPU tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import pyro.distributions as dist
import torch
from tqdm.auto import tqdm

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.dataset import batched_log_joint_terms as log_joint_terms
from pyro_lfbm.infer.langevin import short_run_langevin
from pyro_lfbm.infer.modes import eval_mode

__all__ = [
    "GaussianProposal",
    "GuideProposal",
    "inference_row",
    "iwae_log_px",
    "langevin_trajectory",
    "latent_rate",
    "log_joint_terms",
    "reconstruction_mse",
]


def _device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_pairs(x: torch.Tensor, z: torch.Tensor) -> None:
    if x.dim() < 2 or z.dim() != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"need x (N, C, H, W) and z (N, D) with the same N; got {tuple(x.shape)} and {tuple(z.shape)}")


@torch.no_grad()
def reconstruction_mse(model, x: torch.Tensor, z: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """Per-image mean squared error between g(z) and x over all pixels, shape (N,)."""
    _check_pairs(x, z)
    device, out = _device(model), []
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb, zb = x[s : s + batch_size].to(device), z[s : s + batch_size].to(device)
            out.append((model.generator(zb) - xb).pow(2).flatten(1).mean(1).cpu())
    return torch.cat(out)


@dataclass
class GaussianProposal:
    """Per-image Gaussian proposals q_n(z) = N(loc_n, L_n L_nᵀ) for importance sampling.

    :ivar torch.Tensor loc: (N, D).
    :ivar torch.Tensor scale_tril: (N, D, D) lower-triangular Cholesky factors.
    """

    loc: torch.Tensor
    scale_tril: torch.Tensor

    def __post_init__(self):
        if self.loc.dim() != 2 or self.scale_tril.shape != (*self.loc.shape, self.loc.shape[-1]):
            raise ValueError(f"need loc (N, D) and scale_tril (N, D, D); got {tuple(self.loc.shape)} and {tuple(self.scale_tril.shape)}")

    def __len__(self) -> int:
        return self.loc.shape[0]

    def dist(self, start: int = 0, stop: Optional[int] = None, device=None) -> dist.MultivariateNormal:
        """The proposals of images ``start:stop`` as one distribution, batch shape (B,), event (D,)."""
        loc, tril = self.loc[start:stop], self.scale_tril[start:stop]
        if device is not None:
            loc, tril = loc.to(device), tril.to(device)
        return dist.MultivariateNormal(loc, scale_tril=tril)

    @classmethod
    def from_diag(cls, loc: torch.Tensor, scale: torch.Tensor) -> "GaussianProposal":
        """Diagonal Gaussians N(loc, diag(scale²)); loc and scale (N, D)."""
        return cls(loc.detach().cpu(), torch.diag_embed(scale.detach().cpu()))

    @classmethod
    @torch.no_grad()
    def from_guide(cls, guide, x: torch.Tensor, *, batch_size: int = 500) -> "GaussianProposal":
        """q_φ(z | x) of an :class:`~pyro_lfbm.infer.EncoderGuide` (its ``encode(x) -> (loc, scale)``)."""
        device = next(iter(guide.parameters())).device
        locs, scales = [], []
        with eval_mode(guide):
            for s in range(0, x.shape[0], batch_size):
                loc, scale = guide.encode(x[s : s + batch_size].to(device))
                locs.append(loc.cpu())
                scales.append(scale.cpu())
        return cls.from_diag(torch.cat(locs), torch.cat(scales))

    @classmethod
    def from_samples(cls, samples: torch.Tensor, *, inflate: float = 1.0, jitter: float = 1e-4) -> "GaussianProposal":
        """Gaussians fitted to posterior samples (S, N, D): sample mean and covariance (× inflate²)."""
        if samples.dim() != 3 or samples.shape[0] < 2:
            raise ValueError(f"need samples of shape (S >= 2, N, D); got {tuple(samples.shape)}")
        samples = samples.detach().cpu()
        loc = samples.mean(0)
        centred = (samples - loc).permute(1, 0, 2)  # (N, S, D)
        cov = centred.transpose(1, 2) @ centred / (samples.shape[0] - 1)
        cov = cov * inflate**2 + jitter * torch.eye(loc.shape[-1])
        return cls(loc, torch.linalg.cholesky(cov))

    @classmethod
    def laplace(
        cls,
        model,
        x: torch.Tensor,
        z: torch.Tensor,
        *,
        min_precision: float = 1e-2,
        inflate: float = 1.0,
        batch_size: int = 500,
    ) -> "GaussianProposal":
        r"""Laplace approximation around z (N, D): N(z, (−∇²_z log p(x, z))⁻¹ × inflate²).

        The Hessian of each image's log joint is computed exactly (D Hessian-vector products per
        batch); its eigenvalues are clipped at ``-min_precision`` so that the precision is
        positive definite even where z is not at a mode.
        """
        _check_pairs(x, z)
        device, trils = _device(model), []
        with eval_mode(model), posterior_inference():
            for s in range(0, x.shape[0], batch_size):
                xb = x[s : s + batch_size].to(device)
                zb = z[s : s + batch_size].to(device)
                precision = -_hessian(lambda v: model.log_joint(xb, **model.split_latents(v)), zb)
                precision = 0.5 * (precision + precision.transpose(1, 2))
                evals, evecs = torch.linalg.eigh(precision)
                var = 1.0 / evals.clamp_min(min_precision)
                cov = (evecs * var.unsqueeze(1)) @ evecs.transpose(1, 2) * inflate**2
                cov = 0.5 * (cov + cov.transpose(1, 2))
                trils.append(torch.linalg.cholesky(cov).cpu())
        return cls(z.detach().cpu(), torch.cat(trils))


def _hessian(log_density_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Per-row Hessians (B, D, D) of a per-row log density (B,) at z (B, D); rows independent."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density_fn(z).sum(), z, create_graph=True)
        rows = []
        for j in range(z.shape[1]):
            (row,) = torch.autograd.grad(grad[:, j].sum(), z, retain_graph=True)
            rows.append(row)
    return torch.stack(rows, dim=1).detach()


@dataclass
class GuideProposal:
    """The proposals q_φ(z | x_n) of any amortized guide with ``distribution(x)`` (batch (B,), event (D,)),
    for images x (N, C, H, W): e.g. the :class:`~pyro_lfbm.infer.LayerChainNormal` of a
    :class:`~pyro_lfbm.infer.ConditionalEncoderGuide`, which is no single Gaussian. The guide's context
    is computed per batch of images in ``eval()`` mode; the distribution it returns must not depend on
    the mode afterwards (the chain's conditioners are plain MLPs).

    :ivar torch.nn.Module guide: the guide.
    :ivar torch.Tensor x: (N, C, H, W) images.
    """

    guide: torch.nn.Module
    x: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def dist(self, start: int = 0, stop: Optional[int] = None, device=None) -> dist.Distribution:
        """q(z | x) of images ``start:stop``, batch shape (B,), event (D,)."""
        x = self.x[start:stop]
        with eval_mode(self.guide), torch.no_grad():
            return self.guide.distribution(x.to(device) if device is not None else x)


@torch.no_grad()
def iwae_log_px(
    model,
    x: torch.Tensor,
    proposal,
    *,
    num_particles: int = 100,
    batch_size: int = 100,
    particle_chunk: int = 100,
    seed: Optional[int] = 0,
    progress: bool = False,
) -> torch.Tensor:
    r"""Importance-weighted estimate of log p(x) for every image of x (N, C, H, W), shape (N,).

    :math:`\log \frac1P \sum_p p(x, z_p) / q(z_p)` with ``P = num_particles`` independent draws
    z_p ~ q from ``proposal`` (a :class:`GaussianProposal` or a :class:`GuideProposal`). In
    expectation this is a lower bound of log p(x) that tightens as P grows. Particles are evaluated ``particle_chunk`` at a time
    (memory ∝ particle_chunk × batch_size images); ``seed`` fixes the draws. Every
    :class:`~pyro_lfbm.models.LatentModel` works, a hierarchical one with z its layers concatenated
    (``model.split_latents``).
    """
    if len(proposal) != x.shape[0]:
        raise ValueError(f"the proposal has {len(proposal)} images but x has {x.shape[0]}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    device, out = _device(model), []
    with eval_mode(model), posterior_inference(), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for s in tqdm(range(0, x.shape[0], batch_size), desc="iwae", disable=not progress, leave=False):
            xb = x[s : s + batch_size].to(device)
            q = proposal.dist(s, s + batch_size, device=device)
            log_w = []
            for c in range(0, num_particles, particle_chunk):
                p = min(particle_chunk, num_particles - c)
                zp = q.sample((p,))  # (p, B, D)
                b = xb.shape[0]
                lp = model.log_joint(xb.expand(p, *xb.shape).reshape(p * b, *xb.shape[1:]),
                                     **model.split_latents(zp.reshape(p * b, -1)))
                log_w.append(lp.reshape(p, b) - q.log_prob(zp))
            log_w = torch.cat(log_w)
            out.append((torch.logsumexp(log_w, 0) - math.log(num_particles)).cpu())
    return torch.cat(out)


@torch.no_grad()
def latent_rate(
    model,
    proposal,
    *,
    num_particles: int = 16,
    batch_size: int = 500,
    seed: Optional[int] = 0,
    progress: bool = False,
) -> torch.Tensor:
    r"""The rate of each image's code, KL(q_n ‖ p_α) for the proposals q_n of ``proposal``, shape (N,).

    .. math:: R_n = \mathbb E_{q_n}[-\log p_\alpha(z)] - \mathrm H(q_n),
              \qquad \hat R_n = \frac1P \sum_{p=1}^P -\log p_\alpha(z_p) - \mathrm H(q_n),
              \quad z_p \sim q_n,

    the ELBO's KL term, an unbiased estimate with ``P = num_particles`` draws (``seed`` fixes them).
    The entropy is exact where the proposal has it in closed form (:class:`GaussianProposal`); for a
    :class:`GuideProposal` of a chain it is estimated from the same draws, −(1/P) Σ log q_n(z_p).
    Alemi, Fischer and Dillon, "Uncertainty in the Variational Information Bottleneck" (2018, arXiv
    1807.00906), use it as an out-of-distribution score; higher means the image's code costs more nats
    under the prior. Only ``model.prior`` is evaluated (in ``eval()`` mode); z is the latents of all
    layers concatenated, as the proposal's.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    device, out = _device(model), []
    with eval_mode(model), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for s in tqdm(range(0, len(proposal), batch_size), desc="rate", disable=not progress, leave=False):
            q = proposal.dist(s, s + batch_size, device=device)
            zp = q.sample((num_particles,))  # (P, B, D)
            log_p = model.prior.log_prob(zp.reshape(-1, zp.shape[-1])).reshape(zp.shape[:2])
            try:
                entropy = q.entropy()
            except NotImplementedError:
                entropy = -q.log_prob(zp).mean(0)
            out.append((-log_p.mean(0) - entropy).cpu())
    return torch.cat(out)


def langevin_trajectory(
    model,
    x: torch.Tensor,
    record_steps: Iterable[int],
    *,
    step_size: float = 0.1,
    noise: bool = False,
    init: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    batch_size: int = 500,
    seed: Optional[int] = 0,
    progress: bool = True,
    desc: str = "langevin",
) -> Dict[int, tuple]:
    """One Langevin run per batch, with the latents and wall time recorded at several step counts.

    Gradient ascent (``noise=False``, the paper's test-time inference) from the same start is
    deterministic, so the latents after k steps of a K-step run are those of a k-step run: one
    run of ``max(record_steps)`` steps gives every point of an error-against-steps curve.

    :param record_steps: step counts k ≥ 0 to record (0 = the initial state).
    :param init: ``init(x_batch) -> z0`` (B, D) (e.g. an encoder mean, for hybrid inference);
        default z₀ ~ N(0, I). Its time counts as inference time.
    :returns: ``{k: (z (N, D), seconds)}``, seconds = total wall time over all images until step k
        (the recording itself is not timed).
    """
    steps = sorted(set(int(k) for k in record_steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"record_steps must be non-negative step counts, got {steps}")
    device, num_steps = _device(model), steps[-1]
    zs: Dict[int, list] = {k: [] for k in steps}
    seconds: Dict[int, float] = {k: 0.0 for k in steps}
    with eval_mode(model), posterior_inference(), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for s in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
            xb = x[s : s + batch_size].to(device)
            started = time.perf_counter()
            z0 = init(xb) if init is not None else torch.randn(xb.shape[0], model.latent_dim, device=device)
            z0 = z0.detach()
            paused = [0.0]

            def record(k, position, now):
                if k in seconds:
                    seconds[k] += now - started - paused[0]
                    tic = time.perf_counter()
                    zs[k].append(position.cpu())
                    paused[0] += time.perf_counter() - tic

            record(0, z0, time.perf_counter())
            short_run_langevin(
                lambda lat: model.log_joint(xb, z=lat["z"]),
                {"z": z0},
                num_steps,
                step_size,
                noise=noise,
                callback=lambda k, state: record(k, state.position["z"], time.perf_counter()),
            )
    return {k: (torch.cat(zs[k]), seconds[k]) for k in steps}


def inference_row(
    model,
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    method: str,
    seconds: float,
    gradient_evaluations: float,
    proposal: Optional[GaussianProposal] = None,
    num_particles: int = 100,
    batch_size: int = 100,
    **extra,
) -> Dict[str, float]:
    """One row of an inference comparison for latents z (N, D) of images x (N, C, H, W).

    Columns: ``method``, ``n_images``, ``mse`` (mean reconstruction MSE), ``log_joint`` (mean
    log p(x, z)), ``log_prior`` and ``log_likelihood`` (its parts), ``iwae`` (mean IWAE estimate of
    log p(x) with ``proposal``; NaN without one), ``seconds_per_1000`` (wall time of the inference
    scaled to 1,000 images), ``gradient_evaluations`` (per image), plus ``extra``.
    """
    terms = log_joint_terms(model, x, z, batch_size=max(batch_size, 100))
    iwae = float("nan")
    if proposal is not None:
        iwae = iwae_log_px(model, x, proposal, num_particles=num_particles, batch_size=batch_size).mean().item()
    return {
        "method": method,
        "n_images": int(x.shape[0]),
        "mse": reconstruction_mse(model, x, z).mean().item(),
        "log_joint": (terms["prior"] + terms["likelihood"]).mean().item(),
        "log_prior": terms["prior"].mean().item(),
        "log_likelihood": terms["likelihood"].mean().item(),
        "iwae": iwae,
        "seconds_per_1000": seconds * 1000.0 / x.shape[0],
        "gradient_evaluations": gradient_evaluations,
        **extra,
    }
