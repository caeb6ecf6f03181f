"""A tiny data-parallel training run for tests/test_distributed.py, and a torchrun-like launcher.

``python tests/distributed_worker.py --out DIR ...`` trains the ``tiny`` preset's LatentModel on
synthetic images with :func:`pyro_lfbm.train.fit`; started as several processes by :func:`launch`
(the environment torchrun sets: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) it trains
data-parallel, and every process writes what it ended with to ``DIR/rank<r>.pt``. :func:`run`
does the same in the calling process (the one-process reference).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pyro
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyro_lfbm.infer import LangevinGuide  # noqa: E402
from pyro_lfbm.train import Checkpointing, distributed, fit, get_preset  # noqa: E402
from pyro_lfbm.train.svi import OptimConfig, SVITrainer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prior", default="flow")
    parser.add_argument("--n", type=int, default=24, help="training images")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-steps", type=int, default=3, help="Langevin steps per SVI step")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--optim", choices=("adam", "sgd"), default="sgd",
                        help="sgd: plain gradient steps, which show any error in the scale of the gradient (Adam hides it)")
    parser.add_argument("--persistent", action="store_true", help="persistent chains (one per image)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--score", type=int, default=0, help="also score this many images (train-mode BatchNorm)")
    parser.add_argument("--ema", type=float, default=None, help="keep a moving average of the weights with this decay")
    parser.add_argument("--cli", action="store_true", help="go through the scripts' error wrapper (run_cli)")
    return parser


class SGDConfig(OptimConfig):
    """Plain SGD with the per-epoch decay of :class:`OptimConfig` (not invariant to the gradient's scale)."""

    def build(self):
        return pyro.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": self.lr}, "gamma": self.gamma})


def data(n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return (torch.rand(n, 1, 28, 28, generator=g) * 2 - 1).to(dtype)


def run(args: argparse.Namespace) -> Dict:
    """Train (and score) as the arguments say; returns what this process ended with."""
    dtype = getattr(torch, args.dtype)
    preset = get_preset("tiny", args.prior)
    pyro.clear_param_store()
    torch.manual_seed(7)
    model = preset.model.build().to(dtype)
    guide = LangevinGuide(model, num_steps=args.num_steps, step_size=0.1,
                          persistent=args.n if args.persistent else None)
    x = data(args.n, dtype)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim = SGDConfig(lr=2e-6, ema_decay=args.ema) if args.optim == "sgd" else OptimConfig(lr=2e-3, ema_decay=args.ema)
    trainer = SVITrainer(model, guide, optim)
    history = fit(model, guide, x, epochs=args.epochs, batch_size=args.batch_size, trainer=trainer, seed=3,
                  checkpoint=Checkpointing(args.checkpoint, args.resume) if args.checkpoint else None, progress=False)
    world = distributed.current()
    z_last = guide.latents["z"]
    if world is not None:  # the last batch's final latents, all rows
        z_last = distributed.gather_rows(z_last, args.batch_size)
    out = {
        "initial": initial,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": history.epochs,
        "z_last": z_last.detach().clone(),
        "rank": 0 if world is None else world.rank,
    }
    if trainer.average is not None:
        out["average"] = trainer.average.averages[0]
    if args.persistent:
        out["chains"] = guide.chains.state()
    if args.score:
        scores = distributed.sharded_inference(model, data(args.score + 7, dtype)[7:], num_steps=4, step_size=0.1,
                                               batch_size=args.score, progress=False)
        out["scores"] = scores.log_joint
        out["score_z"] = scores.z
    return out


def main(args: argparse.Namespace) -> None:
    result = run(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(result, Path(args.out) / f"rank{result['rank']}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Path = ROOT,
           **popen) -> List[subprocess.Popen]:
    """Start ``python argv`` as ``world_size`` processes (in ``cwd``) with the environment torchrun gives its workers."""
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        child = dict(os.environ, **(env or {}))
        child.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *argv], env=child, cwd=cwd, **popen))
    return procs


if __name__ == "__main__":
    torch.set_num_threads(1)
    arguments = build_parser().parse_args()
    if arguments.cli:  # the scripts' error wrapper opens the process group
        from pyro_lfbm.harness import cli

        cli.run_cli(main, arguments, data_parallel=True)
    else:
        with distributed.process_group("cpu"):
            main(arguments)
