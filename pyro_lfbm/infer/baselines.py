"""Per-image posterior baselines on a fixed batch of a frozen model: AutoNormal (SVI) and MALA (MCMC).

Both treat each image's z as its own free variable, so they are run on a handful of images as
references for the amortized and short-run methods, never on a minibatch stream.

.. warning:: Use :class:`~pyro.infer.autoguide.AutoNormal`, not ``AutoDiagonalNormal`` /
   ``AutoMultivariateNormal`` / ``AutoIAFNormal``: those ``AutoContinuous`` guides flatten all
   latents into one (B·D) vector that is silently shared across whatever batches they are called
   on. On one fixed batch (as here) every guide is fine; AutoNormal keeps (B, D) parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_sample
from tqdm.auto import tqdm

from pyro_lfbm.infer.kernel import LangevinKernel
from pyro_lfbm.infer.mala import MALA_OPTIMAL_ACCEPT_PROB
from pyro_lfbm.infer.modes import eval_mode, frozen_parameters


@dataclass
class AutoNormalFit:
    """A fitted AutoNormal guide: per-image loc and scale (B, D), ELBO trace and cost."""

    guide: AutoNormal
    loc: torch.Tensor
    scale: torch.Tensor
    losses: list
    gradient_evaluations: int
    seconds: float


def fit_autonormal(
    model,
    x: torch.Tensor,
    *,
    num_steps: int = 1000,
    lr: float = 0.05,
    num_particles: int = 1,
    init_scale: float = 0.1,
    init_loc_fn: Callable = init_to_sample,
    progress: bool = True,
) -> AutoNormalFit:
    """Fit ``AutoNormal`` (one diagonal Gaussian per image) to p(z | x) of a frozen model by SVI.

    The optimizer is Adam (``ClippedAdam``) with ``lr`` decaying to ``lr / 10`` over the run.
    The model's parameters are hidden from SVI (``poutine.block(hide_types=["param"])``) and do
    not require gradients meanwhile; the model runs in ``eval()`` mode. Earlier ``AutoNormal.*``
    entries of Pyro's param store are dropped first (they would otherwise be reused).

    :param x: the fixed batch of images (B, C, H, W).
    :returns: :class:`AutoNormalFit`; ``gradient_evaluations = num_steps × num_particles`` per image.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith("AutoNormal.")]:
        del store[name]
    frozen = poutine.block(model, hide_types=["param"])
    guide = AutoNormal(frozen, init_loc_fn=init_loc_fn, init_scale=init_scale)
    # Adam whose learning rate decays to lr / 10 over the run: a converged, low-noise reference fit.
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / num_steps)})
    svi = SVI(frozen, guide, optim, Trace_ELBO(num_particles=num_particles))
    device = next(iter(model.parameters())).device
    x = x.to(device)
    losses = []
    with eval_mode(model), frozen_parameters(model):
        started = time.perf_counter()
        for _ in tqdm(range(num_steps), desc="AutoNormal", disable=not progress, leave=False):
            losses.append(svi.step(x) / x.shape[0])
        seconds = time.perf_counter() - started
    loc, scale = guide._get_loc_and_scale("z")
    return AutoNormalFit(guide, loc.detach().cpu(), scale.detach().cpu(), losses, num_steps * num_particles, seconds)


@dataclass
class MALAReference:
    """Samples of a long MALA run: z (S, B, D), acceptance rate, (final) step size and cost."""

    samples: torch.Tensor
    acceptance_rate: float
    step_size: float
    gradient_evaluations: int
    seconds: float
    divergences: int = 0


def mala_reference(
    model,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    warmup_steps: int = 500,
    step_size: float = 0.1,
    target_accept_prob: float = MALA_OPTIMAL_ACCEPT_PROB,
    step_sizes: Optional[Sequence[float]] = None,
    target_acceptance: float = 0.5,
    pilot_steps: int = 50,
    init: Optional[torch.Tensor] = None,
    progress: bool = True,
) -> MALAReference:
    """Long-run Metropolis-adjusted Langevin on a fixed batch (B, C, H, W) of a frozen model.

    Every iteration is one :func:`~pyro_lfbm.infer.mala.mala_step` per image (per-image
    Metropolis-Hastings test) through :class:`~pyro_lfbm.infer.LangevinKernel` and
    ``pyro.infer.MCMC``, ``warmup_steps + num_samples`` iterations from ``init`` (B, D) (default
    N(0, I); a short-run Langevin result shortens the burn-in). The model runs in ``eval()`` mode.

    Step size: by default the kernel's dual averaging adapts it during warmup, from ``step_size``,
    toward a mean acceptance probability ``target_accept_prob`` (0.574, MALA's optimum), and freezes
    it for the samples. With ``step_sizes`` (a decreasing sequence) it is instead the largest of
    them whose ``pilot_steps``-iteration pilot run accepts at least ``target_acceptance`` of the
    proposals, held fixed throughout.

    :returns: :class:`MALAReference`; ``gradient_evaluations`` per image counts every evaluation of
        the log density and its gradient (pilots, step-size search, warmup and samples).
    """
    if num_samples < 1 or warmup_steps < 0:
        raise ValueError(f"need num_samples >= 1 and warmup_steps >= 0, got {num_samples} and {warmup_steps}")
    device = next(iter(model.parameters())).device
    x = x.to(device)
    if init is None:
        init = torch.randn(x.shape[0], model.latent_dim)
    init = init.to(device)
    evaluations, started = 0, time.perf_counter()
    with eval_mode(model), frozen_parameters(model):
        adapt = step_sizes is None
        if not adapt:
            chosen = step_sizes[-1]
            for s in step_sizes:
                kernel = LangevinKernel(model, step_size=s, adjust=True, adapt_step_size=False)
                kernel.initial_params = {"z": init}
                MCMC(kernel, num_samples=pilot_steps, warmup_steps=0, disable_progbar=True).run(x)
                evaluations += kernel.num_evaluations
                if kernel.acceptance_rate >= target_acceptance:
                    chosen = s
                    break
            step_size = chosen
        kernel = LangevinKernel(
            model, step_size=step_size, adjust=True, adapt_step_size=adapt, target_accept_prob=target_accept_prob
        )
        kernel.initial_params = {"z": init}
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=not progress)
        mcmc.run(x)
        evaluations += kernel.num_evaluations
        seconds = time.perf_counter() - started
    return MALAReference(
        mcmc.get_samples()["z"].detach().cpu(), kernel.acceptance_rate, kernel.step_size, evaluations, seconds,
        kernel.num_divergences,
    )
