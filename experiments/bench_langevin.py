"""Langevin step benchmark: the library's chain, its fused and compiled forms and the anchor-style
loop, on the `cpu` and `paper` generators, interleaved in one run.

Methods (one row each per preset x batch size x BatchNorm mode):

- ``library``: ``LangevinGuide(model).infer(x)``, the eager reference (``model.log_joint``);
- ``fused``: :class:`~pyro_lfbm.infer.accelerate.CompiledLangevin` with ``compile=False``
  (the log joint as plain tensor code, eager autograd);
- ``compiled``: the same, value and gradient compiled by ``torch.compile`` (inductor on the CPU,
  CUDA graphs on a GPU); its one-off compile time is the ``compile_s`` column;
- ``anchor``: :func:`benchmarks.anchor_langevin`, the official LFBM code's loop (two
  ``autograd.grad`` per step, a float64 determinant per flow step) with the official modules
  (``nn.ConvTranspose2d``);
- ``anchor_same``: the anchor loop on the library's own generator modules (same modules for both);
- ``generic`` (optional): the guide on a plain Pyro function (log joint from Pyro traces);
- ``nuts`` (optional, batch 1): ``MCMC(NUTS)``, time per gradient evaluation;
- ``cuda_graph`` (``--device cuda``): one CUDA graph replay per step.

Per step = (median time of a K-step call - median time of a 0-step call) / K, K sized to about
``--target-seconds`` per call; the methods are called in turn within each configuration. FLOPs:
matmul/convolution FLOPs of one gradient evaluation (forward, and backward to z), against the
float32 matmul peak measured by this run with the same threads. Every row records the CPU model,
threads and the load average.

Example::

    python experiments/bench_langevin.py --presets cpu --threads 1 --out results/bench
    python experiments/bench_langevin.py --presets paper --batch-sizes 1 100 --out results/bench
    python experiments/bench_langevin.py --device cuda --out results/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    AnchorFlow,
    PeakMemory,
    add_run_arguments,
    anchor_langevin,
    cpu_description,
    interleaved_times,
    load_average,
    matmul_peak_gflops,
    reference_generator,
    step_flops,
    sync,
)
from pyro_lfbm.harness import cli  # noqa: E402
from pyro_lfbm.infer import LangevinGuide  # noqa: E402
from pyro_lfbm.infer.accelerate import CompiledLangevin, CUDAGraphLangevin  # noqa: E402
from pyro_lfbm.train.presets import get_preset  # noqa: E402

METHODS = ("library", "fused", "compiled", "anchor", "anchor_same", "generic", "nuts", "cuda_graph")
DEFAULT_METHODS = ("library", "fused", "compiled", "anchor", "anchor_same")


def build_model(preset: str, latent_dim: int, device: torch.device, train: bool, seed: int = 0):
    """The preset's LatentModel with a flow prior; parameters require grad, as in training."""
    torch.manual_seed(seed)
    cfg = get_preset(preset).model
    if latent_dim:
        cfg = dataclasses.replace(cfg, latent_dim=latent_dim)
    model = cfg.build().to(device)
    return model.train(train)


def make_runners(model, x: torch.Tensor, args, device) -> Dict[str, Callable[[int], object]]:
    """method -> run(num_steps) performing that many Langevin steps on batch x."""
    d, s, sigma = model.latent_dim, args.step_size, model.sigma

    def start():
        return torch.randn(x.shape[0], d, device=device)

    runners: Dict[str, Callable[[int], object]] = {}
    if "library" in args.methods:
        guide = LangevinGuide(model, num_steps=1, step_size=s)

        def library(k):
            guide.num_steps = k
            guide.infer(x)

        runners["library"] = library
    if "fused" in args.methods:
        fused = CompiledLangevin(model, step_size=s, compile=False)
        runners["fused"] = lambda k: fused.run(x, start(), k)
    if "compiled" in args.methods:
        compiled = CompiledLangevin(model, step_size=s, backend=args.compile_backend, label="bench_langevin")
        runners["compiled"] = lambda k: compiled.run(x, start(), k)
    flow = AnchorFlow(model.prior)
    if "anchor" in args.methods:
        official = reference_generator(model.generator)
        runners["anchor"] = lambda k: anchor_langevin(official, flow, x, start(), k, s, sigma)
    if "anchor_same" in args.methods:
        runners["anchor_same"] = lambda k: anchor_langevin(model.generator, flow, x, start(), k, s, sigma)
    if "generic" in args.methods:
        def pyro_model(x, mask=None):
            return model(x, mask)

        generic_guide = LangevinGuide(pyro_model, num_steps=1, step_size=s)

        def generic(k):
            generic_guide.num_steps = k
            generic_guide.infer(x)

        runners["generic"] = generic
    if "cuda_graph" in args.methods and device.type == "cuda":
        graphed = CUDAGraphLangevin(model, x.shape, step_size=s)
        runners["cuda_graph"] = lambda k: graphed.run(x, start(), k)
    return runners


