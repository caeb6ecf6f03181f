"""Post-hoc decision functions of the `cpu-hierarchical` preset on development digits 0 and 8 (seeds 1, 2).

Scores the finished checkpoints of ../hierarchical_ema/ (the preset's own runs, weight average loaded, running
BatchNorm statistics) on their test images by variants of the preset's prior term -log p(z) at the encoder's mean:
its two parts (the base-space quadratic |u|^2 / 2 with u = f(z), and the flow's volume term -log|det df/dz|),
the squared norm of each layer's latent, the prior term averaged over S draws of the encoder's q(z | x) (E_S), and
the negative log of the draws' mean density (LSE_S), and the prior term plus w times the reconstruction term.

    python results/anomaly/hierarchical_score_variants/score_variants.py CHECKPOINT_DIR SCORES_DIR > variants.csv

CHECKPOINT_DIR holds lfbm-flow-hierarchical-encoder-heldout{D}-seed{S}-cpu-hierarchical.pt, SCORES_DIR the runs'
folders heldout{D}-flow-hierarchical-encoder-seed{S}/scores.pt (for the saved scores and labels).
"""
import sys

import numpy as np
import torch

from pyro_lfbm.data.root import resolve_data_root
from pyro_lfbm.harness.anomaly_experiment import run_split
from pyro_lfbm.metrics.anomaly import anomaly_metrics
from pyro_lfbm.priors.flow import flow_forward
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.recipe import build, isolated

checkpoints, scores_dir = sys.argv[1], sys.argv[2]
print("heldout,seed,score,auprc")
for digit, seed in [(0, 1), (0, 2), (8, 1), (8, 2)]:
    saved = torch.load(f"{scores_dir}/heldout{digit}-flow-hierarchical-encoder-seed{seed}/scores.pt", weights_only=False)
    y = saved["is_anomaly"]
    split = run_split(resolve_data_root(), digit, seed)
    with isolated(0), torch.no_grad():
        recipe = build(get_preset("cpu-hierarchical"))
        state = torch.load(f"{checkpoints}/lfbm-flow-hierarchical-encoder-heldout{digit}-seed{seed}-cpu-hierarchical.pt",
                           weights_only=False)
        recipe.trainer.load_state_dict(state["trainer"])
        recipe.trainer.load_average()
        recipe.model.eval()
        recipe.encoder_guide.eval()
        prior = recipe.model.prior
        z = recipe.encoder_guide.mean(split.test_x)
        u, log_det = flow_forward(list(prior.flow.parts), z)
        scores = {"prior (the preset's)": -prior.log_prob(z), "quadratic |u|^2/2": 0.5 * (u ** 2).sum(-1),
                  "volume -log|det|": -log_det}
        cuts = np.cumsum([0] + saved["latent_dims"].tolist())
        for layer in range(len(cuts) - 1):
            scores[f"|z{layer + 1}|^2"] = (z[:, cuts[layer]:cuts[layer + 1]] ** 2).sum(-1)
        q = recipe.encoder_guide.distribution(split.test_x)
        for draws in (1, 8, 32):
            log_p = prior.log_prob(q.sample((draws,)))
            scores[f"E_{draws} prior"] = -log_p.mean(0)
            scores[f"LSE_{draws} prior"] = -(torch.logsumexp(log_p, 0) - np.log(draws))
        recon = saved["batchnorm"]["eval"]["recon"]
        for weight in (0.01, 0.03, 0.1, 0.3, 1.0):
            scores[f"prior + {weight} recon"] = saved["batchnorm"]["eval"]["prior"] + weight * recon
    for name, score in scores.items():
        print(f"{digit},{seed},{name},{anomaly_metrics(y, score)['auprc']:.4f}", flush=True)
