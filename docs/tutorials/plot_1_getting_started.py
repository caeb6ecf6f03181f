"""
Getting started: LFBM on MNIST
==============================

This tutorial trains a small LFBM (a flow prior over a 20-dimensional latent space and a
deconvolutional generator) on MNIST, then uses it the four ways the library is made for: sampling
new digits, inferring the latents of given images by Langevin dynamics, reconstructing images from
those latents, and scoring images by the anomaly score :math:`-\\log p(x, z)`.

The model is ordinary Pyro: :class:`~pyro_lfbm.models.LatentModel` is a ``PyroModule`` whose
``forward(x)`` samples ``z`` from the prior inside a ``pyro.plate("data")`` and observes ``x``
under :math:`\\mathcal N(g_\\beta(z), \\sigma^2 I)`. Training is ``pyro.infer.SVI`` with a
:class:`~pyro_lfbm.infer.LangevinGuide`, which is exactly one iteration of the paper's
Algorithm 1 per step.

By default the tutorial trains on 3,000 images for 2 epochs in batches of 25 (about a minute on
one thread);
``PYRO_LFBM_DOCS_FULL=1`` trains on all 60,000 for 10 epochs (the ``cpu`` preset).
"""

# %%
# Data and model
# --------------
# :func:`~pyro_lfbm.data.load_images` reads MNIST from ``$PYRO_LFBM_DATA`` (or ``../shared/data``)
# and returns images in :math:`[-1, 1]`, shape ``(N, 1, 28, 28)``. A preset
# (:func:`~pyro_lfbm.train.get_preset`) names a model, a learning schedule and a guide;
# :func:`~pyro_lfbm.train.build` turns it into a model, a guide and a trainer.
import os
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

from pyro_lfbm import LangevinGuide
from pyro_lfbm.data import load_images
from pyro_lfbm.metrics import anomaly_metrics, anomaly_scores
from pyro_lfbm.train import build, get_preset, isolated, train_recipe

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
N_TRAIN, EPOCHS, BATCH, TEST_STEPS = (60_000, 10, 100, 100) if FULL else (3_000, 2, 25, 60)

x_train, _ = load_images("mnist", split="train", limit=N_TRAIN).tensors
x_test, _ = load_images("mnist", split="test", limit=500).tensors
print(x_train.shape, float(x_train.min()), float(x_train.max()))


def show(images, title, nrow=8, ax=None):
    """A grid of images in [-1, 1], shape (N, 1, H, W)."""
    grid = make_grid(images.clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1)
    ax = ax or plt.figure(figsize=(4, 4)).gca()
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")
    return ax


# %%
# Training
# --------
# :func:`~pyro_lfbm.train.isolated` gives the run its own seeded random stream and Pyro param store.
# Each step of :func:`~pyro_lfbm.train.train_recipe` runs 20 Langevin steps (s = 0.1) from
# :math:`z_0 \sim \mathcal N(0, I)` for every image of the batch, then one Adam step on the
# generator and the flow prior.
preset = get_preset("cpu").with_epochs(EPOCHS)
preset = replace(preset, learn=replace(preset.learn, batch_size=BATCH))  # presets are frozen dataclasses
print(preset.model)
with isolated(seed=0):
    recipe = build(preset)
    history = train_recipe(recipe, x_train, progress=False)
model = recipe.model
for row in history.epochs:
    print(f"epoch {row['epoch']}: loss {row['loss']:.1f} per image")

# %%
# Sampling
# --------
# :meth:`~pyro_lfbm.models.LatentModel.sample` draws :math:`z \sim p_\alpha` from the flow prior and
# decodes it, :math:`x = g_\beta(z)`. (``eval()`` makes BatchNorm use its running statistics.)
model.eval()
torch.manual_seed(1)
show(model.sample(64), "samples x = g(z), z ~ flow prior")

# %%
# Inferring latents and reconstructing
# ------------------------------------
# At test time the paper runs the chain without noise (gradient ascent on log p(x, z)) for more
# steps. :meth:`LangevinGuide.infer <pyro_lfbm.infer.LangevinGuide.infer>` runs it and returns the
# final latents without recording Pyro sites.
test_guide = LangevinGuide(model, num_steps=TEST_STEPS, step_size=0.1, noise=False)
z = test_guide.infer(x_test[:32])["z"]
print("z:", tuple(z.shape))
with torch.no_grad():
    reconstruction = model.generator(z)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
show(x_test[:32], "test images", ax=axes[0])
show(reconstruction, "g(z) after inference", ax=axes[1])
fig.tight_layout()

# %%
# The anomaly score
# -----------------
# An image the model explains badly has a low :math:`\log p(x, z)` at its inferred latents.
# :func:`~pyro_lfbm.metrics.anomaly_scores` runs the test-time chain over a data set and returns
# :math:`-\log p(x, z)` and its two parts. Here the "anomalies" are test digits with a white
# 10×10 square pasted at a random place, something no training image has.
torch.manual_seed(2)
x_normal, x_odd = x_test[:250], x_test[250:].clone()
for image in x_odd:
    top, left = torch.randint(0, 18, (2,)).tolist()
    image[:, top : top + 10, left : left + 10] = 1.0
x_mixed = torch.cat([x_normal, x_odd])
is_anomaly = torch.cat([torch.zeros(len(x_normal)), torch.ones(len(x_odd))])
scores, _ = anomaly_scores(model, x_mixed, num_steps=TEST_STEPS, progress=False)
print({k: round(v, 3) for k, v in anomaly_metrics(is_anomaly, scores["joint"]).items()})

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(scores["joint"][is_anomaly == 0].numpy(), bins=30, alpha=0.6, label="test digits")
ax.hist(scores["joint"][is_anomaly == 1].numpy(), bins=30, alpha=0.6, label="digits with a white square")
ax.set_xlabel("anomaly score  -log p(x, z)")
ax.legend()
fig.tight_layout()

# %%
# Next: the held-out-digit protocol of the paper is in :doc:`plot_3_anomaly_detection`; Langevin
# inference on a Pyro model of your own is in :doc:`plot_2_own_model`.
