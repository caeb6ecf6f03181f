"""Held-out-digit anomaly detection: decision functions and metrics.

The paper's decision function is the negative log joint −log p(x, z) = −log p_β(x | z) − log p_α(z)
of z inferred by test-time Langevin (400 noise-free steps of 0.1 from z₀ ~ N(0, I)). Its two
parts are reported as decision functions of their own: ``recon`` = −log p_β(x | z) and
``prior`` = −log p_α(z). Metrics follow the protocol's sources: AUPRC as the trapezoidal area
under ``sklearn.metrics.precision_recall_curve`` (held-out digit = positive class), beside average
precision and AUROC.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Dict, Optional

import numpy as np
from PIL import Image
import torch
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score
from tqdm.auto import tqdm

from pyro_lfbm._context import posterior_inference
from pyro_lfbm.infer.adaptation import StepSizeAdaptation
from pyro_lfbm.infer.dataset import InferenceResult, infer_dataset
from pyro_lfbm.infer.modes import eval_mode, module_mode
from pyro_lfbm.infer.samplers import MALA, MALA_OPTIMAL_ACCEPT_PROB

DECISION_FUNCTIONS = ("joint", "recon", "prior")


def anomaly_scores(
    model,
    x: torch.Tensor,
    *,
    num_steps: int = 400,
    step_size: float = 0.1,
    batch_size: int = 100,
    batchnorm: str = "eval",
    seed: Optional[int] = 0,
    progress: bool = True,
    inference: Optional[Callable[..., InferenceResult]] = None,
    compile: bool = False,
    init: Optional[Callable[..., Dict[str, torch.Tensor]]] = None,
) -> tuple[Dict[str, torch.Tensor], InferenceResult]:
    """Scores (higher = more anomalous) of every image in ``x`` (N, C, H, W).

    :param str batchnorm: ``"eval"`` scores with BatchNorm's running statistics (each image on its
        own); ``"train"`` with the statistics of each test batch, as the official LFBM code does
        (it never calls ``eval()``), which makes a score depend on the other images in its batch.
    :param seed: seeds z₀ and the batch order so that scores are reproducible (None leaves the
        RNG alone).
    :param inference: the batched inference, with the signature of
        :func:`~pyro_lfbm.infer.dataset.infer_dataset` (the default; data-parallel runs pass
        :func:`pyro_lfbm.train.distributed.sharded_inference`, which splits each batch over the processes).
    :param bool compile: compiled chains (``infer_dataset(..., compile=True)``).
    :param init: ``init(x_batch, mask_batch) -> {site: z₀}`` replaces z₀ ~ N(0, I), e.g. an encoder
        guide's ``init_fn`` (chains from the encoder mean).

    Images are scored in a random order, never in the order of ``x``: with ``batchnorm="train"``
    a batch made only of anomalies (a test set sorted by class) would be normalised by anomaly
    statistics, leaking the label into the score.
    :returns: ``({"joint": (N,), "recon": (N,), "prior": (N,)}, inference result)``.
    """
    if batchnorm not in ("eval", "train"):
        raise ValueError(f"batchnorm must be 'eval' or 'train', got {batchnorm!r}")
    with module_mode(model, training=batchnorm == "train"), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        order = torch.randperm(x.shape[0])
        result = (inference or infer_dataset)(
            model, x[order], num_steps=num_steps, step_size=step_size, noise=False, batch_size=batch_size,
            progress=progress, desc="scoring", **({"compile": True} if compile else {}), **({"init": init} if init else {}),
        )
    restore = torch.argsort(order)
    result.z, result.log_joint = result.z[restore], result.log_joint[restore]
    result.log_joint_terms = {k: v[restore] for k, v in result.log_joint_terms.items()}
    recon = -result.log_joint_terms["likelihood"]
    prior = -result.log_joint_terms["prior"]
    return {"joint": recon + prior, "recon": recon, "prior": prior}, result


def anomaly_metrics(is_anomaly, score) -> Dict[str, float]:
    """AUPRC (trapezoid under the precision-recall curve), average precision and AUROC.

    :param is_anomaly: (N,) 1 for the held-out class, 0 for normal images.
    :param score: (N,) higher = more anomalous.
    """
    y = np.asarray(torch.as_tensor(is_anomaly).cpu(), dtype=int)
    s = np.asarray(torch.as_tensor(score).detach().cpu(), dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal-length vectors")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity; the model or the inference diverged")
    if y.min() == y.max():
        raise ValueError("need both normal and anomalous images to compute AUPRC")
    precision, recall, _ = precision_recall_curve(y, s)
    return {
        "auprc": float(auc(recall, precision)),
        "ap": float(average_precision_score(y, s)),
        "auroc": float(roc_auc_score(y, s)),
        "prevalence": float(y.mean()),
    }


def png_code_length(x: torch.Tensor) -> torch.Tensor:
    """The length in **nats** of each image's lossless PNG encoding (zlib level 9), a measure of its complexity.

    Serrà et al., "Input complexity and out-of-distribution detection with likelihood-based generative
    models", ICLR 2020 (arXiv 1909.11480), Eq. 2: S(x) = −log p(x) − L(x) removes the part of a
    likelihood that tracks how complex an image is. Images are quantised back to 8 bits from [−1, 1].

    :param x: (N, C, H, W) images in [−1, 1] with C = 1 or 3.
    :returns: (N,) float64 code lengths in nats (bytes · 8 · ln 2).
    """
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"png_code_length needs images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().cpu().double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    lengths = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", compress_level=9)
        lengths.append(buffer.tell())
    return torch.tensor(lengths, dtype=torch.float64) * 8 * math.log(2)


def conditional_prior_draws(
    prior,
    given: torch.Tensor,
    num_free: int,
    *,
    num_samples: int = 8,
    num_warmup: int = 100,
    num_steps: int = 100,
    initial_step_size: float = 0.1,
    target_accept_prob: float = MALA_OPTIMAL_ACCEPT_PROB,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draws of the last ``num_free`` coordinates of z ~ p_α given the others, by MALA.

    The target of row (b, s) is :math:`p_\alpha(z_{\text{free}} \mid z_{\text{given}} = \text{given}_b)
    \propto p_\alpha([\text{given}_b, z_{\text{free}}])`: a joint prior (a flow over every layer)
    has no closed-form conditional, and MALA (:class:`~pyro_lfbm.infer.samplers.MALA`) needs only the
    joint density. Chains start at N(0, I), the flow's base. During ``num_warmup`` steps one step
    size shared by every chain is adapted by Pyro's dual averaging (as HMC's warmup, one window:
    :class:`~pyro_lfbm.infer.adaptation.StepSizeAdaptation`) toward ``target_accept_prob``; the
    ``num_steps`` steps after it use the averaged step size. A trained
    prior's conditionals can be far narrower than N(0, I): a fixed step of 0.5 accepted no move on
    this project's hierarchical MNIST models, 0.1 accepted nine in ten.

    :param prior: a :class:`~pyro_lfbm.priors.LatentPrior` over D dimensions.
    :param given: (B, D − num_free) the fixed leading coordinates.
    :returns: ``(draws, acceptance)``: draws (S, B, num_free) with S = ``num_samples`` and the mean
        acceptance probability of each chain's moves after the warmup (S, B).
    """
    if given.dim() != 2 or not 1 <= num_free or given.shape[1] + num_free != prior.latent_dim:
        raise ValueError(f"given must be (B, {prior.latent_dim} - num_free) with num_free >= 1; "
                         f"got given {tuple(given.shape)} and num_free {num_free}")
    if num_samples < 1 or num_steps < 1 or num_warmup < 0:
        raise ValueError(f"num_samples and num_steps must be at least 1 and num_warmup at least 0, "
                         f"got {num_samples}, {num_steps} and {num_warmup}")
    rows = given.detach().repeat(num_samples, 1)  # (S·B, D − num_free), sample-major

    def log_density(position):
        return prior.log_prob(torch.cat([rows, position["free"]], dim=-1))

    sampler = MALA()
    start = torch.randn(rows.shape[0], num_free, dtype=given.dtype, device=given.device, generator=generator)
    # one window, Pyro's HMC gain: the statistic is one step's mean over the rows
    adaptation = (StepSizeAdaptation(target_accept_prob, num_warmup, initial_step_size, gamma=0.05, windowed=False)
                  if num_warmup > 0 else None)
    step_size, acceptance = initial_step_size, torch.zeros(rows.shape[0], dtype=given.dtype, device=given.device)
    with posterior_inference():
        state = sampler.init({"free": start}, log_density)
        for t in range(num_warmup + num_steps):
            state, info = sampler.step(state, log_density, step_size, generator=generator)
            if t < num_warmup:
                step_size = adaptation.update(float(info.acceptance_prob.mean()))
            else:
                acceptance += info.acceptance_prob
    shape = (num_samples, given.shape[0])
    return state.position["free"].reshape(*shape, num_free), (acceptance / num_steps).reshape(shape)


