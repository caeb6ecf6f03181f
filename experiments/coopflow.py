"""CoopFlow: a normalizing flow and a data-space EBM learned cooperatively (short-run Langevin flow).

    python experiments/coopflow.py --dataset mnist --n-train 5000 --out runs/generation/mnist/coopflow

writes ``samples.pt`` / ``samples.png`` (flow samples revised by the 30-step Langevin flow: the
CoopFlow synthesis), ``before_after.png`` (the same flow samples before | after revision, side by
side), ``flow_samples.png``, ``history.csv`` and ``metrics.json`` (scores before and after revision,
flow bits/dim, skipped updates, training time, command). ``--preset paper`` is the 32×32 colour
setting for a GPU (``--dataset cifar10`` / ``svhn``; ``--dataset fake`` exercises the code path).
Every option is checked before the data are read; a finished run in --out is replaced only with
--overwrite; the checkpoint is written after every epoch and at Ctrl-C, and ``--resume`` continues it exactly.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.cli import UsageError, run_record, save_tensors, staged_output, write_json
from pyro_lfbm.metrics.generation import evaluate_coopflow
from pyro_lfbm.train.coopflow import CoopFlowTrainer, coopflow_preset
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import fit_steps
from pyro_lfbm.harness.task_cli import add_task_arguments, check_task_arguments, load_split, seeded_device


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=cli.positive_int, default=2000, help="samples saved for the Fréchet distance")
    parser.add_argument("--langevin-steps", type=cli.positive_int, default=None, help="override T (official: 30)")
    parser.add_argument("--step-size", type=cli.positive_float, default=None, help="override the Langevin step size s")
    add_task_arguments(parser, default_out="runs/coopflow", n_train=5000, n_test=None, resume=True)
    return parser


def prepare(args: argparse.Namespace):
    """Every check of the command line, before any data are read: (config, checkpoint path)."""
    device, shape = check_task_arguments(args, checkpoints=False)
    try:
        cfg = coopflow_preset(args.preset, shape)
    except ValueError as err:  # unknown data set / preset, or the paper preset on 28x28 images: one line
        raise UsageError(str(err)) from err
    cfg = replace(cfg, epochs=cfg.epochs if args.epochs is None else args.epochs,
                  num_steps=cfg.num_steps if args.langevin_steps is None else args.langevin_steps,
                  step_size=cfg.step_size if args.step_size is None else args.step_size)
    if args.n_train and args.n_train < cfg.batch_size:
        raise UsageError(f"--n-train {args.n_train} is less than one training batch ({cfg.batch_size} images in the "
                         f"{args.preset} preset); pass at least {cfg.batch_size}, or 0 for all")
    ckpt = cli.training_run_checkpoint(args.out, args.checkpoint_dir, "coopflow", args.resume, args.overwrite)
    return cfg, ckpt


def main(args: argparse.Namespace) -> dict:
    from torchvision.utils import save_image

    cfg, ckpt = prepare(args)
    device = seeded_device(args)
    out = Path(args.out)
    x_train = load_split(args, "train", args.n_train)
    if x_train.shape[0] < cfg.batch_size:
        raise UsageError(f"{x_train.shape[0]} training images are less than one batch of {cfg.batch_size}")
    model = cfg.build().to(device)
    trainer = CoopFlowTrainer(model, cfg.optim)
    config = {"dataset": args.dataset, "n_train": x_train.shape[0], **cfg.to_dict()}
    history = fit_steps(trainer, x_train, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed, device=device,
                        checkpoint=Checkpointing(ckpt, args.resume, config,
                                                 ("dataset", "image_shape", "flow_levels", "flow_steps", "flow_hidden",
                                                  "flow_checkerboard_steps", "energy", "energy_width")),
                        progress=not args.no_progress, desc="CoopFlow epoch", skip_nonfinite=args.skip_nonfinite)
    started = time.perf_counter()
    evaluation = evaluate_coopflow(model, x_train, args.num_samples)
    before, after = evaluation["flow_samples"], evaluation["samples"]
    score_before, score_after, score_data = (evaluation[k] for k in ("score_flow_samples", "score_revised_samples", "score_data"))
    bpd_revised, bpd_data = evaluation["flow_bpd_revised"], evaluation["flow_bpd_data"]
    metrics = {
        "model": "coopflow", "dataset": args.dataset, "preset": args.preset, "epochs": len(history.epochs), "seed": args.seed,
        "n_train": int(x_train.shape[0]), "train_seconds": history.train_seconds, "recon_mse": None,
        "score_flow_samples": score_before, "score_revised_samples": score_after, "score_data": score_data,
        "flow_bpd_revised": bpd_revised, "flow_bpd_data": bpd_data,
        "skipped_updates": dict(trainer.skipped), "iterations": trainer.iteration,
        "nonfinite_skipped": history.nonfinite_skipped,
        "sampling_seconds": time.perf_counter() - started, "config": cfg.to_dict(), "history": history.epochs,
    }
    with staged_output(out) as stage:
        save_tensors(after, stage / "samples.pt")
        save_tensors(before, stage / "flow_samples.pt")
        save_image(after[:100] * 0.5 + 0.5, stage / "samples.png", nrow=10)
        save_image(before[:100] * 0.5 + 0.5, stage / "flow_samples.png", nrow=10)
        # 8 rows of 16: each pair of columns is (flow sample, the same sample after revision)
        k = min(64, before.shape[0])
        pairs = torch.stack([before[:k], after[:k]], 1).reshape(2 * k, *before.shape[1:])
        save_image(pairs * 0.5 + 0.5, stage / "before_after.png", nrow=16)
        pd.DataFrame(history.epochs).to_csv(stage / "history.csv", index=False)
        write_json(stage / "metrics.json", run_record(metrics))
    print(f"CoopFlow on {args.dataset}: train {history.train_seconds:.0f} s; EBM score: data {score_data:.3f}, "
          f"flow samples {score_before:.3f}, revised {score_after:.3f}; flow bpd on revised {bpd_revised:.2f}, "
          f"on data {bpd_data:.2f}; skipped {trainer.skipped}; wrote {out}/")
    return metrics


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
