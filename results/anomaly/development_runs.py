"""The `cpu-hierarchical` preset's finished development runs, for the post-hoc decision-function scripts of
hierarchical_complexity/, hierarchical_typicality/, hierarchical_knn/, hierarchical_score_variants/top_layer_marginals.py
and hierarchical_ensemble_proxy/ (which import this file from here).

Development pairs: MNIST digits 0 and 8 (the runs of hierarchical_ema/) and Fashion-MNIST classes 6 and 2 (the runs of
fashion_dev/), seeds 1 and 2.
"""
import torch

from pyro_lfbm.data.root import resolve_data_root
from pyro_lfbm.harness.anomaly_experiment import (AnomalyRunConfig, anomaly_preset, checkpoint_name, run_folder_name,
                                                     run_split, run_variant)
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.recipe import build, isolated


def preset_run_paths(dataset, heldout, seed, checkpoint_dir, out_dir):
    """The checkpoint file and the run folder that ``experiments/anomaly.py --preset cpu-hierarchical`` writes for one
    pair into ``--checkpoint-dir`` ``checkpoint_dir`` and ``--out`` ``out_dir`` (the harness's own names)."""
    cfg = AnomalyRunConfig(heldout=heldout, seed=seed, dataset=dataset, preset="cpu-hierarchical")
    anomaly_preset(cfg)
    return (f"{checkpoint_dir}/{checkpoint_name(cfg)}",
            f"{out_dir}/{run_folder_name(cfg.heldout, cfg.prior, cfg.seed, run_variant(cfg))}")


def development_runs(mnist_ckpt, mnist_scores, fashion_ckpt, fashion_scores):
    """(dataset, held-out class, seed, checkpoint path, saved scores path) of the eight development pairs, from the
    checkpoint and output folders of the two tasks' commands."""
    for dataset, classes, ckpt, scores in (("mnist", (0, 8), mnist_ckpt, mnist_scores),
                                           ("fashion-mnist", (6, 2), fashion_ckpt, fashion_scores)):
        for c in classes:
            for s in (1, 2):
                checkpoint, folder = preset_run_paths(dataset, c, s, ckpt, scores)
                yield dataset, c, s, checkpoint, f"{folder}/scores.pt"


def load_development_run(dataset, heldout, seed, checkpoint, scores_path):
    """The run's split, its saved scores and its recipe in evaluation mode with the weight average loaded (BatchNorm
    on running statistics, as the preset scores), built under ``isolated(0)``."""
    saved = torch.load(scores_path, weights_only=False)
    split = run_split(resolve_data_root(), heldout, seed, dataset=dataset)
    with isolated(0):
        recipe = build(get_preset("cpu-hierarchical"))
    recipe.trainer.load_state_dict(torch.load(checkpoint, weights_only=False)["trainer"])
    recipe.trainer.load_average()
    recipe.model.eval()
    recipe.encoder_guide.eval()
    return split, saved, recipe
