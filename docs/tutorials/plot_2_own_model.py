"""
Langevin inference on your own Pyro model
=========================================

:class:`~pyro_lfbm.infer.LangevinGuide` and :class:`~pyro_lfbm.infer.LangevinKernel` take any Pyro
model with continuous latents; nothing about images or :class:`~pyro_lfbm.models.LatentModel` is
assumed. This tutorial uses a model of count data with the three idioms that make inference code
fail most often:

- a **subsampled** data plate (``pyro.plate(..., subsample_size=B)``),
- a **constrained** local latent (a positive rate with a ``Gamma`` prior), and
- a **global** latent shared by every item.

Item :math:`i` has a rate :math:`\\lambda_i` and :math:`m` counts; the rates share an unknown
scale :math:`b`:

.. math::

   b \\sim \\mathrm{LogNormal}(0, 1), \\qquad
   \\lambda_i \\mid b \\sim \\mathrm{Gamma}(a, b), \\qquad
   x_{ij} \\mid \\lambda_i \\sim \\mathrm{Poisson}(\\lambda_i), \\quad j = 1..m.

The Gamma prior is conjugate to the Poisson likelihood, so the posterior has an exact answer to
compare with: given :math:`b`, :math:`\\lambda_i \\mid x, b \\sim \\mathrm{Gamma}(a + S_i, b + m)`
with :math:`S_i = \\sum_j x_{ij}`, and :math:`p(b \\mid x)` is one-dimensional, computed on a grid.
We compare four answers: the exact one, :class:`~pyro_lfbm.infer.LangevinKernel` (MALA in Pyro's
``MCMC``), Pyro's NUTS, and ``AutoNormal`` fitted by SVI; and we train the short-run
:class:`~pyro_lfbm.infer.LangevinGuide` with an ``AutoNormal`` guide for :math:`b`.
"""

# %%
# Data and model
# --------------
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_lfbm.infer import LangevinGuide, LangevinKernel

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
NUM_SAMPLES, WARMUP, SVI_STEPS = (2000, 1000, 3000) if FULL else (300, 150, 300)

pyro.set_rng_seed(0)
N, M, A, BATCH = 100, 5, 2.0, 25
true_b = 0.5
true_rate = dist.Gamma(A, true_b).sample((N,))
counts = dist.Poisson(true_rate.unsqueeze(-1).expand(N, M)).sample()  # (N, M)


def model(counts, idx=None, batch=BATCH):
    """``batch=None`` uses every item (MCMC); ``idx`` picks the items (posterior predictive)."""
    b = pyro.sample("b", dist.LogNormal(0.0, 1.0))  # global, positive
    with pyro.plate("items", N, subsample_size=batch if idx is None else None, subsample=idx) as i:
        rate = pyro.sample("rate", dist.Gamma(A, b))  # local, positive: moved as log(rate)
        pyro.sample("x", dist.Poisson(rate.unsqueeze(-1)).to_event(1), obs=counts[i])


# %%
# The exact posterior
# -------------------
# Integrating :math:`\lambda_i` out gives :math:`p(x_i \mid b) \propto b^a / (b + m)^{a + S_i}`
# (up to factors free of :math:`b`), so :math:`\log p(b \mid x)` on a fine grid of
# :math:`b` is exact up to the grid spacing; the posterior mean of :math:`\lambda_i` is the
# grid average of :math:`(a + S_i)/(b + m)`.
S = counts.sum(-1).double()
grid = torch.linspace(0.01, 3.0, 3000, dtype=torch.float64)
log_post = dist.LogNormal(0.0, 1.0).log_prob(grid) + (A * grid.log().unsqueeze(-1)
                                                       - (A + S) * (grid.unsqueeze(-1) + M).log()).sum(-1)
weights = torch.softmax(log_post, 0)
density = weights / (grid[1] - grid[0])
exact_b_mean = float((weights * grid).sum())
exact_rate_mean = (weights.unsqueeze(-1) * (A + S) / (grid.unsqueeze(-1) + M)).sum(0)
print(f"exact E[b | x] = {exact_b_mean:.3f} (simulated with b = {true_b})")

# %%
# MCMC: LangevinKernel and NUTS
# -----------------------------
# :class:`~pyro_lfbm.infer.LangevinKernel` moves every latent in unconstrained space, as NUTS does:
# the local rates, one Metropolis test per item, then the global scale at the full-data log joint.
# Its step sizes adapt during warmup. MCMC needs the full data, so ``batch=None``.
pyro.set_rng_seed(1)
mala = MCMC(LangevinKernel(model, step_size=0.1), num_samples=NUM_SAMPLES, warmup_steps=WARMUP, disable_progbar=True)
mala.run(counts, None, None)
mala_samples = mala.get_samples()
diagnostics = mala.diagnostics()
print("LangevinKernel: acceptance", round(float(diagnostics["acceptance rate"]["chain 0"]), 3),
      "| r_hat(b)", round(float(diagnostics["b"]["r_hat"]), 3), "| n_eff(b)", round(float(diagnostics["b"]["n_eff"]), 1))

