"""Does a 20-step preconditioned or underdamped training chain learn a better LFBM than ULA at equal
gradient evaluations? (issue 22)

For each sampler of ``--samplers`` (``ula``, the paper's chain; ``preconditioned``, pSGLD's adaptive
diagonal; ``underdamped``, OBABO; one gradient evaluation per step each, so the same ``num_steps``
is the same cost) this trains the anomaly run of ``experiments/anomaly.py --sampler <name>`` on a
development held-out digit (default 3, not the reported 7), then reports

- the development digit's AUPRC (score −log p(x, z), BatchNorm eval, as ``metrics.csv``);
- an IWAE estimate of log p(x) (:func:`~pyro_lfbm.metrics.evaluation.iwae_log_px`, ``--iwae-particles``
  draws from a Laplace proposal around each image's test-time latents) on the first
  ``--iwae-images`` normal test images, mean and standard error.

Rows go to ``samplers.csv`` in ``--out`` (with the command); each run's checkpoint to
``<out>/checkpoints`` (``--resume`` continues them, ``--overwrite`` starts them and the table afresh). Every test chain is the same noise-free
ascent, so only the training chain differs.

Example::

    python experiments/compare_samplers.py --heldout 3 --seed 1 --out runs/samplers       # cpu preset
    python experiments/compare_samplers.py --preset tiny --epochs 1 --limit-train 200 --limit-test 100 \\
        --iwae-images 8 --iwae-particles 4 --out /tmp/samplers                            # seconds
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import pyro  # noqa: E402

from pyro_lfbm.harness import cli  # noqa: E402
from pyro_lfbm.harness.anomaly_experiment import (  # noqa: E402
    AnomalyRunConfig,
    anomaly_preset,
    checkpoint_name,
    run_anomaly,
)
from pyro_lfbm.infer.samplers import SAMPLER_NAMES  # noqa: E402
from pyro_lfbm.metrics.evaluation import GaussianProposal, iwae_log_px  # noqa: E402


def run_configs(args) -> list:
    """Every check of the command line, before any data are read: one run configuration per sampler
    (each checkpoint claimed; an existing one needs ``--resume`` or ``--overwrite``)."""
    device = cli.check_common_arguments(args)
    checkpoint_dir = args.checkpoint_dir or str(Path(args.out) / "checkpoints")
    cli.refuse_finished_run(args.out, "samplers.csv", args.overwrite)
    cli.writable_dir(checkpoint_dir, "--checkpoint-dir")
    configs = []
    for sampler in args.samplers:
        cfg = AnomalyRunConfig(
            heldout=args.heldout, prior="flow", preset=args.preset, seed=args.seed, epochs=args.epochs,
            batchnorm="eval", limit_train=args.limit_train, limit_test=args.limit_test, data_root=args.data_root,
            device=str(device), checkpoint_dir=checkpoint_dir, resume=args.resume, progress=not args.no_progress,
            chain=args.chain, sampler=sampler,
        )
        anomaly_preset(cfg)
        cli.check_checkpoint_choice(Path(checkpoint_dir) / checkpoint_name(cfg), args.resume, args.overwrite)
        configs.append(cfg)
    return configs


def main(args) -> pd.DataFrame:
    rows = []
    for cfg in run_configs(args):
        pyro.clear_param_store()
        result = run_anomaly(cfg)
        joint = next(r for r in result.rows if r["score"] == "joint")
        normal = ~result.is_anomaly.bool()
        x = result.test_x[normal][: args.iwae_images]
        z = result.latents[normal][: args.iwae_images]
        proposal = GaussianProposal.laplace(result.model, x, z)
        iwae = iwae_log_px(result.model, x, proposal, num_particles=args.iwae_particles, seed=args.seed)
        rows.append(dict(
            sampler=cfg.sampler, heldout=cfg.heldout, seed=cfg.seed, preset=cfg.preset,
            num_steps=result.config["learn"]["num_steps"], epochs=result.config["learn"]["epochs"],
            auprc=joint["auprc"], auroc=joint["auroc"], iwae_log_px=float(iwae.mean()),
            iwae_se=float(iwae.std() / math.sqrt(len(iwae))) if len(iwae) > 1 else float("nan"),
            iwae_images=len(iwae), iwae_particles=args.iwae_particles, train_seconds=joint["train_seconds"],
            command=cli.command_line(),
        ))
        print(f"{cfg.sampler}: AUPRC {joint['auprc']:.3f}, IWAE log p(x) {rows[-1]['iwae_log_px']:.1f}", flush=True)
    table = pd.DataFrame(rows)
    with cli.staged_output(Path(args.out)) as stage:
        table.to_csv(stage / "samplers.csv", index=False)
    print(table[["sampler", "auprc", "iwae_log_px", "iwae_se", "train_seconds"]].round(3).to_string(index=False))
    print(f"wrote {args.out}/samplers.csv")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", nargs="+", choices=SAMPLER_NAMES, default=list(SAMPLER_NAMES))
    p.add_argument("--heldout", type=cli.digit, default=3, help="the development held-out digit (not the reported 7)")
    p.add_argument("--limit-train", type=cli.positive_int, default=None, help="use only this many training images")
    p.add_argument("--limit-test", type=cli.int_at_least(2), default=None, help="use only this many test images")
    p.add_argument("--iwae-images", type=cli.positive_int, default=500, help="normal test images of the IWAE estimate")
    p.add_argument("--iwae-particles", type=cli.positive_int, default=100)
    p.add_argument("--chain", choices=("compiled", "eager"), default="compiled",
                   help="the training and test chains' implementation (the same numbers up to float rounding)")
    cli.add_common_arguments(p, default_out="runs/samplers", skip_nonfinite=False)
    return p


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
