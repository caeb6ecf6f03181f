"""Importance-sampled marginal prior densities of the upper layers, −log p̂(z₁) and −log p̂(z₁, z₂), of the
`cpu-hierarchical` preset's MNIST development runs (digits 0 and 8, seeds 1 and 2), against the prior term (README
beside, "upper layers' marginal prior density"). Prints one line of AUPRCs per pair, as in top_layer_marginals.out.

    OMP_NUM_THREADS=1 python top_layer_marginals.py MNIST_CKPT MNIST_SCORES

MNIST_CKPT / MNIST_SCORES: the checkpoint and output folders of ../hierarchical_ema/'s commands (the run that made
top_layer_marginals.out read them from /work/runs_s18/ckpt_ema and /work/runs_s18/ema). Data: $PYRO_LFBM_DATA, else
../shared/data.
"""
import math
import sys
from pathlib import Path

import torch
from pyro_lfbm.metrics.anomaly import anomaly_metrics
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.recipe import build, isolated
from pyro_lfbm.data.root import resolve_data_root
from pyro_lfbm.harness.anomaly_experiment import run_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results/anomaly/development_runs.py
from development_runs import preset_run_paths  # noqa: E402

torch.set_num_threads(1)
mnist_ckpt, mnist_scores = sys.argv[1:3]
def auprc(y, s): return anomaly_metrics(y, s)['auprc']
for d, s in [(0,1),(8,1),(0,2),(8,2)]:
    ck, folder = preset_run_paths('mnist', d, s, mnist_ckpt, mnist_scores)
    sc = torch.load(f'{folder}/scores.pt', weights_only=False)
    split = run_split(resolve_data_root(), d, s)
    y = sc['is_anomaly']
    with isolated(0), torch.no_grad():
        r = build(get_preset("cpu-hierarchical"))
        r.trainer.load_state_dict(torch.load(ck, weights_only=False)['trainer']); r.trainer.load_average()
        r.model.eval(); r.encoder_guide.eval()
        loc, scale = r.encoder_guide.encode(split.test_x)
        tr_loc, _ = r.encoder_guide.encode(split.train_x[:5000])
        prior = r.model.prior
        out = {'prior': auprc(y, -prior.log_prob(loc))}
        for keep in (20, 30):
            lower = slice(keep, 40)
            S = 64
            # proposal A: q's lower layers with scale x3; proposal B: Gaussian fit to training encodings' lower layers
            mu_b, sd_b = tr_loc[:, lower].mean(0), tr_loc[:, lower].std(0)
            for name, (m, sd) in {'q3': (loc[:, lower], 3 * scale[:, lower]), 'fit': (mu_b.expand_as(loc[:, lower]), sd_b.expand_as(loc[:, lower]))}.items():
                est = []
                for chunk in torch.split(torch.arange(loc.shape[0]), 2000):
                    prop = torch.distributions.Normal(m[chunk], sd[chunk])
                    zl = prop.sample((S,))                       # (S, b, 40-keep)
                    z = torch.cat([loc[chunk, :keep].expand(S, -1, -1), zl], -1)
                    lw = prior.log_prob(z) - prop.log_prob(zl).sum(-1)
                    est.append(torch.logsumexp(lw, 0) - math.log(S))
                out[f'marg z[:{keep}] {name}'] = auprc(y, -torch.cat(est))
    print(d, s, {k: round(v, 4) for k, v in out.items()}, flush=True)
