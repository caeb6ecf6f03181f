"""Training and scoring cost of the README's main command, `python experiments/anomaly.py --heldout 7`,
measured piece by piece and added up into an estimate of its wall time on this machine.

The `cpu` preset (the main command's default until the dev-chosen `cpu-hybrid` replaced it) trains LFBM (flow prior) by Algorithm 1 — `fit` with
``SVI(model, LangevinGuide(model, 20 steps), Adam, Trace_ELBO)``, batches of 100, 10 epochs over
the 50,165 training images of the held-out-7 split: 5,010 iterations — then scores the 19,835 test
images twice (BatchNorm on running and on batch statistics), each time 100 noise-free Langevin
steps per batch of 500. This script times, interleaved (a, b, c, a, b, c, ...):

- one training iteration (images/s) of the library (``LangevinGuide``), of the library with the
  official ``nn.ConvTranspose2d`` modules in place of its faster layers, of the same step with
  :class:`~pyro_lfbm.infer.accelerate.FusedLangevinGuide` (fused, and compiled), and of the
  anchor-style loop (:class:`benchmarks.AnchorTrainer`, the official code's step, official modules);
- one scoring batch (500 images, ``--score-steps`` steps) in both BatchNorm modes, library and
  compiled;

then estimates the main command as 5,010 iterations + 2 x 40 scoring batches x (setup + 100 steps).
Everything runs on the real split when the MNIST files are found (else ``--synthetic`` images).

Example::

    python experiments/bench_training.py --out results/bench            # ~3 minutes, 1 thread
    python experiments/bench_training.py --threads 2 --tag t2 --out results/bench
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from benchmarks import AnchorTrainer, add_run_arguments, cpu_description, load_average, reference_generator  # noqa: E402
from pyro_lfbm.harness import cli  # noqa: E402
from pyro_lfbm.infer import LangevinGuide  # noqa: E402
from pyro_lfbm.infer.accelerate import CompiledLangevin, FusedLangevinGuide, compile_times  # noqa: E402
from pyro_lfbm.train.presets import get_preset  # noqa: E402
from pyro_lfbm.priors import FlowPrior  # noqa: E402
from pyro_lfbm.train.svi import SVITrainer  # noqa: E402

TRAINERS = ("library", "library_official_modules", "fused", "compiled", "anchor")
#: the held-out-7 split of the main command: training and test images (seed 1)
N_TRAIN, N_TEST = 50165, 19835


def load_images(args):
    """(train images, test images) of the held-out-7 split, or synthetic images of its sizes."""
    if not args.synthetic:
        from pyro_lfbm.data import DataError, heldout_digit_split

        try:
            split = heldout_digit_split(args.data_root, heldout=args.heldout, seed=args.seed, download=False)
            return split.train_x, split.test_x, "mnist"
        except (DataError, FileNotFoundError, RuntimeError) as err:
            raise cli.UsageError(f"the MNIST files were not found ({str(err).splitlines()[0]}); pass --data-root or --synthetic") from None
    g = torch.Generator().manual_seed(args.seed)
    return torch.rand(2000, 1, 28, 28, generator=g) * 2 - 1, torch.rand(1000, 1, 28, 28, generator=g) * 2 - 1, "synthetic"


def make_trainers(model, preset, args) -> Dict[str, object]:
    learn = preset.learn
    trainers = {}
    for name in args.trainers:
        m = copy.deepcopy(model)
        if name == "anchor":
            if not isinstance(m.prior, FlowPrior) or m.prior.permutation != "lu":
                continue
            trainers[name] = AnchorTrainer(m, num_steps=learn.num_steps, step_size=learn.step_size, lr=learn.optim.lr)
            continue
        if name == "library_official_modules":  # the library before its faster layers
            m.generator = reference_generator(m.generator)
        if name.startswith("library"):
            guide = LangevinGuide(m, num_steps=learn.num_steps, step_size=learn.step_size)
        else:
            guide = FusedLangevinGuide(m, num_steps=learn.num_steps, step_size=learn.step_size, compile=name == "compiled",
                                       backend=args.compile_backend)
        trainers[name] = SVITrainer(m, guide, learn.optim)
    return trainers


def time_training(trainers, train_x, args) -> Dict[str, dict]:
    """Seconds per training iteration of each trainer, interleaved in blocks of ``--block``
    iterations (Pyro's param store holds one model at a time: it is cleared between blocks)."""
    batch = 100
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(args.seed))
    batches = [train_x[order[i * batch:(i + 1) * batch]] for i in range(args.warmup + args.iterations)]
    results = {name: {"times": [], "first_s": None} for name in trainers}
    for name, trainer in trainers.items():  # warm-up: first calls (compilation) and caches
        pyro.clear_param_store()
        for i in range(args.warmup):
            t = time.perf_counter()
            trainer.step(batches[i])
            if i == 0:
                results[name]["first_s"] = time.perf_counter() - t
    done = 0
    while done < args.iterations:
        for name, trainer in trainers.items():
            pyro.clear_param_store()
            for i in range(done, min(done + args.block, args.iterations)):
                t = time.perf_counter()
                trainer.step(batches[args.warmup + i])
                results[name]["times"].append(time.perf_counter() - t)
        done += args.block
    pyro.clear_param_store()
    return results


