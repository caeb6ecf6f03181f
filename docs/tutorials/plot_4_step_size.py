"""
Choosing a sampler and a step size
==================================

Every Langevin move in the library is

.. math::

   u \\leftarrow u + \\frac{s^2}{2} \\nabla_u \\log p(x, u) + s\\,\\xi, \\qquad \\xi \\sim \\mathcal N(0, I),

(:func:`~pyro_lfbm.ops.langevin_move`), and the step size :math:`s` is the one number that decides
whether a chain works. This tutorial shows what a step does on a small two-dimensional target
whose answer is known: trajectories for small, good and too-large steps, the acceptance
probability that measures the discretisation error, divergences and what the library does about
them, the adaptive default ``step_size="auto"`` of :class:`~pyro_lfbm.infer.LangevinGuide`, and
unadjusted Langevin (ULA) against MALA in :class:`~pyro_lfbm.infer.LangevinKernel`.

The chains take other moves as plug-ins (``LangevinGuide(model, sampler=...)`` with
:class:`~pyro_lfbm.infer.ULA`, :class:`~pyro_lfbm.infer.MALA` and the samplers of
:mod:`pyro_lfbm.infer.samplers`); this tutorial uses the default, unadjusted move, and MALA
through the kernel.
"""

# %%
# A target with a known answer
# ----------------------------
# A correlated Gaussian, :math:`\mathcal N(0, \Sigma)` with standard deviations 1 and 0.2 along
# its axes, rotated by 45°. Its log density takes a batch of rows (independent chains) ``{"z": (R, 2)}``
# and returns ``(R,)``, the form every chain function of :mod:`pyro_lfbm.infer` takes.
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, SVI, Trace_ELBO

from pyro_lfbm.infer import LangevinDivergenceError, LangevinGuide, LangevinKernel, StepSizeAdaptation, run_chain

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
NUM_CHAINS, NUM_SAMPLES = (20000, 4000) if FULL else (4000, 1000)

angle = torch.tensor(torch.pi / 4)
rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
covariance = rotation @ torch.diag(torch.tensor([1.0, 0.2]) ** 2) @ rotation.T
target = dist.MultivariateNormal(torch.zeros(2), covariance)


def log_density(position):
    return target.log_prob(position["z"])


# %%
# Trajectories
# ------------
# ``run_chain`` calls ``callback(k, state)`` after every move. From the same start and the same
# noise, a small step crawls (K steps cover a Langevin time of only :math:`K s^2 / 2`), a good
# step reaches the target and moves along it, and a step close to the narrow direction's
# stability limit (gradient steps are stable for :math:`s < 2 \times 0.2`) jumps across it.
start = {"z": torch.tensor([[-2.5, 2.0]])}
fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 100), torch.linspace(-3, 3, 100), indexing="xy"), -1)
for ax, step_size in zip(axes, (0.05, 0.25, 0.38)):
    path = [start["z"][0]]
    run_chain(log_density, start, 40, step_size, generator=torch.Generator().manual_seed(0),
              callback=lambda k, state: path.append(state.position["z"][0].clone()))
    path = torch.stack(path)
    ax.contour(grid[..., 0], grid[..., 1], target.log_prob(grid).exp(), levels=6, colors="gray", linewidths=0.8)
    ax.plot(path[:, 0], path[:, 1], ".-", lw=1, ms=4)
    ax.set_title(f"s = {step_size}: 40 steps")
    ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
fig.tight_layout()

# %%
# The acceptance probability measures the error of a step
# -------------------------------------------------------
# With ``track_acceptance=True`` a chain also reports, per row, the mean Metropolis–Hastings
# acceptance probability that a MALA test would have given its moves. Nothing is rejected (the
# chain stays unadjusted); the number says how far each move is from an exact sampler's. Here 400
# chains of 200 steps start at the target's draws for each step size; the variance of the chains'
# final positions along the narrow axis, relative to the exact 0.04, shows the bias that comes
# with a low acceptance.
step_sizes = [0.05, 0.1, 0.2, 0.3, 0.35, 0.39]
acceptance, variance = [], []
for step_size in step_sizes:
    initial = {"z": target.sample((NUM_CHAINS,))}
    state, info = run_chain(log_density, initial, 200, step_size, track_acceptance=True,
                            generator=torch.Generator().manual_seed(1))
    acceptance.append(float(info.acceptance_prob.mean()))
    variance.append(float((state.position["z"] @ rotation[:, 1]).var()) / 0.2**2)
    print(f"s = {step_size:4.2f}: mean acceptance {acceptance[-1]:.3f}, variance along the narrow axis / exact {variance[-1]:.2f}")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(step_sizes, acceptance, "o-", label="mean MALA acceptance probability")
