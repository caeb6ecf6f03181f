"""
Learning from occluded images, and inpainting
=============================================

:class:`~pyro_lfbm.models.LatentModel` takes an optional per-pixel ``mask`` (1 = observed,
0 = hole) and drops the hole pixels from its likelihood, so the same SVI loop learns from
incomplete images: the Langevin chain infers each image's latents from its visible pixels only, and
the generator fills the holes. This tutorial trains on MNIST digits with half their pixels
hidden under random 8×8 squares (the paper's "salt-and-pepper" occlusion), recovers the hidden
pixels, then inpaints a large square hole in test images with several completions per image.

By default: 2,000 images, 2 epochs in batches of 25; ``PYRO_LFBM_DOCS_FULL=1``: 20,000 images, 10
epochs in the ``cpu`` preset's batches of 100.
"""

# %%
# Occluded training images
# ------------------------
# :func:`~pyro_lfbm.data.masks.make_masks` draws one fixed mask per image (deterministic for its
# seed); the training loop keeps mask i with image i in every epoch.
import os
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

from pyro_lfbm.data import load_images
from pyro_lfbm.data.masks import coverage, make_masks
from pyro_lfbm.tasks import hole_mask, inpaint, inpainting_errors, paper_hole, reconstruct, recovery_errors
from pyro_lfbm.train import build, get_preset, isolated, train_recipe

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
N_TRAIN, EPOCHS, BATCH = (20_000, 10, 100) if FULL else (2_000, 2, 25)
N_RECOVER, N_INPAINT, STEPS = (1_000, 200, 100) if FULL else (300, 40, 60)

x, _ = load_images("mnist", split="train", limit=N_TRAIN).tensors
mask = make_masks(len(x), (1, 28, 28), "salt-pepper", 50, seed=0)
print(f"{coverage(1 - mask):.1%} of the pixels are hidden")


def show_rows(rows, titles):
    """One row of images (N, 1, H, W) in [-1, 1] per entry of ``rows``."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.2 * len(rows)))
    for ax, images, title in zip(axes, rows, titles):
        grid = make_grid(images.clamp(-1, 1), nrow=len(images), normalize=True, value_range=(-1, 1), pad_value=1)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()


# %%
# Learning from them
# ------------------
# The only change from complete images is ``mask=``: the model sees ``model(x, mask)``. (In the
# small mode, batches of 25 give the model more updates for the same compute.)
preset = get_preset("cpu").with_epochs(EPOCHS)
preset = replace(preset, learn=replace(preset.learn, batch_size=BATCH))
with isolated(seed=0):
    recipe = build(preset)
    history = train_recipe(recipe, x * mask, mask=mask, progress=False)
model = recipe.model
print(f"last epoch: loss {history.epochs[-1]['loss']:.1f} per image")

# %%
# Recovering the hidden pixels
# ----------------------------
# :func:`~pyro_lfbm.tasks.reconstruct` infers z from the visible pixels (here 60 steps, 100 in full size, of
# gradient ascent) and returns g(z); the hole error is measured in [0, 1] pixel units.
recovered = reconstruct(model, x[:N_RECOVER], mask[:N_RECOVER], num_steps=STEPS, step_size=0.1)
errors = recovery_errors(recovered, x[:N_RECOVER], mask[:N_RECOVER])
print({k: round(v, 4) for k, v in errors.items()})
mean_fill = recovery_errors(torch.full_like(x[:N_RECOVER], float(x.mean())), x[:N_RECOVER], mask[:N_RECOVER])["mse_hole"]
print(f"for comparison, filling every hole with the mean pixel: {mean_fill:.4f}")
show_rows([x[:12], (x * mask + (1 - mask) * -0.3)[:12], recovered[:12]],
          ["complete (never seen)", "what the model saw (holes grey)", "recovered g(z)"])

# %%
# In the small mode (160 updates on 2,000 images) the hole error is about that of filling every
# hole with the mean pixel. Learning to fill holes takes longer: the committed runs of
# ``results/recovery/`` (2,000 images, the ``cpu`` preset, 15 epochs) reach a hole error of
# 0.112 at this setting (MNIST, salt-and-pepper 50 %, flow prior, mean of 2 seeds).
#
# Inpainting
# ----------
# A square hole at the paper's place (its 40×40 hole on 64×64 images, scaled to 28×28).
# :func:`~pyro_lfbm.tasks.inpaint` starts several chains per image from :math:`z_0 \sim p_\alpha`
# and keeps the observed pixels exactly; different starts give different completions.
x_test, _ = load_images("mnist", split="test", limit=N_INPAINT).tensors
top, left, side = paper_hole((1, 28, 28))
hole = hole_mask((1, 28, 28), top, left, side)
completions = inpaint(model, x_test, hole, num_completions=4, num_steps=STEPS)  # (N, 4, 1, 28, 28)
print({k: round(v, 4) for k, v in inpainting_errors(completions, x_test, hole).items()})
show_rows([x_test[:10], (x_test * hole + (1 - hole) * -0.3)[:10]] + [completions[:10, k] for k in range(4)],
          ["test images", "with the hole"] + [f"completion {k + 1}" for k in range(4)])

# %%
# ``python experiments/recovery.py`` and ``experiments/inpainting.py`` run these tasks for every
# prior and mask setting; the committed results are in ``results/recovery/`` and ``results/inpainting/``.
