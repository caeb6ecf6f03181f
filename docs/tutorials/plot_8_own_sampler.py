"""
Extending: writing your own sampler
===================================

A sampler is an object with ``init(position, log_density_fn)`` and a pure
``step(state, log_density_fn, step_size) -> (state, info)`` (the shape of BlackJAX's samplers; see
:mod:`pyro_lfbm.infer.samplers`). The loop around it, its divergence checks, step-size
adaptation and early stopping live once in :func:`pyro_lfbm.infer.chain.run_chain`, so a new
Langevin variant is one class. Both :class:`~pyro_lfbm.LangevinGuide` and
:class:`~pyro_lfbm.LangevinKernel` take it as ``sampler=``.

As an example we write a *tempered* Langevin move, whose noise is scaled by :math:`\\sqrt{T}`:

.. math::

   z \\leftarrow z + \\tfrac{s^2}{2}\\nabla\\log p(z) + \\sqrt{T}\\, s\\, \\xi ,

which samples (up to the discretisation bias) from :math:`p(z)^{1/T}`. On a Gaussian target
:math:`\\mathcal N(m, v)` its stationary variance is exactly :math:`T` times ULA's,
:math:`T\\, v / (1 - s^2/(4v))`, and we check that.

By default: 2,000 chains of 300 steps; ``PYRO_LFBM_DOCS_FULL=1``: 20,000 chains of 1,000 steps.
"""

# %%
# The sampler
# -----------
# Reuse :class:`~pyro_lfbm.infer.samplers.ULA`: its ``step`` evaluates the log density and its
# gradient, asks ``propose`` for the moved position and keeps every finite row. Only the proposal
# changes.
import os

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch

from pyro_lfbm import LangevinGuide
from pyro_lfbm.infer.samplers import ULA
from pyro_lfbm.infer.samplers.base import LangevinState, broadcast_step_size

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
CHAINS, STEPS = (20_000, 1_000) if FULL else (2_000, 300)


class TemperedLangevin(ULA):
    """ULA with its noise scaled by sqrt(temperature): targets p(z)^(1/temperature)."""

    name = "tempered Langevin"

    def __init__(self, temperature: float = 2.0):
        super().__init__(noise=True)
        self.temperature = float(temperature)

    def propose(self, state, step_size, dims, generator):
        position = {}
        for name, z in state.position.items():
            s = broadcast_step_size(step_size, z, dims[name])
            noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
            position[name] = z + 0.5 * s**2 * state.grad[name] + self.temperature**0.5 * s * noise
        return LangevinState(position)


# %%
# A model with an exact posterior
# -------------------------------
# One latent per example, :math:`z_i \sim \mathcal N(0, 1)`, :math:`x_i \sim \mathcal N(z_i, 1)`: the
# posterior of each :math:`z_i` is :math:`\mathcal N(x_i/2, 1/2)`. The guide runs one chain per
# example, so the final positions of many chains started at the prior show the stationary law.
def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


torch.manual_seed(0)
x = torch.full((CHAINS,), 1.0)
step, v = 0.5, 0.5
ula_variance = v / (1 - step**2 / (4 * v))
results = {}
for label, sampler in [("ULA", ULA()), ("tempered, T = 2", TemperedLangevin(2.0))]:
    guide = LangevinGuide(model, num_steps=STEPS, step_size=step, sampler=sampler)
    z = guide.infer(x)["z"]
    results[label] = z
    print(f"{label:16s} mean {z.mean():.3f} (exact 0.5)   variance {z.var():.3f}")
print(f"predicted variances: ULA {ula_variance:.3f}, tempered {2 * ula_variance:.3f}")
assert abs(results["tempered, T = 2"].var() / (2 * ula_variance) - 1) < 0.15

# %%
# The two stationary laws against their predicted densities.
grid = torch.linspace(-3, 4, 400)
fig, ax = plt.subplots(figsize=(6, 3.5))
for (label, z), variance in zip(results.items(), (ula_variance, 2 * ula_variance)):
    ax.hist(z.numpy(), bins=60, density=True, alpha=0.45, label=f"{label}: chains")
    ax.plot(grid, dist.Normal(0.5, variance**0.5).log_prob(grid).exp(), lw=1.5, label=f"{label}: predicted")
ax.set(xlabel="z", ylabel="density", title="final positions of the chains")
ax.legend(fontsize=7)
fig.tight_layout()

# %%
# The same object works as ``LangevinKernel(model, sampler=TemperedLangevin(2.0))``. A sampler
# with a Metropolis–Hastings test sets ``adjusted = True`` and returns the acceptance in its
# ``StepInfo``; see :mod:`pyro_lfbm.infer.samplers.mala` and
# :mod:`pyro_lfbm.infer.samplers.underdamped` (a momentum kept in the state) for the pattern.
