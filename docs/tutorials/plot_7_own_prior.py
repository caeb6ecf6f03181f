"""
Extending: writing your own prior
=================================

A prior is a :class:`~pyro_lfbm.priors.LatentPrior`: a ``PyroModule`` over a ``latent_dim``
vector whose :meth:`~pyro_lfbm.priors.LatentPrior.dist` returns a Pyro distribution with
``event_shape == (latent_dim,)`` and a ``log_prob`` differentiable in ``z`` and in the prior's
parameters. That is all :class:`~pyro_lfbm.models.LatentModel`, the Langevin guide and the
training loop need: the guide differentiates ``log_prob`` in ``z``, SVI in the parameters.

As an example we write a learnable mixture of Gaussians,

.. math::

   p_\\alpha(z) = \\sum_{k=1}^{K} \\pi_k\\, \\mathcal N(z;\\, \\mu_k, \\mathrm{diag}(\\sigma_k^2)),

train it with a generator on MNIST, and decode each component's draws.

By default: 2,000 images, 2 epochs in batches of 25; ``PYRO_LFBM_DOCS_FULL=1``: 60,000 images, 10 epochs.
"""

# %%
# The prior
# ---------
# Parameters are ordinary ``torch.nn.Parameter``\ s of the module: because the prior is a
# submodule of a ``PyroModule`` model, SVI trains them with everything else. Keep ``dist()``
# cheap: the guide calls ``log_prob`` at every Langevin step.
import os

import matplotlib.pyplot as plt
import pyro.distributions as dist
import torch
from torchvision.utils import make_grid

from pyro_lfbm import LangevinGuide, LatentModel, OptimConfig, fit
from pyro_lfbm.data import load_images
from pyro_lfbm.priors import LatentPrior
from pyro_lfbm.train import get_preset, isolated

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
N_TRAIN, EPOCHS, BATCH = (60_000, 10, 100) if FULL else (2_000, 2, 25)


class GaussianMixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` of Gaussians, whose support is declared as what it is, all of R^D.

    The guide moves every latent in unconstrained space through ``biject_to(support)``; torch's
    ``MixtureSameFamily`` reports a wrapper constraint for which no bijection is registered, and
    the guide would stop with a one-line ``ValueError`` saying so.
    """

    support = dist.constraints.real_vector


class MixturePrior(LatentPrior):
    """A mixture of ``num_components`` diagonal Gaussians with learnable weights, means and scales.

    :param int latent_dim: size D of the latent vector.
    :param int num_components: K.
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__(latent_dim)
        self.logits = torch.nn.Parameter(torch.zeros(num_components))
        self.means = torch.nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scales = torch.nn.Parameter(torch.full((num_components, latent_dim), -0.5))

    def components(self) -> dist.Distribution:
        """The K Gaussians: batch shape (K,), event shape (D,)."""
        return dist.Normal(self.means, self.log_scales.exp()).to_event(1)

    def dist(self) -> dist.Distribution:
        return GaussianMixture(dist.Categorical(logits=self.logits), self.components())


prior = MixturePrior(20, num_components=10)
z = prior.sample((5,))
print(z.shape, prior.log_prob(z).shape)  # (5, 20) and (5,)

# %%
# A model with it
# ---------------
# Take the generator of the ``cpu`` preset and put the new prior in front of it. Nothing else
# changes: the guide, ``fit`` and the metrics see a :class:`~pyro_lfbm.models.LatentModel`.
x, digits = load_images("mnist", split="train", limit=N_TRAIN).tensors
config = get_preset("cpu").model
with isolated(seed=0):
    model = LatentModel(MixturePrior(config.latent_dim, 10), config.build().generator, sigma=config.sigma)
    guide = LangevinGuide(model, num_steps=20, step_size=0.1)
    history = fit(model, guide, x, epochs=EPOCHS, batch_size=BATCH, optim=OptimConfig(lr=1e-3), progress=False)
print(f"last epoch: loss {history.epochs[-1]['loss']:.1f} per image")
print("mixture weights:", [round(w, 3) for w in torch.softmax(model.prior.logits.detach(), 0).tolist()])

# %%
# What each component generates
# -----------------------------
# Draw eight latents from each component and decode them (one row per component). With enough
# training the components tend to specialise in digits or styles; the mixture was never told
# the labels.
model.eval()
with torch.no_grad():
    z = model.prior.components().sample((8,))  # (8, K, D)
    images = model.generator(z.transpose(0, 1).reshape(-1, config.latent_dim))
grid = make_grid(images, nrow=8, normalize=True, value_range=(-1, 1), pad_value=1)
plt.figure(figsize=(5, 6.5))
plt.imshow(grid.permute(1, 2, 0).numpy())
plt.axis("off")
plt.title("one row per mixture component")

# %%
# Which component explains which digit
# ------------------------------------
# Infer each training image's latent (gradient ascent, as at test time) and assign it to its
# most probable component, :math:`\arg\max_k \pi_k \mathcal N(z; \mu_k, \sigma_k^2)`.
test_guide = LangevinGuide(model, num_steps=60, step_size=0.1, noise=False)
z = test_guide.infer(x[:500])["z"]
with torch.no_grad():
    responsibility = model.prior.components().log_prob(z.unsqueeze(1)) + torch.log_softmax(model.prior.logits, 0)
assignment = responsibility.argmax(1)
table = torch.zeros(10, 10, dtype=torch.long)
table.index_put_((assignment, digits[:500]), torch.ones(500, dtype=torch.long), accumulate=True)
fig, ax = plt.subplots(figsize=(5, 4))
ax.imshow(table.numpy(), cmap="Blues")
ax.set(xlabel="digit", ylabel="component", xticks=range(10), yticks=range(10))
for (k, d), count in zip(torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist(), table.flatten().tolist()):
    if count:
        ax.text(d, k, count, ha="center", va="center", fontsize=7)
fig.tight_layout()

# %%
# The same prior works in a Pyro model of your own: register it with ``pyro.module("prior", prior)``
# and sample ``pyro.sample("z", prior.dist())`` inside the data plate (see
# :doc:`../guide/own_model`). The library's own priors, :class:`~pyro_lfbm.priors.FlowPrior` and
# :class:`~pyro_lfbm.priors.EnergyPrior`, follow the same interface and add a fast
# ``log_prob`` that skips the distribution objects.

# %%
# The prior by name: presets, command lines and reports
# -----------------------------------------------------
# Registering the prior once with a :class:`~pyro_lfbm.train.PriorKind` makes it a prior like the
# built-in ones: ``ModelConfig(prior="mixture")`` and ``get_preset(..., "mixture")`` build it, the
# experiment scripts offer it as ``--prior mixture`` (a parser built after the registration), and
# the reports name it with its word and model.
from pyro_lfbm.harness.formatting import prior_label
from pyro_lfbm.train import PRIOR_KINDS, PriorKind, register_prior

if "mixture" not in PRIOR_KINDS:  # (a second run of this page in one process)
    register_prior(PriorKind("mixture", "mixture", "", lambda config: MixturePrior(config.latent_dim, 10)))
mixture_preset = get_preset("cpu", "mixture")
print(type(mixture_preset.model.build().prior).__name__, "|", prior_label("mixture"))
