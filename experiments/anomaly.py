"""MNIST held-out-digit anomaly detection with LFBM (or ABP / LEBM).

    python experiments/anomaly.py --heldout 7

trains on 80 % of the images of every digit but the held-out one (the default preset, ``cpu-hybrid``, trains
with Langevin started at an encoder's mean, chosen on development digits 3 and 8), infers z for each test
image (at the encoder's z by default; by noise-free Langevin with ``--test-steps N``), scores it by −log p(x, z) (and by its two parts), prints the AUPRC and writes
metrics, scores, figures and the command under --out (default runs/anomaly/, ignored by git: the
reference runs committed under results/anomaly/runs/ are only written with --out results/anomaly/runs).

Every option is checked before the data are read; a finished run in --out is only replaced with
--overwrite, and a second run on the same --out or --checkpoint-dir is refused while the first is
alive. Exit codes: 1 disk full (one line; the last checkpoint is kept), 2 bad input (one line), 3
training became NaN/inf (one line; lower --lr, or --skip-nonfinite), 4 another process of a torchrun
job stopped (--resume continues), 130 Ctrl-C and 143 SIGTERM (the checkpoint is written at the next
batch; --resume continues exactly).

Data-parallel over several processes (each process takes its share of every batch; rank 0 writes):

    torchrun --standalone --nproc_per_node 2 experiments/anomaly.py --heldout 7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyro_lfbm.harness import cli
from pyro_lfbm.train import distributed
from pyro_lfbm.harness.anomaly_experiment import (
    BATCHNORM_CHOICES,
    CHAIN_HELP,
    CHAINS,
    RUN_FILES,
    AnomalyRunConfig,
    anomaly_preset,
    checkpoint_name,
    run_anomaly,
    run_folder_name,
    run_variant,
    save_anomaly_run,
)
from pyro_lfbm.infer.samplers import SAMPLER_NAMES
from pyro_lfbm.train.presets import ANOMALY_PRESETS, ENCODERS, GUIDES, MODELS, prior_names, ModelConfig


SCORE_NAMES = {"joint": "−log p(x, z)", "prior": "−log p(z)", "recon": "−log p(x | z)"}


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", type=cli.digit, default=7,
                        help="the digit (the Fashion-MNIST class with --dataset fashion-mnist) treated as anomalous (0-9)")
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                        help="mnist (the paper's task) or fashion-mnist (a development task: held-out classes of "
                             "Fashion-MNIST, for choosing settings away from the reported MNIST digits)")
    parser.add_argument("--prior", choices=prior_names(), default="flow", help="flow = LFBM, gaussian = ABP, ebm = LEBM")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="(default: the preset's: hierarchical for cpu-hierarchical, else latent) latent = one latent "
                             "vector (LFBM); hierarchical = latents z1, z2, z3 at three generator layers with the prior "
                             "over their concatenation")
    parser.add_argument("--guide", choices=GUIDES, default=None,
                        help="training guide (default: the preset's: hybrid for cpu-hybrid, encoder for cpu-hierarchical, else langevin): langevin (short-run Langevin from N(0, I), the paper), encoder (an "
                             "amortized Gaussian encoder: LFBM-VAE; with --model hierarchical the hierarchical-VAE "
                             "baseline) or hybrid (Langevin from the encoder mean); test chains start at the encoder "
                             "mean for encoder and hybrid")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default="ula",
                        help="the training chain's sampler (langevin guide): ula (the paper), preconditioned (pSGLD's "
                             "diagonal) or underdamped (OBABO); one gradient evaluation per step each")
    parser.add_argument("--encoder", choices=ENCODERS, default="mean-field",
                        help="the inference network of the encoder and hybrid guides: mean-field (one Gaussian over all "
                             "latents) or conditional (--model hierarchical: each layer conditioned on the layers above, "
                             "q(z1|x) q(z2|z1,x) q(z3|z1,z2,x))")
    parser.add_argument("--test-steps", type=cli.nonnegative_int, default=None,
                        help="test-time Langevin steps (paper: 400); 0 scores at the encoder's z (--guide encoder or hybrid)")
    parser.add_argument("--test-batch-size", type=cli.positive_int, default=None,
                        help="images per scoring batch (cpu preset: 500; the official code: 100)")
    parser.add_argument("--batchnorm", choices=tuple(BATCHNORM_CHOICES), default="both",
                        help="BatchNorm statistics when scoring: running (eval), per test batch (train, as the official "
                             "code), or running statistics re-estimated from 10,000 training images at their "
                             "test-time z (recalibrated); both = eval and train, all = the three")
    parser.add_argument("--sigma", type=cli.positive_float, default=None, help="override the pixel noise std σ of the preset")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a model-config field, e.g. --set batch_norm=false --set latent_dim=16")
    parser.add_argument("--lr", type=cli.positive_float, default=None, help="override the preset's Adam learning rate")
    parser.add_argument("--lr-decay", type=cli.positive_float, default=None, metavar="GAMMA",
                        help="override the preset's learning-rate decay: the rate is multiplied by GAMMA after every "
                             "epoch (ExponentialLR; cpu presets 0.998, in (0, 1])")
    parser.add_argument("--limit-train", type=cli.positive_int, default=None,
                        help="use only this many training images (at least one batch)")
    parser.add_argument("--limit-test", type=cli.int_at_least(2), default=None,
                        help="use only this many test images (anomaly share kept; at least 2)")
    parser.add_argument("--eval-only", metavar="CHECKPOINT", default=None, help="score a trained checkpoint, no training")
    parser.add_argument("--chain", choices=CHAINS, default=None, help=CHAIN_HELP)
    parser.add_argument("--iwae-particles", type=cli.nonnegative_int, default=0, metavar="P",
                        help="also score by -log p(x), an importance-weighted estimate with P draws from the encoder, "
                             "and by the rate KL(q(z|x) || p(z)) with the same draws (encoder and hybrid guides; "
                             "BatchNorm eval); 0 = off")
    parser.add_argument("--llr-layers", type=cli.positive_int, nargs="+", default=(), metavar="K",
                        help="--model hierarchical: also score by Havtorn et al.'s likelihood ratio LLR^{>K} (redraw the K "
                             "lowest latent layers from the prior given the others), one score llrK per K; with --iwae-particles "
                             "and --set layer_prior=top-down also llrK_iw, the ratio of two importance-weighted bounds")
    parser.add_argument("--refit-epochs", type=cli.nonnegative_int, default=0, metavar="E",
                        help="also score by prior_refit, -log q(z) with q a copy of the trained flow prior refit to the "
                             "training images' test-time z for at most E epochs, stopped early on a tenth of them (the "
                             "second stage of Dai & Wipf's two-stage VAE); 0 = off")
    parser.add_argument("--ema", type=cli.nonnegative_float, default=None, metavar="DECAY",
                        help="keep an exponential moving average of the weights (Polyak averaging) with this decay and "
                             "score the averaged model (default: the preset's, 0.999 for cpu-hierarchical, else none); "
                             "0 = none, the last weights; with --eval-only, which of a checkpoint's weights to score")
    cli.add_common_arguments(parser, default_out="runs/anomaly", presets=ANOMALY_PRESETS)
    return parser


def run_config(args: argparse.Namespace) -> AnomalyRunConfig:
    """Every check of the command line, before any data are read; returns the run's configuration."""
    device = cli.check_common_arguments(args)
    checkpoint_dir = args.checkpoint_dir or str(Path(args.out) / "checkpoints")
    cfg = AnomalyRunConfig(
        heldout=args.heldout, dataset=args.dataset, prior=args.prior, preset=args.preset, seed=args.seed, epochs=args.epochs,
        test_steps=args.test_steps, test_batch_size=args.test_batch_size, batchnorm=args.batchnorm,
        limit_train=args.limit_train, limit_test=args.limit_test,
        data_root=args.data_root, device=str(device), checkpoint_dir=checkpoint_dir,
        resume=args.resume, eval_only=args.eval_only, progress=not args.no_progress, sigma=args.sigma, lr=args.lr, lr_decay=args.lr_decay,
        model_overrides=cli.parse_overrides(args.overrides, ModelConfig(), refused={
            "prior": "use --prior", "sigma": "use --sigma", "image_shape": "the data set fixes it"}),
        skip_nonfinite=args.skip_nonfinite, chain=args.chain, model=args.model, guide=args.guide,
        sampler=args.sampler, encoder=args.encoder, iwae_particles=args.iwae_particles, llr_layers=tuple(args.llr_layers),
        refit_epochs=args.refit_epochs, ema=args.ema,
    )
    anomaly_preset(cfg)
    cli.refuse_finished_run(Path(args.out) / run_folder_name(cfg.heldout, cfg.prior, cfg.seed, run_variant(cfg)), "run.json",
                            args.overwrite)
    if not args.eval_only:
        cli.writable_dir(checkpoint_dir, "--checkpoint-dir")
        cli.check_checkpoint_choice(Path(checkpoint_dir) / checkpoint_name(cfg), args.resume, args.overwrite)
    return cfg


def main(args: argparse.Namespace) -> pd.DataFrame:
    cfg = run_config(args)
    out = Path(args.out) / run_folder_name(cfg.heldout, cfg.prior, cfg.seed, run_variant(cfg))
    result = run_anomaly(cfg)
    if not distributed.is_main():  # torchrun: rank 0 alone writes the run's files and prints
        return None
    table = pd.DataFrame(result.rows)
    save_anomaly_run(result, cfg, out)
    print(table[["batchnorm", "score", "auprc", "ap", "auroc", "train_seconds", "test_seconds"]].to_string(index=False))
    score = anomaly_preset(cfg).score  # the decision function the preset's recipe was chosen with
    for _, row in table[table.score == score].iterrows():
        print(f"AUPRC ({SCORE_NAMES[score]}, BatchNorm {row.batchnorm}) = {row.auprc:.3f}  (prevalence {row.prevalence:.3f})")
    where = f"scored {cfg.eval_only}" if cfg.eval_only else f"checkpoint in {cfg.checkpoint_dir}"
    files = RUN_FILES + (("refit_history.csv",) if cfg.refit_epochs else ())
    print(f"wrote {out}/ ({', '.join(files)}); {where}")
    return table


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args(), data_parallel=True)