def time_scoring(model, test_x, args) -> Dict[str, dict]:
    """Seconds of one scoring batch (``--score-batch`` images): the guide's setup (a 0-step call)
    and the cost per noise-free step, for each BatchNorm mode, library and compiled chains."""
    x = test_x[: args.score_batch]
    out = {}
    for mode in ("eval", "train"):
        m = copy.deepcopy(model).train(mode == "train")
        guide = LangevinGuide(m, num_steps=args.score_steps, step_size=0.1, noise=False)
        zero = LangevinGuide(m, num_steps=0, step_size=0.1, noise=False)
        compiled = CompiledLangevin(m, step_size=0.1, noise=False, backend=args.compile_backend, label=f"score-{mode}")
        z0 = torch.randn(x.shape[0], m.latent_dim)
        t = time.perf_counter()
        compiled.run(x, z0, 1)
        first = time.perf_counter() - t
        official = copy.deepcopy(m)
        official.generator = reference_generator(m.generator)
        guide_official = LangevinGuide(official, num_steps=args.score_steps, step_size=0.1, noise=False)
        runners = {"library": lambda: guide.infer(x), "setup": lambda: zero.infer(x),
                   "compiled": lambda: compiled.run(x, z0, args.score_steps),
                   "library_official_modules": lambda: guide_official.infer(x)}
        times = {k: [] for k in runners}
        for _ in range(args.score_repeats):
            for k, run in runners.items():
                t = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[mode] = {
            "setup_s": med["setup"],
            "library_step_s": (med["library"] - med["setup"]) / args.score_steps,
            "library_official_modules_step_s": (med["library_official_modules"] - med["setup"]) / args.score_steps,
            "compiled_step_s": med["compiled"] / args.score_steps,
            "compiled_first_s": first,
        }
    return out


