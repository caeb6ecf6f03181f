"""
A hierarchical model with a flow prior
======================================

:class:`~pyro_lfbm.models.HierarchicalLatentModel` is this library's model with latents at several layers of the
generator, as in ladder and hierarchical VAEs and in the joint latent EBM prior of Cui, Wu and Han (ICCV 2023,
arXiv 2310.09604): z₁ (20 numbers) enters at the top, z₂ and z₃ (10 each) at the 7×7 and 14×14 feature maps, and
one normalizing flow p_α is the prior over their concatenation, so that the layers can depend on each other.
Each layer is a Pyro sample site of its own. This tutorial

- looks at the model's Pyro trace,
- infers its three sites with :class:`~pyro_lfbm.infer.LangevinGuide` and with an encoder guide,
- trains the ``cpu-hierarchical`` preset (the recipe of ``python experiments/anomaly.py --preset
  cpu-hierarchical``) on a small split and scores the held-out digit by its prior term −log p(z), the joint
  score −log p(x, z) and the reconstruction term, and
- reads the committed results of the full protocol.

By default the model learns from 2,000 images for 2 epochs and scores 600 test images;
``PYRO_LFBM_DOCS_FULL=1`` trains on the full split for the preset's 40 epochs (about 25–34 minutes on
one thread beside a second run, AMD EPYC Zen 4).
"""

# %%
# The model is a Pyro model with one site per layer
# --------------------------------------------------
# :func:`~pyro_lfbm.train.get_preset` returns frozen dataclasses; :func:`~pyro_lfbm.train.build` makes the model,
# the training guide (here the encoder guide: a mean-field Gaussian over all three layers) and the trainer.
import os
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pyro
import torch
from pyro import poutine

from pyro_lfbm.data import heldout_digit_split
from pyro_lfbm.harness.anomaly_report import HIERARCHICAL_AUPRC
from pyro_lfbm.infer import LangevinGuide
from pyro_lfbm.tasks import run_anomaly
from pyro_lfbm.train import build, get_preset

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
pyro.set_rng_seed(0)

preset = get_preset("cpu-hierarchical")
print(preset.model.layer_dims, "σ =", preset.model.sigma, "| guide:", preset.guide.kind,
      "| epochs:", preset.learn.epochs, "| decision function:", preset.score)
model = build(preset).model

x = torch.rand(5, 1, 28, 28) * 2 - 1  # any five images in [-1, 1]
trace = poutine.trace(model).get_trace(x)
for name, site in trace.nodes.items():
    if site["type"] == "sample" and name != "data":  # (the plate's own site left out)
        print(f"{name:3s} {str(site['fn'].__class__.__name__):12s} value {tuple(site['value'].shape)}"
              f"{'  (observed)' if site['is_observed'] else ''}")

# %%
# The layer sites carry no density of their own; the joint flow density log p_α(z₁, z₂, z₃) over their
# concatenation is the one factor ``prior`` (a ``pyro.factor``, hence the empty ``Unit`` value). So Pyro's
# ``log_prob_sum`` of the trace is the model's :meth:`~pyro_lfbm.models.LatentModel.log_joint` summed over the images.
trace.compute_log_prob()
layers = {name: trace.nodes[name]["value"] for name in model.latent_sites}
with torch.no_grad():
    print("trace log density   ", float(trace.log_prob_sum()))
    print("model.log_joint, sum", float(model.log_joint(x, **layers).sum()))

# %%
# Several local sites, one Langevin guide
# ---------------------------------------
# :class:`~pyro_lfbm.infer.LangevinGuide` finds every real-valued local site of a model and moves all of them in one
# chain; it emits each as a ``Delta`` site, so ``Trace_ELBO`` scores the model at the chain's end.
# Here the chain starts from a fixed draw z₀ ~ N(0, I) (``init``) so that we can see each site move and the log
# joint rise (the generator is untrained, so the numbers only show the mechanics).
start = {name: torch.randn(5, d) for name, d in zip(model.latent_sites, model.latent_dims)}
guide = LangevinGuide(model, num_steps=20, step_size=0.1, init=lambda x: dict(start))
inferred = guide.infer(x)
for name in model.latent_sites:
    moved = (inferred[name] - start[name]).norm(dim=-1).mean()
    print(f"{name}: shape {tuple(inferred[name].shape)}, moved {float(moved):.2f} on average")