def time_nuts(model, x1: torch.Tensor, args) -> Dict[str, float]:
    """Seconds per gradient evaluation of ``MCMC(NUTS(model))`` on one image x1 (1, C, H, W)."""
    from pyro.infer import MCMC, NUTS

    counter = {"n": 0}

    def hook(module, inputs, output):
        if torch.is_grad_enabled():
            counter["n"] += 1

    def pyro_model(x):
        return model(x)

    handle = model.generator.register_forward_hook(hook)
    pyro.clear_param_store()
    try:
        kernel = NUTS(pyro_model, max_tree_depth=args.nuts_tree_depth, step_size=0.1, adapt_step_size=True)
        mcmc = MCMC(kernel, num_samples=args.nuts_samples, warmup_steps=args.nuts_warmup, disable_progbar=True)
        t = time.perf_counter()
        mcmc.run(x1)
        seconds = time.perf_counter() - t
    finally:
        handle.remove()
    return {"grad_evals": counter["n"], "s_per_grad": seconds / max(counter["n"], 1)}


def bench_config(preset: str, batch: int, train: bool, args, device, peak: float, cpu: str) -> List[dict]:
    model = build_model(preset, args.latent_dim, device, train, seed=args.seed)
    torch.manual_seed(args.seed + 1)
    x = torch.rand(batch, *model.generator.image_shape, device=device) * 2 - 1
    runners = make_runners(model, x, args, device)
    # warm-up (the compiled method compiles here: its first call is the compile time)
    first: Dict[str, float] = {}
    per_step: Dict[str, float] = {}
    for name, run in runners.items():
        sync(device)
        t = time.perf_counter()
        run(2)
        sync(device)
        first[name] = time.perf_counter() - t
        t = time.perf_counter()
        run(2)
        sync(device)
        per_step[name] = (time.perf_counter() - t) / 2
    reference = per_step.get("library", min(per_step.values()))
    steps = int(min(args.max_steps, max(2, round(args.target_seconds / max(reference, 1e-6)))))
    full = interleaved_times({n: (lambda r=r: r(steps)) for n, r in runners.items()}, args.repeats, device)
    setup = interleaved_times({n: (lambda r=r: r(0)) for n, r in runners.items()}, args.repeats, device)
    setup_med = {n: statistics.median(v) for n, v in setup.items()}
    times = {n: [max(t - setup_med[n], 1e-9) / steps for t in ts] for n, ts in full.items()}
    memory = {}
    for name, run in runners.items():
        with PeakMemory(device) as mem:
            run(2)
        memory[name] = mem.mb
    flops = step_flops(model, x, torch.randn(batch, model.latent_dim, device=device))
    load = load_average()
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(dict(
            preset=preset, batch=batch, batchnorm="train" if train else "eval", method=name, device=device.type,
            ms_per_step=1e3 * med, ms_min=1e3 * min(ts), ms_max=1e3 * max(ts), setup_ms=1e3 * setup_med[name],
            examples_steps_per_s=batch / med, peak_mem_mb=memory[name],
            gflop_per_step=flops["flops"] / 1e9, generator_gflop_per_step=flops["generator_flops"] / 1e9,
            achieved_gflops=flops["flops"] / med / 1e9, pct_matmul_peak=100 * flops["flops"] / med / 1e9 / peak,
            compile_s=first[name] if name == "compiled" else float("nan"),
            steps_per_call=steps, repeats=len(ts), threads=torch.get_num_threads(), load_avg=load, cpu=cpu,
        ))
    if "nuts" in args.methods and batch == 1:
        nuts = time_nuts(model.eval(), x[:1], args)
        s = nuts["s_per_grad"]
        rows.append(dict(
            preset=preset, batch=1, batchnorm="eval", method="nuts", device=device.type, ms_per_step=1e3 * s,
            examples_steps_per_s=1 / s, gflop_per_step=flops["flops"] / 1e9, achieved_gflops=flops["flops"] / s / 1e9,
            pct_matmul_peak=100 * flops["flops"] / s / 1e9 / peak, steps_per_call=nuts["grad_evals"], repeats=1,
            threads=torch.get_num_threads(), load_avg=load_average(), cpu=cpu,
        ))
    return rows


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Speed-ups: anchor (official modules), anchor_same and library time over each method's time."""
    key = ["preset", "batch", "batchnorm"]
    out = df
    for ref in ("anchor", "anchor_same", "library"):
        if ref in set(df.method):
            col = df[df.method == ref].set_index(key)["ms_per_step"].rename(f"{ref}_ms")
            out = out.join(col, on=key)
            out[f"speedup_vs_{ref}"] = out[f"{ref}_ms"] / out.ms_per_step
            out = out.drop(columns=[f"{ref}_ms"])
    return out


