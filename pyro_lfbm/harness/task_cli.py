"""Command-line pieces shared by the recovery, inpainting and synthesis scripts (on top of :mod:`pyro_lfbm.harness.cli`).

* :func:`add_task_arguments`: ``--dataset``, ``--n-train``, ``--n-test``, ``--fake-shape``,
  ``--cache-dir`` (plus :func:`pyro_lfbm.harness.cli.add_common_arguments`).
* :func:`load_split`: the images of a split as (N, C, H, W) in [-1, 1], checked.
* :func:`task_preset`: the named preset for a prior, its image shape set to the data's.
* :func:`checkpoint_dir`: ``--checkpoint-dir``, else ``<cache>/checkpoints`` (outside the repository),
  so that the inpainting script finds the models that the synthesis script trained.
* :func:`check_task_arguments`: every check of these options, before any data are read.

Training runs are keyed by their configuration (:func:`pyro_lfbm.train.recipe.run_tag`) and always
resumable: a finished checkpoint is loaded, an unfinished one continued (so these scripts have no
``--resume``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Optional, Tuple

import torch

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.cli import UsageError, add_common_arguments, resolve_device
from pyro_lfbm.data import DATASETS, dataset_info, load_images
from pyro_lfbm.metrics.fid import default_cache_dir
from pyro_lfbm.train.recipe import fit_preset, with_epochs
from pyro_lfbm.train.presets import Preset, check_prior, get_preset

__all__ = ["add_task_arguments", "check_task_arguments", "checkpoint_dir", "load_split", "parse_shape", "task_preset",
           "trained_model"]


def parse_shape(text: str) -> Tuple[int, int, int]:
    """``"3,64,64"`` -> (3, 64, 64)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise UsageError(f"--fake-shape must be C,H,W with C 1 or 3, e.g. 3,64,64; got {text!r}")
    return shape  # type: ignore[return-value]


def add_task_arguments(parser: argparse.ArgumentParser, *, default_out: str, n_train: Optional[int] = 3000,
                       n_test: Optional[int] = 1000, resume: bool = False, overwrite: bool = True) -> None:
    """The common options plus the data-set options of the image tasks.

    :param resume: offer ``--resume`` (GLF and CoopFlow; the LFBM task scripts always resume).
    :param overwrite: offer ``--overwrite`` (scripts whose runs are not simply skipped when done).
    """
    add_common_arguments(parser, default_out=default_out, resume=resume, overwrite=overwrite)
    parser.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASETS)} (fake = torchvision FakeData)")
    parser.add_argument("--n-train", type=cli.nonnegative_int, default=n_train, help="first N training images (0 = all)")
    parser.add_argument("--n-test", type=cli.nonnegative_int, default=n_test, help="first N test images (0 = all)")
    parser.add_argument("--fake-shape", default="3,32,32", help="C,H,W of --dataset fake (e.g. 3,64,64 to mimic CelebA)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache for checkpoints and the FD classifier (default: $PYRO_LFBM_CACHE, else ~/.cache/pyro_lfbm)")


def image_shape_of(args: argparse.Namespace) -> Tuple[int, int, int]:
    """(C, H, W) of ``args.dataset`` (``--fake-shape`` for the fake data set), without reading data."""
    try:
        info = dataset_info(args.dataset)
    except ValueError as err:
        raise UsageError(f"--dataset: {err}") from None
    return parse_shape(args.fake_shape) if info.name == "fake" else info.shape


def check_task_arguments(args: argparse.Namespace, *, priors=(), batch_size: Optional[int] = None,
                         checkpoints: bool = True) -> Tuple[torch.device, Tuple[int, int, int]]:
    """Every check of the task options, before any data are read: the common ones
    (:func:`pyro_lfbm.harness.cli.check_common_arguments`), ``--dataset`` and ``--fake-shape``, the presets
    of ``priors`` (with ``--epochs``), ``--n-train`` (0 or at least one training batch: ``batch_size``,
    else the largest of the priors' presets), and the checkpoint folder (``--checkpoint-dir`` or the
    cache's, when ``checkpoints``), probed for writing.

    :returns: (device, image shape (C, H, W)).
    """
    device = cli.check_common_arguments(args)
    shape = image_shape_of(args)
    for prior in priors:
        preset_batch = task_preset(args, prior, shape).learn.batch_size
        batch_size = max(batch_size or 0, preset_batch)
    if batch_size is not None and args.n_train and args.n_train < batch_size:
        raise UsageError(f"--n-train {args.n_train} is less than one training batch ({batch_size} images in the "
                         f"{args.preset} preset); pass at least {batch_size}, or 0 for all")
    if checkpoints:
        cli.writable_dir(checkpoint_dir(args), "--checkpoint-dir" if args.checkpoint_dir else "--cache-dir")
    return device, shape


def seeded_device(args: argparse.Namespace) -> torch.device:
    """Seed torch with ``--seed`` and return the ``--device`` (threads: ``--threads``, set by
    :func:`pyro_lfbm.harness.cli.run_cli`)."""
    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def load_split(args: argparse.Namespace, split: str, limit: Optional[int]) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] of ``args.dataset``'s ``split`` (first ``limit``; 0/None = all)."""
    try:
        info = dataset_info(args.dataset)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if limit is not None and limit < 0:
        raise UsageError(f"image counts must be >= 0, got {limit}")
    if split not in info.splits:  # e.g. CelebA has "valid" where others have "test"
        split = "valid" if "valid" in info.splits and split == "test" else info.splits[0]
    fake = dict(fake_size=max(limit or 512, 1), fake_shape=parse_shape(args.fake_shape)) if info.name == "fake" else {}
    x, _ = load_images(info.name, args.data_root, split, limit=limit or None, **fake).tensors
    if x.shape[0] == 0:
        raise UsageError(f"no {split} images were loaded for {info.name}")
    return x


def task_preset(args: argparse.Namespace, prior: str, image_shape: Tuple[int, int, int]) -> Preset:
    """``get_preset(args.preset, prior)`` with ``--epochs`` applied and the model's image shape set."""
    try:
        check_prior(prior)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    preset = with_epochs(get_preset(args.preset, prior), args.epochs)
    return Preset(replace(preset.model, image_shape=tuple(image_shape)), preset.learn)


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """``--checkpoint-dir``, else ``<cache>/checkpoints``."""
    return Path(args.checkpoint_dir) if args.checkpoint_dir else default_cache_dir(args.cache_dir) / "checkpoints"


def trained_model(args: argparse.Namespace, prior: str, x_train: torch.Tensor):
    """The model for ``prior`` trained on complete images x_train (N, C, H, W): loaded from the
    checkpoint cache when the same configuration finished before, else trained (and cached).

    :returns: (model, :class:`~pyro_lfbm.train.svi.History`).
    """
    preset = task_preset(args, prior, tuple(x_train.shape[1:]))
    return fit_preset(preset, x_train, None, seed=args.seed, data={"dataset": dataset_info(args.dataset).name, "split": "train"},
                      device=resolve_device(args.device), checkpoint_dir=checkpoint_dir(args), progress=not args.no_progress,
                      skip_nonfinite=getattr(args, "skip_nonfinite", False))