def _layer_sizes(model, num_layers: int) -> tuple:
    """The layer sizes (d₁, …, d_L) of a hierarchical model whose ``num_layers`` lowest layers a likelihood ratio redraws."""
    dims = tuple(getattr(model, "latent_dims", ()))
    if len(dims) < 2:
        raise ValueError("the lower-layer likelihood ratio needs a hierarchical model (latents at two or more layers)")
    if not 1 <= num_layers < len(dims):
        raise ValueError(f"num_layers must be between 1 and {len(dims) - 1} for a model of {len(dims)} layers, got {num_layers}")
    return dims


def lower_layer_likelihood_ratio(
    model,
    x: torch.Tensor,
    z: torch.Tensor,
    num_layers: int,
    *,
    num_samples: int = 8,
    num_warmup: int = 100,
    num_steps: int = 100,
    batch_size: int = 100,
    seed: Optional[int] = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The likelihood ratio LLR^{>k} of Havtorn et al. at inferred latents: how much of the fit of
    x is owed to its own lowest ``num_layers`` = k latent layers rather than to draws of them
    from the prior given the layers above.

    .. math:: \mathrm{LLR}^{>k}(x) = \log p_\beta(x \mid z^*) - \frac1S \sum_{s=1}^S
       \log p_\beta(x \mid z^*_{>k}, z^{(s)}_{\le k}), \qquad
       z^{(s)}_{\le k} \sim p_\alpha(z_{\le k} \mid z^*_{>k}),

    where z* (the test-time z) is split into its upper layers z*_{>k} and its k lowest ones, and the
    draws come from the prior's exact conditionals where it has them (``prior.sample_lower_layers``, e.g.
    :class:`~pyro_lfbm.priors.TopDownPrior`; acceptance 1), else from :func:`conditional_prior_draws`. Higher is more anomalous: an image of a training
    class is explained by its upper layers, so redrawing the lowest ones costs it little, while an
    image that only the low-level layers fit loses much (Havtorn, Frellsen, Hauberg, Maaløe,
    "Hierarchical VAEs Know What They Don't Know", ICML 2021, arXiv 2102.08248, Eq. 9: there
    LLR^{>k} = L − L^{>k} for ELBOs with the encoder's q over the upper layers; here both terms are
    taken at z*, and the lower layers' prior-to-posterior term of L is left out, because a joint
    flow prior has no tractable conditional density).

    :param model: a :class:`~pyro_lfbm.models.HierarchicalLatentModel` (layers ``latent_dims``, top first).
    :param x: (N, C, H, W) images; ``z``: (N, Σ d_l) their inferred latents, layers concatenated.
    :param int num_layers: k, from 1 to L − 1.
    :returns: ``(llr, acceptance)``, both (N,): the score and the mean MALA acceptance of the draws.
        The generator runs in the mode the model is in (BatchNorm on running or on batch statistics:
        then each batch holds ``num_samples`` redraws of ``batch_size`` images).
    """
    dims = _layer_sizes(model, num_layers)
    if z.shape != (x.shape[0], sum(dims)):
        raise ValueError(f"z must be ({x.shape[0]}, {sum(dims)}) for these images, got {tuple(z.shape)}")
    num_free = sum(dims[len(dims) - num_layers:])
    exact_draws = getattr(model.prior, "sample_lower_layers", None)
    device = model.prior.base_loc.device
    scores, acceptance = [], []
    with torch.no_grad(), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        order = torch.randperm(x.shape[0])  # batches of mixed classes (as anomaly_scores), for BatchNorm on batch statistics
        for s in tqdm(range(0, x.shape[0], batch_size), desc=f"llr>{num_layers}", disable=not progress, leave=False):
            xb, zb = x[order[s : s + batch_size]].to(device), z[order[s : s + batch_size]].to(device)
            if exact_draws is not None:
                draws = exact_draws(zb[:, :-num_free], num_layers, num_samples)
                accepted = torch.ones(num_samples, zb.shape[0], dtype=zb.dtype)
            else:
                draws, accepted = conditional_prior_draws(model.prior, zb[:, :-num_free], num_free, num_samples=num_samples,
                                                          num_warmup=num_warmup, num_steps=num_steps)
            upper = zb[:, :-num_free].expand(num_samples, *zb[:, :-num_free].shape)
            redrawn = torch.cat([upper, draws], dim=-1).reshape(-1, zb.shape[1])  # (S·B, D)
            fit = model.log_joint_terms(xb, zb)["likelihood"]
            refit = model.log_joint_terms(xb.repeat(num_samples, 1, 1, 1), redrawn)["likelihood"].reshape(num_samples, -1)
            scores.append((fit - refit.mean(0)).cpu())
            acceptance.append(accepted.mean(0).cpu())
    restore = torch.argsort(order)
    return torch.cat(scores)[restore], torch.cat(acceptance)[restore]


def importance_weighted_likelihood_ratio(
    model,
    x: torch.Tensor,
    proposal,
    num_layers: int,
    *,
    num_particles: int = 32,
    batch_size: int = 100,
    seed: Optional[int] = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Havtorn et al.'s likelihood ratio LLR^{>k} = L − L^{>k} in its own form: the difference of two
    importance-weighted bounds, for a prior with exact layer conditionals and an encoder's q.

    .. math:: L = \log \frac1P \sum_p \frac{p_\beta(x \mid z_p)\, p_\alpha(z_p)}{q(z_p \mid x)}, \qquad
       L^{>k} = \log \frac1P \sum_p \frac{p_\beta(x \mid z_{p,>k}, z'_{p,\le k})\, p_\alpha(z_{p,>k})}{q(z_{p,>k} \mid x)},

    with z_p ~ q(z | x) and z'_{p,≤k} ~ p_α(z_{≤k} | z_{p,>k}): the k lowest layers drawn from the prior given the
    layers above (Havtorn, Frellsen, Hauberg, Maaløe, "Hierarchical VAEs Know What They Don't Know", ICML 2021,
    arXiv 2102.08248, Eqs. 7–9, there with one draw per bound and here with P). p_α(z_{>k}) is the upper layers'
    terms of a top-down prior (the lower layers' conditionals integrate to one) and q(z_{>k} | x) the marginal of
    the proposal's leading coordinates. Higher is more anomalous. Unlike
    :func:`lower_layer_likelihood_ratio`, no term is taken at a point.

    :param model: a :class:`~pyro_lfbm.models.HierarchicalLatentModel` whose prior has ``layer_log_probs`` and
        ``sample_lower_layers`` (:class:`~pyro_lfbm.priors.TopDownPrior`); scored with BatchNorm on running
        statistics, as :func:`~pyro_lfbm.metrics.iwae_log_px` (the particles of an image are no batch of images).
    :param x: (N, C, H, W) images.
    :param proposal: a :class:`~pyro_lfbm.metrics.GaussianProposal` of N images over the concatenated layers,
        e.g. ``GaussianProposal.from_guide(encoder, x)``.
    :param int num_layers: k, from 1 to L − 1.
    :returns: ``(llr, bound)``, both (N,): the ratio and L, the importance-weighted bound of log p(x).
    """
    dims, prior = _layer_sizes(model, num_layers), model.prior
    if not hasattr(prior, "layer_log_probs") or not hasattr(prior, "sample_lower_layers"):
        raise ValueError("the importance-weighted likelihood ratio needs a hierarchical model whose prior has exact layer "
                         "conditionals (TopDownPrior: --set layer_prior=top-down)")
    if not hasattr(proposal, "loc"):
        raise ValueError("the importance-weighted likelihood ratio needs q(z_{>k} | x) in closed form: pass a "
                         f"GaussianProposal (one Gaussian per image), not a {type(proposal).__name__}")
    if len(proposal) != x.shape[0] or proposal.loc.shape[-1] != sum(dims):
        raise ValueError(f"the proposal must hold {x.shape[0]} Gaussians over {sum(dims)} dimensions, "
                         f"got {len(proposal)} over {proposal.loc.shape[-1]}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    num_upper_layers, upper = len(dims) - num_layers, sum(dims[: len(dims) - num_layers])
    device = prior.base_loc.device
    ratios, bounds = [], []
    with eval_mode(model), torch.no_grad(), torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for s in tqdm(range(0, x.shape[0], batch_size), desc=f"llr>{num_layers} (iw)", disable=not progress, leave=False):
            xb = x[s : s + batch_size].to(device)
            b = xb.shape[0]
            q = proposal.dist(s, s + b, device=device)
            q_upper = torch.distributions.MultivariateNormal(q.loc[:, :upper], scale_tril=q.scale_tril[:, :upper, :upper])
            z = q.sample((num_particles,))  # (P, B, D)
            flat = z.reshape(-1, z.shape[-1])
            images = xb.expand(num_particles, *xb.shape).reshape(-1, *xb.shape[1:])
            layer_terms = prior.layer_log_probs(flat).reshape(num_particles, b, len(dims))
            fit = model.log_joint_terms(images, flat)["likelihood"].reshape(num_particles, b)
            redrawn = torch.cat([flat[:, :upper], prior.sample_lower_layers(flat[:, :upper], num_layers)[0]], dim=-1)
            refit = model.log_joint_terms(images, redrawn)["likelihood"].reshape(num_particles, b)
            bound = torch.logsumexp(fit + layer_terms.sum(-1) - q.log_prob(z), 0) - math.log(num_particles)
            upper_bound = torch.logsumexp(refit + layer_terms[..., :num_upper_layers].sum(-1) - q_upper.log_prob(z[..., :upper]), 0) \
                - math.log(num_particles)
            ratios.append((bound - upper_bound).cpu())
            bounds.append(bound.cpu())
    return torch.cat(ratios), torch.cat(bounds)