def main(args) -> pd.DataFrame:
    device = cli.resolve_device(args.device)
    if args.smoke:
        args.presets, args.batch_sizes, args.batchnorm = ["tiny"], [1, 4], ["eval"]
        args.repeats, args.target_seconds, args.max_steps, args.latent_dim = 2, 0.01, 2, 0
        args.nuts_warmup, args.nuts_samples, args.nuts_tree_depth = 2, 2, 2
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"  # traces the same graph in a second; inductor's C++ build takes ~30 s
    if "cuda_graph" in args.methods and device.type != "cuda":
        raise cli.UsageError("--methods cuda_graph needs --device cuda")
    if "compiled" in args.methods and device.type == "cpu" and args.compile_backend == "inductor":
        import shutil  # inductor builds C++ kernels on the CPU

        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise cli.UsageError("--methods compiled with inductor on the CPU needs a C++ compiler (g++); "
                                 "install one or pass --compile-backend aot_eager")
    out = cli.writable_dir(args.out, "--out")
    cpu = cpu_description() if device.type == "cpu" else torch.cuda.get_device_name(device)
    load_start = load_average()
    peak = matmul_peak_gflops(device, n=256 if args.smoke else 2048)
    print(f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); matmul peak {peak:.1f} GFLOP/s; "
          f"load {load_start:.2f}", flush=True)
    rows = []
    for preset in args.presets:
        for batch in args.batch_sizes:
            for mode in args.batchnorm:
                if mode == "train" and batch < 2:
                    continue  # BatchNorm on batch statistics needs two examples
                rows += bench_config(preset, batch, mode == "train", args, device, peak, cpu)
                print(f"  {preset} batch {batch} {mode}: done (load {load_average():.2f})", flush=True)
    df = add_ratios(pd.DataFrame(rows))
    peak_end = matmul_peak_gflops(device, n=256 if args.smoke else 2048)
    tag = f"{args.tag}_" if args.tag else ""
    df.to_csv(out / f"{tag}langevin_{device.type}.csv", index=False)
    env = {
        "cpu": cpu, "torch": torch.__version__, "pyro": pyro.__version__, "python": sys.version.split()[0],
        "threads": torch.get_num_threads(), "device": str(device), "matmul_peak_gflops_start": round(peak, 1),
        "matmul_peak_gflops_end": round(peak_end, 1), "load_avg_start": round(load_start, 2),
        "load_avg_end": round(load_average(), 2), "compile_backend": args.compile_backend,
        "command": cli.command_line(),
    }
    pd.Series(env).to_csv(out / f"{tag}environment_{device.type}.csv", header=["value"])
    cols = ["preset", "batch", "batchnorm", "method", "ms_per_step", "ms_min", "ms_max", "achieved_gflops",
            "pct_matmul_peak", "speedup_vs_anchor", "speedup_vs_anchor_same", "speedup_vs_library", "compile_s", "load_avg"]
    cols = [c for c in cols if c in df.columns]
    print(df[cols].round(2).to_markdown(index=False))
    print(f"matmul peak {peak:.1f} -> {peak_end:.1f} GFLOP/s; wrote {out}/{tag}langevin_{device.type}.csv")
    return df


def build_parser():
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["cpu", "paper"], choices=["cpu", "paper", "tiny"])
    p.add_argument("--batch-sizes", nargs="+", type=cli.positive_int, default=[1, 100, 1000])
    p.add_argument("--batchnorm", nargs="+", default=["eval"], choices=["eval", "train"],
                   help="BatchNorm mode of the generator: eval (running statistics; rows are independent "
                        "chains, the test-time setting) or train (batch statistics, the training chains)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    p.add_argument("--latent-dim", type=cli.nonnegative_int, default=0, help="latent size (0: the preset's)")
    p.add_argument("--step-size", type=cli.positive_float, default=0.1)
    p.add_argument("--repeats", type=cli.positive_int, default=7, help="timed calls per method (median reported)")
    p.add_argument("--target-seconds", type=cli.positive_float, default=0.3, help="approximate length of one timed call")
    p.add_argument("--max-steps", type=cli.positive_int, default=20, help="most Langevin steps in one timed call")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    p.add_argument("--nuts-warmup", type=cli.positive_int, default=10)
    p.add_argument("--nuts-samples", type=cli.positive_int, default=10)
    p.add_argument("--nuts-tree-depth", type=cli.positive_int, default=6)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    add_run_arguments(p, default_seed=0, smoke_help="seconds-long run on the tiny preset (CI)", default_out=str(REPO / "runs" / "bench"))
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


if __name__ == "__main__":
    cli.run_cli(main, parse_args())