ax.plot(step_sizes, variance, "s-", label="variance along the narrow axis / exact")
ax.axhline(0.8, color="gray", ls=":", lw=1)
ax.set_xlabel("step size s")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Divergences
# -----------
# Beyond :math:`s = 0.4` the narrow direction is unstable and the chain overflows. Every
# evaluation is checked: by default a non-finite log density or gradient raises
# :class:`~pyro_lfbm.infer.LangevinDivergenceError` with the site, the step, the step size and the
# number of rows; ``on_divergence="backoff"`` sends a diverged row back to its last finite
# position and halves its step size instead, and reports it in :class:`~pyro_lfbm.infer.ChainInfo`.
try:
    run_chain(log_density, {"z": torch.ones(8, 2)}, 200, 1.0)
except LangevinDivergenceError as err:
    print("raised:", err)
state, info = run_chain(log_density, {"z": torch.ones(8, 2)}, 200, 1.0, on_divergence="backoff")
print("backoff: divergences per row", info.divergences.tolist(), "final step sizes", [round(float(s), 3) for s in info.step_size])

# %%
# The adaptive default of the guide
# ---------------------------------
# A Pyro model with this target as the posterior of each item's latent: :math:`z_i \sim \mathcal N(0, I)`
# and :math:`x_i \sim \mathcal N(A z_i, I)`, with :math:`A` chosen so that the posterior
# precision is :math:`\Sigma^{-1}`. ``step_size="auto"`` adapts :math:`s` by dual averaging during
# the first 200 calls toward a mean acceptance of 0.8 (the chain is unadjusted, so the target is
# higher than MALA's 0.574), then freezes it; ``StepSizeAdaptation(num_updates=60)`` adapts over 60.
A = torch.linalg.cholesky(torch.linalg.inv(covariance) - torch.eye(2)).T


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ A.T, 1.0).to_event(1), obs=x)


pyro.set_rng_seed(0)
x = torch.randn(200, 2)
guide = LangevinGuide(model, num_steps=20, step_size=StepSizeAdaptation(num_updates=60))
svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())  # the model has no parameters
history = []
for _ in range(80):
    svi.step(x)
    history.append(guide.step_size)
print(f"frozen step size: {guide.step_size:.3f}; still adapting: {guide.adapting}")
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, 81), history)
ax.axvline(60, color="gray", ls=":", lw=1)
ax.set(xlabel="guide call", ylabel="step size s", title="step_size='auto' (frozen after 60 calls)")
fig.tight_layout()

# %%
# ULA against MALA
# ----------------
# For reference posteriors, :class:`~pyro_lfbm.infer.LangevinKernel` runs in ``pyro.infer.MCMC``.
# With ``adjust=True`` (MALA) a Metropolis test corrects the discretisation error; with
# ``adjust=False`` (ULA) every proposal is taken and the stationary distribution is biased by
# :math:`O(s^2)`. At a fixed, large step (no adaptation) the difference shows in the variance
# along the narrow axis:


def target_model():
    pyro.sample("z", target)


for adjust in (True, False):
    pyro.set_rng_seed(2)
    kernel = LangevinKernel(target_model, step_size=0.35, adjust=adjust, adapt_step_size=False)
    mcmc = MCMC(kernel, num_samples=NUM_SAMPLES, warmup_steps=100, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"]
    diagnostics = mcmc.diagnostics()
    print(f"{'MALA' if adjust else 'ULA '}: variance along the narrow axis / exact {float((z @ rotation[:, 1]).var()) / 0.2**2:.2f}, "
          f"acceptance {float(diagnostics['acceptance rate']['chain 0']):.3f}, "
          f"divergences {len(diagnostics['divergences']['chain 0'])}")

# %%
# In short: for a short-run guide, start with ``step_size="auto"`` and check that the frozen value
# is not far below what keeps the latents moving (:math:`K s^2 / 2` of order 1); for reference
# posteriors, use the kernel with MALA and its warmup adaptation (target 0.574).
