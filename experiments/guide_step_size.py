"""How the Langevin guide's step size decides whether a Bernoulli-likelihood model learns (issue 17).

A user's own Pyro model: 8×8 digits (scikit-learn's bundled ``load_digits``, pixels binarised at
half intensity), a 6-d standard-normal latent, an MLP decoder 6 → 64 → 64 → 64 logits and a
Bernoulli likelihood. It is trained by ``SVI(model, LangevinGuide(model, num_steps=20, ...),
Adam, Trace_ELBO())`` with fixed step sizes and with ``step_size="auto"``, then scored by the
pixel accuracy of the decoder's reconstruction (logit > 0) of every image from its inferred latents
(a fresh 20-step noise-free chain, the same for every run), against reconstructions from prior
draws of z.

Example::

    python experiments/guide_step_size.py --epochs 30 --seed 0   # 15-70 s per run on one (shared) CPU core

Measured (30 epochs; pixel accuracy from inferred z / from prior z; seed 0, seed 1; 2-core CPU shared
with other jobs):

=========================  ===============  ===============
step size                  seed 0           seed 1
=========================  ===============  ===============
0.1                        0.793 / 0.793    0.792 / 0.791
0.3                        0.903 / 0.759    0.894 / 0.763
0.5                        0.923 / 0.765    0.925 / 0.763
auto, target 0.574         0.824 / 0.788    0.829 / 0.786   (froze at 1.51, 1.43)
auto, target 0.8 (default) 0.931 / 0.763    0.916 / 0.762   (froze at 0.42, 0.38)
auto, target 0.9           0.868 / 0.765    0.884 / 0.762   (froze at 0.23, 0.24)
=========================  ===============  ===============
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_lfbm.harness import cli
from pyro_lfbm.infer import LangevinGuide, StepSizeAdaptation


def load_binary_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data > 8, dtype=torch.float32)  # (1797, 64), values 0..16 binarised


def make_model(seed: int, latent_dim: int = 6, hidden: int = 64):
    torch.manual_seed(seed)
    decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.Tanh(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 64))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    return model, decoder


def pixel_accuracy(decoder, z: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((decoder(z) > 0).float() == x).float().mean())


def run(step_size, x: torch.Tensor, epochs: int, seed: int, batch_size: int = 100, adapt_calls: int = 200,
        target: float = 0.8) -> dict:
    pyro.clear_param_store()
    model, decoder = make_model(seed)
    if step_size == "auto":
        step_size = StepSizeAdaptation(target, num_updates=adapt_calls)
    guide = LangevinGuide(model, num_steps=20, step_size=step_size)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            svi.step(x[order[start : start + batch_size]])
    seconds = time.perf_counter() - started
    torch.manual_seed(1000 + seed)
    z = LangevinGuide(model, num_steps=20, step_size=guide.step_size, noise=False).infer(x)["z"]
    z_prior = torch.randn(x.shape[0], 6, generator=torch.Generator().manual_seed(2000 + seed))
    return {"step": "auto" if step_size == "auto" else f"{step_size:g}", "frozen_step": guide.step_size,
            "inferred": pixel_accuracy(decoder, z, x), "prior": pixel_accuracy(decoder, z_prior, x),
            "seconds": seconds}


def step_value(text: str):
    """``--steps`` entry: ``auto`` or a positive step size."""
    return "auto" if text == "auto" else cli.positive_float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=cli.positive_int, default=30)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    parser.add_argument("--steps", type=step_value, nargs="+", default=[0.1, 0.3, 0.5, "auto"],
                        help="step sizes to compare (positive numbers or auto)")
    parser.add_argument("--target", type=cli.positive_float, default=0.9, help="target acceptance of step_size='auto', in (0, 1)")
    parser.add_argument("--adapt-calls", type=cli.positive_int, default=200)
    parser.add_argument("--threads", type=cli.nonnegative_int, default=cli.DEFAULT_THREADS, help=cli.THREADS_HELP)
    return parser


def main(args: argparse.Namespace) -> None:
    if not 0 < args.target < 1:
        raise cli.UsageError(f"--target must be between 0 and 1, got {args.target}")
    x = load_binary_digits()
    print(f"{'step':>6} {'frozen s':>9} {'acc(inferred z)':>16} {'acc(prior z)':>13} {'train s':>8}")
    for step in args.steps:
        r = run(step, x, args.epochs, args.seed, adapt_calls=args.adapt_calls, target=args.target)
        print(f"{r['step']:>6} {r['frozen_step']:>9.3f} {r['inferred']:>16.3f} {r['prior']:>13.3f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    cli.run_cli(main, build_parser().parse_args())
