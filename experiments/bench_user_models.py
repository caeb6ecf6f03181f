"""Compiled chains on a user's own models: ms per Langevin step of ``LangevinGuide(model, compile=True)``
against the eager guide and an official-style hand-written loop, side by side (issue 22, item 6).

Models (a user's, nothing from :mod:`pyro_lfbm.models`):

- ``sequential``: a user's ``nn.Sequential`` generator (z 16 → 256 → 784, Tanh) wrapped in a small
  Pyro model, z ~ N(0, I), x | z ~ Normal(g(z), 0.3) over 28×28 pixels (random images);
- ``digits``: the Bernoulli-likelihood model of scikit-learn's 8×8 digits of
  ``experiments/guide_step_size.py`` (6-d latent, MLP decoder 6 → 64 → 64 → 64 logits).

Methods (one row each per model × batch size):

- ``handwritten``: the loop a user writes by hand (the official LFBM code's style): ``z.requires_grad_``,
  the log joint written out with ``torch.distributions``, ``torch.autograd.grad``, the move, ``K`` times;
- ``eager``: ``LangevinGuide(model, num_steps=K, step_size=s).infer(x)`` (log joint from Pyro traces);
- ``compiled``: ``LangevinGuide(model, ..., compile=True).infer(x)`` (the model traced into one graph
  at each call's first evaluation, ``torch.jit.trace``).

Per step = (median time of a K-step call - median time of a 0-step call) / K; the methods are called in
turn (:func:`benchmarks.interleaved_times`). Every row records the CPU model, threads and load average;
``environment_user_models.csv`` the command.

Example::

    python experiments/bench_user_models.py --threads 1 --out results/bench
    python experiments/bench_user_models.py --smoke --out /tmp/bench   # seconds (CI)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

from benchmarks import add_run_arguments, cpu_description, interleaved_times, load_average  # noqa: E402
from pyro_lfbm.harness import cli  # noqa: E402
from pyro_lfbm.infer import LangevinGuide  # noqa: E402
from pyro_lfbm.infer.modes import frozen_parameters  # noqa: E402

MODELS = ("sequential", "digits")
METHODS = ("handwritten", "eager", "compiled")


class UserModel:
    """A user's Pyro model: ``model(x)`` with a latent ``z`` (B, D) in a data plate, its decoder, and
    the same log joint written out by hand (``log_joint(x, z)`` (B,)) for the hand-written loop."""

    def __init__(self, name: str, seed: int):
        torch.manual_seed(seed)
        self.name = name
        if name == "sequential":
            self.latent_dim, self.sigma = 16, 0.3
            self.decoder = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.Tanh(), torch.nn.Linear(256, 784))
        else:
            self.latent_dim = 6
            self.decoder = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                               torch.nn.Tanh(), torch.nn.Linear(64, 64))

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        out = self.decoder(z)
        if self.name == "sequential":
            return dist.Normal(out, self.sigma).to_event(1)
        return dist.Bernoulli(logits=out).to_event(1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(z), obs=x)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        out = self.decoder(z)
        if self.name == "sequential":
            return prior + torch.distributions.Normal(out, self.sigma).log_prob(x).sum(-1)
        return prior + torch.distributions.Bernoulli(logits=out).log_prob(x).sum(-1)

    def data(self, batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.name == "sequential":
            return torch.rand(batch, 784, generator=g) * 2 - 1
        from sklearn.datasets import load_digits

        digits = torch.tensor(load_digits().data > 8, dtype=torch.float32)  # (1797, 64), binarised
        return digits[torch.randint(0, digits.shape[0], (batch,), generator=g)]


def handwritten_langevin(log_joint: Callable, x: torch.Tensor, z: torch.Tensor, num_steps: int, s: float) -> torch.Tensor:
    """The official-style loop: K moves z ← z + (s²/2) ∇ log p(x, z) + s ε."""
    for _ in range(num_steps):
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_joint(x, z).sum(), z)
        z = z.detach() + 0.5 * s * s * grad + s * torch.randn_like(z)
    return z.detach()


def make_runners(user: UserModel, x: torch.Tensor, methods, step_size: float) -> Dict[str, Callable[[int], object]]:
    """method -> run(num_steps) performing that many Langevin steps on batch x."""
    runners: Dict[str, Callable[[int], object]] = {}
    if "handwritten" in methods:

        def handwritten(k):
            with frozen_parameters(user.decoder):  # as inside the guide's chain: parameters frozen
                return handwritten_langevin(user.log_joint, x, torch.randn(x.shape[0], user.latent_dim), k, step_size)

        runners["handwritten"] = handwritten
    for name, compile in (("eager", False), ("compiled", True)):
        if name in methods:
            guide = LangevinGuide(user.model, num_steps=1, step_size=step_size, compile=compile)

            def run(k, guide=guide):
                guide.num_steps = k
                return guide.infer(x)

            runners[name] = run
    return runners


def bench_config(model_name: str, batch: int, args, cpu: str) -> List[dict]:
    user = UserModel(model_name, args.seed)
    x = user.data(batch, args.seed + 1)
    runners = make_runners(user, x, args.methods, args.step_size)
    for run in runners.values():  # warm-up
        run(2)
    steps = args.num_steps
    full = interleaved_times({n: (lambda r=r: r(steps)) for n, r in runners.items()}, args.repeats)
    setup = interleaved_times({n: (lambda r=r: r(0)) for n, r in runners.items()}, args.repeats)
    rows = []
    for name, ts in full.items():
        setup_med = statistics.median(setup[name])
        per_step = [max(t - setup_med, 1e-9) / steps for t in ts]
        rows.append(dict(model=model_name, batch=batch, method=name, ms_per_step=1e3 * statistics.median(per_step),
                         ms_min=1e3 * min(per_step), ms_max=1e3 * max(per_step), setup_ms=1e3 * setup_med,
                         steps_per_call=steps, repeats=len(ts), threads=torch.get_num_threads(),
                         load_avg=load_average(), cpu=cpu))
    return rows


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """speedup_vs_{handwritten,eager}: that method's ms per step over each row's."""
    key = ["model", "batch"]
    for ref in ("handwritten", "eager"):
        if ref in set(df.method):
            col = df[df.method == ref].set_index(key)["ms_per_step"].rename(f"{ref}_ms")
            df = df.join(col, on=key)
            df[f"speedup_vs_{ref}"] = df[f"{ref}_ms"] / df.ms_per_step
            df = df.drop(columns=[f"{ref}_ms"])
    return df


def main(args) -> pd.DataFrame:
    if args.smoke:
        args.batch_sizes, args.repeats, args.num_steps = [2], 2, 2
    out = cli.writable_dir(args.out, "--out")
    cpu = cpu_description()
    print(f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); load {load_average():.2f}", flush=True)
    rows = []
    for model_name in args.models:
        for batch in args.batch_sizes:
            pyro.clear_param_store()
            rows += bench_config(model_name, batch, args, cpu)
            print(f"  {model_name} batch {batch}: done (load {load_average():.2f})", flush=True)
    df = add_ratios(pd.DataFrame(rows))
    tag = f"{args.tag}_" if args.tag else ""
    df.to_csv(out / f"{tag}user_models.csv", index=False)
    env = {"cpu": cpu, "torch": torch.__version__, "pyro": pyro.__version__, "python": sys.version.split()[0],
           "threads": torch.get_num_threads(), "command": cli.command_line()}
    pd.Series(env).to_csv(out / f"{tag}environment_user_models.csv", header=["value"])
    cols = [c for c in ["model", "batch", "method", "ms_per_step", "ms_min", "ms_max", "speedup_vs_handwritten",
                        "speedup_vs_eager", "load_avg"] if c in df.columns]
    print(df[cols].round(3).to_markdown(index=False))
    print(f"wrote {out}/{tag}user_models.csv")
    return df


def build_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--batch-sizes", nargs="+", type=cli.positive_int, default=[1, 100])
    p.add_argument("--num-steps", type=cli.positive_int, default=20, help="Langevin steps in one timed call")
    p.add_argument("--step-size", type=cli.positive_float, default=0.1)
    p.add_argument("--repeats", type=cli.positive_int, default=7, help="timed calls per method (median reported)")
    add_run_arguments(p, default_seed=0, smoke_help="seconds-long run, batch 2, 2 steps (CI)",
                      default_out=str(REPO / "runs" / "bench"))
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


if __name__ == "__main__":
    cli.run_cli(main, parse_args())