def estimate(train_iter_s: float, scoring: Dict[str, dict], n_train: int, n_test: int, key: str, epochs: int = 10,
             batch: int = 100, test_batch: int = 500, test_steps: int = 100) -> dict:
    """Seconds of the main command from per-iteration and per-step costs (``key``: library or compiled)."""
    iterations = epochs * (n_train // batch)
    score_batches = math.ceil(n_test / test_batch)
    train = iterations * train_iter_s
    scores = {}
    for mode, s in scoring.items():
        # each batch: site discovery (setup), the steps, and the final log_joint_terms (about one step)
        scores[mode] = score_batches * (s["setup_s"] + (test_steps + 1) * s[f"{key}_step_s"])
    return {"iterations": iterations, "train_s": train, "score_eval_s": scores["eval"], "score_train_s": scores["train"],
            "total_s": train + scores["eval"] + scores["train"]}


def main(args):
    cli.check_data_root(args.data_root)
    out = cli.writable_dir(args.out, "--out")
    if args.smoke:
        args.iterations, args.warmup, args.block, args.score_steps, args.score_repeats = 2, 1, 1, 2, 1
        args.compile_backend, args.synthetic, args.score_batch, args.preset = "aot_eager", True, 50, "tiny"
    preset = get_preset(args.preset, "flow")
    train_x, test_x, source = load_images(args)
    cpu = cpu_description()
    load_start = load_average()
    print(f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); load {load_start:.2f}; data: {source}", flush=True)
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    model = preset.model.build()
    trainers = make_trainers(model, preset, args)
    training = time_training(trainers, train_x, args)
    scoring = time_scoring(model, test_x, args)
    rows = []
    for name, r in training.items():
        med = statistics.median(r["times"])
        rows.append(dict(part="training iteration (batch 100, 20 Langevin steps + update)", method=name,
                         seconds=med, images_per_s=100 / med, first_call_s=r["first_s"],
                         min_s=min(r["times"]), max_s=max(r["times"]), n=len(r["times"])))
    for mode, s in scoring.items():
        rows.append(dict(part=f"scoring step (batch {args.score_batch}, BatchNorm {mode})", method="library",
                         seconds=s["library_step_s"], first_call_s=float("nan")))
        rows.append(dict(part=f"scoring step (batch {args.score_batch}, BatchNorm {mode})", method="library_official_modules",
                         seconds=s["library_official_modules_step_s"], first_call_s=float("nan")))
        rows.append(dict(part=f"scoring step (batch {args.score_batch}, BatchNorm {mode})", method="compiled",
                         seconds=s["compiled_step_s"], first_call_s=s["compiled_first_s"]))
        rows.append(dict(part=f"scoring batch setup (site discovery, BatchNorm {mode})", method="library", seconds=s["setup_s"]))
    table = pd.DataFrame(rows)
    n_train, n_test = (int(train_x.shape[0]), int(test_x.shape[0])) if source == "mnist" else (N_TRAIN, N_TEST)
    estimates = []
    scale = 500 / args.score_batch  # per-step costs scale about linearly with the batch (measured at --score-batch)
    scoring_500 = {m: {k: (v * scale if k.endswith("step_s") or k == "setup_s" else v) for k, v in s.items()}
                   for m, s in scoring.items()}
    for name in ("library", "library_official_modules", "fused", "compiled"):
        if name not in training:
            continue
        key = {"compiled": "compiled", "library_official_modules": "library_official_modules"}.get(name, "library")
        e = estimate(statistics.median(training[name]["times"]), scoring_500, n_train, n_test, key)
        warmup = sum(t["seconds"] for t in compile_times()) if name == "compiled" else 0.0
        estimates.append(dict(method=name, **e, compile_warmup_s=warmup, total_min=(e["total_s"] + warmup) / 60))
    est = pd.DataFrame(estimates)
    info = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(), "data": source,
            "load_avg_start": round(load_start, 2), "load_avg_end": round(load_average(), 2),
            "compile_backend": args.compile_backend, "command": cli.command_line()}
    tag = f"{args.tag}_" if args.tag else ""
    table.assign(cpu=cpu, threads=torch.get_num_threads(), load_avg_end=info["load_avg_end"]).to_csv(out / f"{tag}training_cost.csv", index=False)
    est.assign(cpu=cpu, threads=torch.get_num_threads()).to_csv(out / f"{tag}main_command_estimate.csv", index=False)
    pd.Series(info).to_csv(out / f"{tag}training_environment.csv", header=["value"])
    print(table.round(4).to_markdown(index=False))
    print(est.round(1).to_markdown(index=False))
    print(f"load {load_start:.2f} -> {load_average():.2f}; wrote {out}/{tag}training_cost.csv, {tag}main_command_estimate.csv")
    return table, est


def build_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "tiny"],
                   help="the model measured (the main command's is cpu)")
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    p.add_argument("--iterations", type=cli.positive_int, default=12, help="timed training iterations per trainer")
    p.add_argument("--warmup", type=cli.positive_int, default=2, help="untimed first iterations per trainer")
    p.add_argument("--block", type=cli.positive_int, default=3, help="iterations per trainer before switching")
    p.add_argument("--score-batch", type=cli.positive_int, default=500, help="images per scoring batch (the cpu preset: 500)")
    p.add_argument("--score-steps", type=cli.positive_int, default=10, help="steps per timed scoring call")
    p.add_argument("--score-repeats", type=cli.positive_int, default=3)
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    p.add_argument("--heldout", type=cli.digit, default=7)
    p.add_argument("--data-root", default=None, help="data folder (default: $PYRO_LFBM_DATA, else ./data or ../shared/data)")
    p.add_argument("--synthetic", action="store_true", help="random images of the split's sizes instead of MNIST")
    add_run_arguments(p, default_seed=1, smoke_help="seconds-long run (CI)", default_out=str(REPO / "runs" / "bench"))
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


if __name__ == "__main__":
    cli.run_cli(main, parse_args())