with torch.no_grad():
    print(f"log p(x, z) per image: {float(model.log_joint(x, **start).mean()):.1f} at z0, "
          f"{float(model.log_joint(x, **inferred).mean()):.1f} after 20 steps")

# %%
# Training the preset and scoring the held-out digit
# --------------------------------------------------
# :func:`~pyro_lfbm.tasks.run_anomaly` trains the preset on the normal digits and scores every test image by
# −log p(x, z) (``joint``) and by its two parts at the encoder's z. The recipe was chosen on the development
# digits 0, 2, 3, 6 and 8: with the pixel likelihood N(g(z), 0.5²), the prior term −log p_α(z) on BatchNorm's
# running statistics (``eval``) scored 0.930 there, against 0.912 for the joint score at σ = 1.0, which had won on
# digits 3 and 8 alone and lost on the other three (``results/anomaly/hierarchical_dev_digits/``). The preset scores
# the moving average of its weights (``preset.learn.optim.ema_decay`` = 0.999, about the last 1,000 updates; 0.949
# against 0.939 for the last weights on digits 0 and 8, ``results/anomaly/hierarchical_ema/``). The short run below
# makes 80 updates, too few for that average, so it keeps the last weights.
HELDOUT = 7
if FULL:
    split, trained = heldout_digit_split(heldout=HELDOUT, seed=1), preset
else:
    split = heldout_digit_split(heldout=HELDOUT, seed=1, limit_train=2000, limit_test=600)
    trained = replace(preset, learn=replace(preset.learn, epochs=2, batch_size=50,
                                            optim=replace(preset.learn.optim, ema_decay=None)))
print(split.summary())
result = run_anomaly(trained, split, seed=1, batchnorm=("eval",), preset_name="cpu-hierarchical")
for row in result.rows:
    print(f"{row['score']:6s} AUPRC {row['auprc']:.3f}  (anomaly fraction {row['prevalence']:.3f})")

# %%
# Two epochs on 2,000 images are far from the recipe, which takes 40 epochs on the full split
# (``results/anomaly/hierarchical_sigma/`` and ``results/anomaly/hierarchical_dev_digits/`` have its development
# runs). The two parts of the score, image by image:
anomalous = result.is_anomaly.bool()
fig, ax = plt.subplots(figsize=(5, 4))
for mask, label in [(~anomalous, "normal digits"), (anomalous, f"held-out {HELDOUT}s")]:
    ax.scatter(result.scores["recon"][mask], result.scores["prior"][mask], s=4, alpha=0.5, label=label)
ax.set(xlabel="reconstruction term -log p(x | z)", ylabel="prior term -log p(z)")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The committed results of the full protocol
# ------------------------------------------
# ``results/anomaly/hierarchical_preset/`` holds this preset's runs on the reported digits 1, 4, 5, 7, 9 (σ = 0.5,
# its joint flow of 10 coupling steps of width 128, 40 epochs, three seeds), scored by the prior term on running
# statistics. It meets the HVAE row on 4, 5 and 7 and misses it on 1 and 9.
here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # the gallery runs it in docs/tutorials
table = pd.read_csv(here.parents[1] / "results" / "anomaly" / "hierarchical_preset" / "table.csv")
rows = table[(table.score == "prior") & (table.batchnorm == "eval")]
means = rows.groupby("heldout").auprc.agg(["mean", "std", "count"])
hvae = pd.Series(HIERARCHICAL_AUPRC["HVAE"], name="HVAE (Havtorn et al. 2021)")
print(pd.concat([means.round(3), hvae], axis=1).to_string())
fig, ax = plt.subplots(figsize=(7, 3.2))
digits = list(means.index)
ax.bar([d - 0.2 for d in range(len(digits))], means["mean"], width=0.4, yerr=means["std"], capsize=2,
       label="cpu-hierarchical, prior term")
ax.bar([d + 0.2 for d in range(len(digits))], hvae[digits], width=0.4, label=hvae.name)
ax.set(xticks=range(len(digits)), xticklabels=[f"held-out {d}" for d in digits], ylabel="AUPRC")
ax.legend(fontsize=8)
fig.tight_layout()
