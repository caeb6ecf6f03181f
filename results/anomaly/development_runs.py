"""The `cpu-hierarchical` preset's finished development runs, for the post-hoc decision-function scripts of
hierarchical_complexity/, hierarchical_typicality/ and hierarchical_knn/ (which import this file from here).

Development pairs: MNIST digits 0 and 8 (the runs of hierarchical_ema/) and Fashion-MNIST classes 6 and 2 (the runs of
fashion_dev/), seeds 1 and 2.
"""
import torch

from pyro_lfbm.data.root import resolve_data_root
from pyro_lfbm.harness.anomaly_experiment import run_split
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.recipe import build, isolated


def development_runs(mnist_ckpt, mnist_scores, fashion_ckpt, fashion_scores):
    """(dataset, held-out class, seed, checkpoint path, saved scores path) of the eight development pairs, from the
    checkpoint and output folders of the two tasks' commands."""
    name = "lfbm-flow-hierarchical-encoder-{task}heldout{c}-seed{s}-cpu-hierarchical.pt"
    folder = "heldout{c}-flow-hierarchical-encoder-{task}seed{s}/scores.pt"
    for dataset, task, classes, ckpt, scores in (("mnist", "", (0, 8), mnist_ckpt, mnist_scores),
                                                 ("fashion-mnist", "fashion-mnist-", (6, 2), fashion_ckpt, fashion_scores)):
        for c in classes:
            for s in (1, 2):
                yield (dataset, c, s, f"{ckpt}/{name.format(task=task, c=c, s=s)}",
                       f"{scores}/{folder.format(task=task, c=c, s=s)}")


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
