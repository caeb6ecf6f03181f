"""Generative Latent Flow: train an autoencoder and a flow on its codes in one stage.

    python experiments/glf.py --dataset mnist --n-train 5000 --out runs/generation/mnist/glf

writes ``samples.pt`` (N, C, H, W) and ``samples.png`` (flow-prior samples G(f^{-1}(ε))),
``reconstructions.png`` (test images over their reconstructions), ``history.csv`` and
``metrics.json`` (test reconstruction MSE per pixel in [-1, 1] units, training time, command).
``--preset paper`` uses the paper's sizes (GPU); ``--dataset fake`` exercises the 32×32 path.
Every option is checked before the data are read; a finished run in --out is replaced only with
--overwrite; the checkpoint (``<out>/../checkpoints/<name>-glf.pt``) is written after every epoch and
at Ctrl-C, and ``--resume`` continues it exactly.
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
from pyro_lfbm.metrics.generation import evaluate_glf
from pyro_lfbm.train.glf import GLFTrainer, glf_preset
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.loop import fit_steps
from pyro_lfbm.harness.task_cli import add_task_arguments, check_task_arguments, load_split, seeded_device


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=cli.positive_int, default=2000, help="samples saved for the Fréchet distance")
    parser.add_argument("--no-stop-gradient", action="store_true", help="let the flow NLL train the encoder too")
    add_task_arguments(parser, default_out="runs/glf", n_train=5000, n_test=1000, resume=True)
    return parser


def prepare(args: argparse.Namespace):
    """Every check of the command line, before any data are read: (config, checkpoint path)."""
    device, shape = check_task_arguments(args, checkpoints=False)
    try:
        cfg = glf_preset(args.preset, shape)
    except ValueError as err:  # unknown data set / split / preset: one line
        raise UsageError(str(err)) from err
    cfg = replace(cfg, epochs=cfg.epochs if args.epochs is None else args.epochs, stop_gradient=not args.no_stop_gradient)
    if args.n_train and args.n_train < cfg.batch_size:
        raise UsageError(f"--n-train {args.n_train} is less than one training batch ({cfg.batch_size} images in the "
                         f"{args.preset} preset); pass at least {cfg.batch_size}, or 0 for all")
    ckpt = cli.training_run_checkpoint(args.out, args.checkpoint_dir, "glf", args.resume, args.overwrite)
    return cfg, ckpt


def main(args: argparse.Namespace) -> dict:
    from torchvision.utils import save_image

    cfg, ckpt = prepare(args)
    device = seeded_device(args)
    out = Path(args.out)
    x_train = load_split(args, "train", args.n_train)
    x_test = load_split(args, "test", args.n_test)
    if x_train.shape[0] < cfg.batch_size:
        raise UsageError(f"{x_train.shape[0]} training images are less than one batch of {cfg.batch_size}")
    model = cfg.build().to(device)
    trainer = GLFTrainer(model, cfg)
    config = {"dataset": args.dataset, "n_train": x_train.shape[0], **cfg.to_dict()}
    history = fit_steps(trainer, x_train, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed, device=device,
                        checkpoint=Checkpointing(ckpt, args.resume, config,
                                                 ("dataset", "image_shape", "latent_dim", "hidden_dim", "channels",
                                                  "flow_steps", "flow_width", "stop_gradient")),
                        progress=not args.no_progress, desc="GLF epoch", skip_nonfinite=args.skip_nonfinite)
    started = time.perf_counter()
    evaluation = evaluate_glf(model, x_test, args.num_samples)
    samples, recon, mse, test_nll = evaluation["samples"], evaluation["reconstructions"], evaluation["recon_mse"], evaluation["test_code_nll"]
    metrics = {
        "model": "glf", "dataset": args.dataset, "preset": args.preset, "epochs": len(history.epochs), "seed": args.seed,
        "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]), "stop_gradient": cfg.stop_gradient,
        "train_seconds": history.train_seconds, "recon_mse": mse, "recon_protocol": "G(E(x)), one encoder pass",
        "test_code_nll": test_nll, "code_std": evaluation["code_std"], "nonfinite_skipped": history.nonfinite_skipped,
        "eval_seconds": time.perf_counter() - started, "config": cfg.to_dict(), "history": history.epochs,
    }
    with staged_output(out) as stage:
        save_tensors(samples, stage / "samples.pt")
        save_image(samples[:100] * 0.5 + 0.5, stage / "samples.png", nrow=10)
        k = min(50, x_test.shape[0])  # each test image beside its reconstruction
        pairs = torch.stack([x_test[:k], recon[:k]], 1).reshape(2 * k, *x_test.shape[1:])
        save_image(pairs * 0.5 + 0.5, stage / "reconstructions.png", nrow=10)
        pd.DataFrame(history.epochs).to_csv(stage / "history.csv", index=False)
        write_json(stage / "metrics.json", run_record(metrics))
    print(f"GLF on {args.dataset}: train {history.train_seconds:.0f} s, test recon MSE {mse:.4f}, "
          f"test code NLL {test_nll:.2f}; wrote {out}/")
    return metrics


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