pyro.set_rng_seed(1)
nuts = MCMC(NUTS(model), num_samples=NUM_SAMPLES, warmup_steps=WARMUP, disable_progbar=True)
nuts.run(counts, None, None)
nuts_samples = nuts.get_samples()

# %%
# AutoNormal on every latent
# --------------------------
# A mean-field Gaussian in unconstrained space, trained by SVI on all items at every step
# (``batch=None``: on minibatches, each item's own parameters would move only when it is drawn).
# ``create_plates`` hands the guide the model's plate, so that the guide and the model see the
# same items (also when ``Predictive`` passes ``idx``).


def items_plate(counts, idx=None, batch=BATCH):
    return pyro.plate("items", N, subsample_size=batch if idx is None else None, subsample=idx)


pyro.clear_param_store()
pyro.set_rng_seed(2)
autonormal = AutoNormal(model, create_plates=items_plate)
svi = SVI(model, autonormal, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / SVI_STEPS)}), Trace_ELBO())
for _ in range(SVI_STEPS):
    svi.step(counts, None, None)
autonormal_draws = Predictive(model, guide=autonormal, num_samples=NUM_SAMPLES, return_sites=["b", "rate"])(
    counts, torch.arange(N))

# %%
# The short-run Langevin guide with a guide for the global
# --------------------------------------------------------
# The guide moves local latents only; the global :math:`b` gets its own ``AutoNormal``
# (``global_guide=``), which the Langevin guide calls first. Each SVI step draws a minibatch of 25
# items, runs 20 Langevin steps on their log-rates, and takes one Adam step on :math:`q(b)`.
pyro.clear_param_store()
pyro.set_rng_seed(3)
global_guide = AutoNormal(poutine.block(model, expose=["b"]))
guide = LangevinGuide(model, num_steps=20, step_size=0.2, global_guide=global_guide)
svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / SVI_STEPS)}), Trace_ELBO())
for _ in range(SVI_STEPS):
    svi.step(counts)
langevin_b = Predictive(global_guide, num_samples=NUM_SAMPLES)(counts)["b"]
langevin_rates = Predictive(model, guide=guide, num_samples=50, parallel=True, return_sites=["rate"])(
    counts, torch.arange(N))["rate"]  # (50 chains, N items)

# %%
# The posterior of the global scale
# ---------------------------------
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(grid.numpy(), density.numpy(), "k", lw=2, label="exact (grid)")
bins = torch.linspace(0.2, 1.2, 50).numpy()
ax.hist(mala_samples["b"].numpy(), bins=bins, density=True, alpha=0.5, label="LangevinKernel (MALA)")
ax.hist(nuts_samples["b"].numpy(), bins=bins, density=True, alpha=0.5, label="NUTS")
ax.hist(autonormal_draws["b"].flatten().numpy(), bins=bins, density=True, histtype="step", lw=2, label="AutoNormal")
ax.hist(langevin_b.flatten().numpy(), bins=bins, density=True, histtype="step", lw=2,
        label="LangevinGuide + AutoNormal q(b)")
ax.set_xlim(0.2, 1.2)
ax.set_xlabel("b")
ax.legend(fontsize=8)
fig.tight_layout()

for label, draws in [("LangevinKernel", mala_samples["b"]), ("NUTS", nuts_samples["b"]),
                     ("AutoNormal", autonormal_draws["b"]), ("LangevinGuide + AutoNormal", langevin_b)]:
    print(f"{label:28s} E[b | x] = {float(draws.mean()):.3f}  sd = {float(draws.std()):.3f}")
print(f"{'exact':28s} E[b | x] = {exact_b_mean:.3f}  sd = {float((weights * (grid - exact_b_mean) ** 2).sum().sqrt()):.3f}")

# %%
# The local rates
# ---------------
# Posterior means of every :math:`\lambda_i` against the exact ones. MCMC and AutoNormal target
# the posterior; the short-run guide's 20 steps from :math:`\log\lambda_0 \sim \mathcal N(0, 1)`
# are not a converged sampler: its chains end close to, but not exactly at, the posterior
# (the paper's short-run inference is a learned, biased inference, not MCMC).
fig, ax = plt.subplots(figsize=(5, 5))
for label, rates, marker in [("LangevinKernel", mala_samples["rate"].mean(0), "o"),
                             ("NUTS", nuts_samples["rate"].mean(0), "x"),
                             ("AutoNormal", autonormal_draws["rate"].mean(0).flatten(), "s"),
                             ("LangevinGuide (20 steps)", langevin_rates.mean(0).flatten(), "^")]:
    ax.scatter(exact_rate_mean.numpy(), rates.numpy(), s=14, marker=marker, alpha=0.7, label=label)
    error = float((rates.double() - exact_rate_mean).abs().mean())
    print(f"{label:26s} mean |E[rate] - exact| = {error:.3f}")
limit = float(exact_rate_mean.max()) * 1.1
ax.plot([0, limit], [0, limit], "k--", lw=1)
ax.set_xlabel("exact E[rate_i | x]")
ax.set_ylabel("estimated E[rate_i | x]")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The idioms in one table: see :doc:`../guide/own_model` for what the guide and the kernel do with
# each (vectorised particles, persistent chains, discrete latents, float64, CUDA).
