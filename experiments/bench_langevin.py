"""Langevin inference benchmark (issue 6): library fast path, generic Pyro path, an anchor-style
reference loop and NUTS, side by side, against the matmul peak of the same machine.

Methods (one row each per preset x latent size x batch size):

- ``fast``: :class:`~pyro_lfbm.infer.LangevinGuide` on a :class:`~pyro_lfbm.models.LatentModel`
  (``model.log_joint``, one ``autograd.grad`` per step).
- ``generic``: the same guide on a plain Pyro function wrapping the model (no ``log_joint``):
  the log joint comes from Pyro traces.
- ``anchor``: :func:`anchor_langevin`, plain PyTorch written the way the official LFBM code does
  it: two ``torch.autograd.grad`` calls per step (generator term, flow term) and the flow's
  log|det W| recomputed by a float64 determinant on every call. Same weights, same noise.
- ``nuts``: ``pyro.infer.MCMC(NUTS(model))`` on one example (batch 1 only); time per gradient
  evaluation (counted with a hook on the generator).
- ``fast_compiled`` (``--compile``) and ``fast_cudagraph`` (``--cuda-graph``, CUDA only): the fast
  step through :mod:`pyro_lfbm.infer.accelerate`.

The generator runs in eval mode (BatchNorm with running statistics) so that batch size 1 is
defined and rows are independent chains; that is the library's test-time setting.

Example::

    nice -n 10 python experiments/bench_langevin.py                 # full grid, CPU
    python experiments/bench_langevin.py --smoke --out results/bench/smoke
    python experiments/bench_langevin.py --device cuda --compile --cuda-graph
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pandas as pd
import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pyro_lfbm.infer import LangevinGuide, find_latent_sites, short_run_langevin  # noqa: E402
from pyro_lfbm.infer.guide import frozen_parameters  # noqa: E402
from pyro_lfbm.infer import accelerate  # noqa: E402
from pyro_lfbm.presets import get_preset  # noqa: E402
from pyro_lfbm.transforms import ActNorm, BoundedAffineCoupling, LULinear  # noqa: E402

METHODS = ("fast", "generic", "anchor", "nuts")


# ----------------------------------------------------------------------------------------------
# Anchor-style reference loop (plain PyTorch, as the official LFBM code computes a step)
# ----------------------------------------------------------------------------------------------


class AnchorFlow:
    """The flow prior's log density computed the way the official LFBM ``_netF`` does.

    Per flow step: ActNorm ``z * exp(logs) + b``; invertible linear ``z W^T`` with
    ``log|det W|`` recomputed as ``log|det(W.double())|`` on every call; bounded affine coupling
    ``z2 <- (z2 + shift) * sigmoid(h + 2)`` with ``log sigmoid`` summed. The weights are those of
    a :class:`~pyro_lfbm.priors.FlowPrior` with ``permutation="lu"`` (W assembled once, kept as a
    tensor that requires grad, as a parameter of the official code would).

    :param prior: a :class:`~pyro_lfbm.priors.FlowPrior` whose flow parts are
        ``[ActNorm, LULinear, BoundedAffineCoupling] * num_steps``.
    """

    def __init__(self, prior):
        parts = list(prior.flow.parts)
        self.dim = prior.latent_dim
        self.steps = []
        for i in range(0, len(parts), 3):
            actnorm, linear, coupling = parts[i : i + 3]
            if not (isinstance(actnorm, ActNorm) and isinstance(linear, LULinear) and isinstance(coupling, BoundedAffineCoupling)):
                raise TypeError("the anchor loop needs a FlowPrior with permutation='lu'")
            with torch.no_grad():
                weight = linear.weight.detach().clone()
            self.steps.append((actnorm.loc, actnorm.log_scale, weight.requires_grad_(True), coupling))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """:param z: (B, D). :returns: log p_flow(z), shape (B,)."""
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for loc, log_scale, weight, coupling in self.steps:
            z = z * torch.exp(log_scale) + loc
            logdet = logdet + log_scale.sum()
            z = z @ weight.T
            logdet = logdet + torch.log(torch.abs(torch.det(weight.double()))).float()
            d = coupling.split_dim
            z1, z2 = z[:, :d], z[:, d:]
            h = coupling.hypernet(z1)
            shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)
            z = torch.cat([z1, (z2 + shift) * scale], dim=1)
            logdet = logdet + torch.log(scale).sum(1)
        return -0.5 * (z**2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet


def anchor_langevin(
    generator: Callable,
    flow: AnchorFlow,
    x: torch.Tensor,
    z0: torch.Tensor,
    num_steps: int,
    step_size: float,
    sigma: float,
    noise: bool = True,
    rng: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The official LFBM posterior Langevin loop (two ``autograd.grad`` per step).

    ``z <- z - s²/2 (∇ ‖x - g(z)‖²/(2σ²) + ∇ (-log p_flow(z))) + s ξ`` summed over the batch.

    :param x: (B, C, H, W) images. :param z0: (B, D) start. :returns: z_K, (B, D), detached.
    """
    z = z0.detach().clone()
    half_sq = 0.5 * step_size**2
    for _ in range(num_steps):
        z = z.detach().requires_grad_(True)
        x_hat = generator(z)
        g_energy = ((x_hat - x) ** 2).sum() / (2.0 * sigma**2)
        z_grad_g = torch.autograd.grad(g_energy, z)[0]
        f_energy = -flow.log_prob(z)
        z_grad_e = torch.autograd.grad(f_energy.sum(), z)[0]
        z = z.detach() - half_sq * (z_grad_g + z_grad_e)
        if noise:
            z = z + step_size * (torch.randn_like(z) if rng is None else torch.randn(z.shape, generator=rng, device=z.device))
    return z.detach()


# ----------------------------------------------------------------------------------------------
# Models and measurements
# ----------------------------------------------------------------------------------------------


def build_model(preset: str, latent_dim: int, device: torch.device, seed: int = 0):
    """The preset's LatentModel with a flow prior, latent size ``latent_dim``, eval mode."""
    torch.manual_seed(seed)
    cfg = get_preset(preset).model
    cfg.latent_dim = latent_dim
    model = cfg.build().to(device)
    model.eval()
    for p in model.parameters():  # as in training: parameters require grad
        p.requires_grad_(True)
    return model


def generic_model_of(model):
    """The same joint as a plain Pyro function (no ``log_joint``): the guide's generic path."""

    def pyro_model(x, mask=None):
        return model(x, mask)

    return pyro_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or the process's peak RSS above its start
    (Linux ``/proc/self/clear_refs``; freed-but-cached malloc pages make it an underestimate)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, float("nan")

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return float(line.split()[1]) / 1024.0
        return float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.base = self._status("VmRSS")
            except OSError:
                self.base = float("nan")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.mb = self._status("VmHWM") - self.base


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of an (n, n) @ (n, n) float32 matmul (2 n³ FLOPs) on ``device``."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


class FlopCount(TorchDispatchMode):
    """Count the FLOPs of the matmuls and convolutions dispatched inside the block (forward and
    backward), with the formulas of :mod:`torch.utils.flop_counter`. ``total`` is the count."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(model, x: torch.Tensor, z: torch.Tensor) -> Dict[str, float]:
    """FLOPs of one fast-path gradient evaluation (forward, and backward to z only), in total and
    for the generator alone. ``x``: (B, C, H, W); ``z``: (B, D)."""
    with torch.enable_grad():
        with FlopCount() as total:
            zz = z.detach().requires_grad_(True)
            torch.autograd.grad(model.log_joint(x, z=zz).sum(), zz)
        with FlopCount() as gen:
            zz = z.detach().requires_grad_(True)
            x_hat = model.generator(zz)
            torch.autograd.grad(x_hat, zz, torch.ones_like(x_hat))
    return {"flops": float(total.total), "generator_flops": float(gen.total)}


def load_average() -> float:
    return os.getloadavg()[0]


def time_nuts(model, x1: torch.Tensor, warmup: int, samples: int, max_tree_depth: int) -> Dict[str, float]:
    """Seconds per gradient evaluation of ``MCMC(NUTS(model))`` on one example x1 (1, C, H, W)."""
    from pyro.infer import MCMC, NUTS

    counter = {"n": 0}

    def hook(module, inputs, output):
        if torch.is_grad_enabled():
            counter["n"] += 1

    handle = model.generator.register_forward_hook(hook)
    pyro.clear_param_store()
    try:
        kernel = NUTS(generic_model_of(model), max_tree_depth=max_tree_depth, step_size=0.1, adapt_step_size=True)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
        t = time.perf_counter()
        mcmc.run(x1)
        seconds = time.perf_counter() - t
    finally:
        handle.remove()
    return {"seconds": seconds, "grad_evals": counter["n"], "s_per_grad": seconds / max(counter["n"], 1)}


def make_runners(model, x: torch.Tensor, args, device) -> Dict[str, Callable[[int], None]]:
    """method -> run(num_steps) performing that many Langevin steps on batch x."""
    sigma = model.sigma
    fast_guide = LangevinGuide(model, num_steps=1, step_size=args.step_size)
    generic_guide = LangevinGuide(generic_model_of(model), num_steps=1, step_size=args.step_size)
    assert fast_guide.uses_fast_path and not generic_guide.uses_fast_path
    flow = AnchorFlow(model.prior)
    latent_dim = model.latent_dim

    def run_guide(guide):
        def run(k):
            guide.num_steps = k
            guide.infer(x)

        return run

    def run_anchor(k):
        z0 = torch.randn(x.shape[0], latent_dim, device=device)
        anchor_langevin(model.generator, flow, x, z0, k, args.step_size, sigma)

    runners = {"fast": run_guide(fast_guide), "generic": run_guide(generic_guide), "anchor": run_anchor}
    if args.compile:
        step = accelerate.CompiledLangevin(model, step_size=args.step_size, backend=args.compile_backend)

        def run_compiled(k):
            step.run(x, torch.randn(x.shape[0], latent_dim, device=device), k)

        runners["fast_compiled"] = run_compiled
    if args.cuda_graph:
        if device.type != "cuda":
            print("--cuda-graph needs --device cuda; skipped", file=sys.stderr)
        else:
            graphed = accelerate.CUDAGraphLangevin(model, x.shape, step_size=args.step_size)

            def run_graph(k):
                graphed.run(x, torch.randn(x.shape[0], latent_dim, device=device), k)

            runners["fast_cudagraph"] = run_graph
    return {name: fn for name, fn in runners.items() if name in args.methods or name.startswith("fast_")}


def bench_config(preset: str, latent_dim: int, batch: int, args, device, peak: float) -> List[dict]:
    model = build_model(preset, latent_dim, device, seed=args.seed)
    shape = model.generator.image_shape
    torch.manual_seed(args.seed + 1)
    x = torch.rand(batch, *shape, device=device) * 2 - 1
    runners = make_runners(model, x, args, device)
    # Warm-up (also sizes the timed runs: about --target-seconds per repeat and method).
    per_step = {}
    for name, run in runners.items():
        for _ in range(max(args.warmup, 1)):
            sync(device)
            t = time.perf_counter()
            run(2)
            sync(device)
            per_step[name] = (time.perf_counter() - t) / 2
    steps = int(min(args.max_steps, max(2, round(args.target_seconds / max(per_step["fast"] if "fast" in per_step else min(per_step.values()), 1e-6)))))
    times: Dict[str, List[float]] = {name: [] for name in runners}
    setup: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():  # interleaved: contention drifts hit every method alike
            sync(device)
            t = time.perf_counter()
            run(steps)
            sync(device)
            times[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            run(0)  # the per-call fixed cost (the guide's site discovery: one model run)
            sync(device)
            setup[name].append(time.perf_counter() - t)
    # per step: (median time of a K-step call - median time of a 0-step call) / K
    setup_med = {name: statistics.median(v) for name, v in setup.items()}
    times = {name: [max(t - setup_med[name], 1e-9) / steps for t in ts] for name, ts in times.items()}
    memory = {}
    for name, run in runners.items():
        with PeakMemory(device) as mem:
            run(2)
        memory[name] = mem.mb
    flops = step_flops(model, x, torch.randn(batch, latent_dim, device=device))
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        flop = flops["flops"]
        rows.append(
            dict(
                preset=preset, latent_dim=latent_dim, batch=batch, method=name, device=device.type,
                ms_per_step=1e3 * med, ms_min=1e3 * min(ts), ms_max=1e3 * max(ts), setup_ms=1e3 * setup_med[name],
                examples_steps_per_s=batch / med, peak_mem_mb=memory[name],
                gflop_per_step=flop / 1e9, generator_gflop_per_step=flops["generator_flops"] / 1e9,
                achieved_gflops=flop / med / 1e9, pct_matmul_peak=100 * flop / med / 1e9 / peak,
                steps_per_repeat=steps, repeats=len(ts), load_avg=load_average(),
            )
        )
    if "nuts" in args.methods and batch == 1:
        nuts = time_nuts(model, x[:1], args.nuts_warmup, args.nuts_samples, args.nuts_tree_depth)
        s = nuts["s_per_grad"]
        rows.append(
            dict(
                preset=preset, latent_dim=latent_dim, batch=1, method="nuts", device=device.type,
                ms_per_step=1e3 * s, ms_min=float("nan"), ms_max=float("nan"), examples_steps_per_s=1 / s,
                peak_mem_mb=float("nan"), gflop_per_step=flops["flops"] / 1e9,
                generator_gflop_per_step=flops["generator_flops"] / 1e9, achieved_gflops=flops["flops"] / s / 1e9,
                pct_matmul_peak=100 * flops["flops"] / s / 1e9 / peak, steps_per_repeat=nuts["grad_evals"], repeats=1,
                load_avg=load_average(),
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# The cost users feel: test-time inference at the paper's AUPRC, and training throughput
# ----------------------------------------------------------------------------------------------


def auprc(is_anomaly: torch.Tensor, score: torch.Tensor) -> float:
    """Protocol A4: sklearn precision_recall_curve + trapezoid auc, anomaly = positive class."""
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(is_anomaly.numpy(), score.numpy())
    return float(auc(recall, precision))


def anomaly_scores(model, x: torch.Tensor, z: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """-log p(x, z) per image (higher = more anomalous); x (N, C, H, W), z (N, D) -> (N,)."""
    with torch.no_grad():
        return torch.cat([-model.log_joint(xb, z=zb) for xb, zb in zip(x.split(batch), z.split(batch))])


def run_test_variants(model, x, z0, args) -> List[dict]:
    """Noise-free test-time inference variants on images x (N, C, H, W) from starts z0 (N, D).

    Returns rows {variant, step_size, max_steps, tolerance, grad_evals_per_image, seconds, z}.
    Fixed-K variants of one step size are read off a single chain at the checkpoints.
    """
    rows = []
    bs = args.test_batch_size

    def chain(step_size, checkpoints, tolerance=None):
        kmax = max(checkpoints)
        kept = {k: [] for k in checkpoints}
        evals, t0 = [], time.perf_counter()
        for xb, zb in zip(x.split(bs), z0.split(bs)):
            guide = LangevinGuide(model, num_steps=kmax, step_size=step_size, noise=False, init=lambda *_: {"z": zb}, tolerance=tolerance)
            if tolerance is None:
                got = {}

                def callback(k, state):
                    if k in kept:
                        got[k] = state.position["z"]

                sites = find_latent_sites(model, (xb,), {})
                with frozen_parameters(model):
                    short_run_langevin(guide.log_density_fn(sites, (xb,), {}), {"z": zb}, kmax, step_size, noise=False, callback=callback)
                for k in checkpoints:
                    kept[k].append(got[k])
            else:
                kept[kmax].append(guide.infer(xb)["z"])
                steps = guide.last_state.steps.float()
                # rows coupled by train-mode BatchNorm: the whole batch runs until its last row stops
                evals.append(steps if not any(m.training for m in model.modules()) else steps.max().expand_as(steps))
        seconds = time.perf_counter() - t0
        out = []
        for k in checkpoints:
            z = torch.cat(kept[k]) if kept[k] else None
            if z is None:
                continue
            per_image = float(torch.cat(evals).mean()) if tolerance is not None else float(k)
            out.append(dict(step_size=step_size, max_steps=k, tolerance=tolerance, grad_evals_per_image=per_image,
                            seconds_per_image=seconds / x.shape[0] * (per_image / kmax if tolerance is None else 1.0), z=z))
        return out

    for s in args.test_step_sizes:
        ks = [k for k in args.test_checkpoints if s == 0.1 or k <= args.test_steps // 2] if s != 0.1 else args.test_checkpoints
        for row in chain(s, sorted(set(ks) | ({args.test_steps} if s == 0.1 else set()))):
            row["variant"] = f"fixed K, s={s}"
            rows.append(row)
    # gradient norms at the paper's end point set the tolerance scale
    base = next(r for r in rows if r["step_size"] == 0.1 and r["max_steps"] == args.test_steps)
    with frozen_parameters(model):
        norms = torch.cat([
            short_run_langevin(lambda lat, xb=xb: model.log_joint(xb, z=lat["z"]), {"z": zb}, 0, 0.1, evaluate_final=True).grad["z"].norm(dim=1)
            for xb, zb in zip(x.split(bs), base["z"].split(bs))
        ])
    for q in args.test_tolerance_multipliers:
        tol = float(norms.median()) * q
        for row in chain(0.1, [args.test_steps], tolerance=tol):
            row["variant"] = f"early stop, tol={q:g}x median |grad| at K={args.test_steps}"
            rows.append(row)
    return rows


def anchor_train_throughput(model, x: torch.Tensor, args) -> float:
    """Examples/s of an anchor-style Algorithm 1 (official loop: two-grad Langevin, then one Adam
    step on the generator loss and the flow's MLE loss) on a copy of ``model``."""
    import copy

    m = copy.deepcopy(model).train()
    flow = AnchorFlow(m.prior)
    params = list(m.generator.parameters()) + [p for p in m.prior.parameters()] + [w for *_, w, _ in [(a, b, c, d) for a, b, c, d in flow.steps]]
    params = list({id(p): p for p in params}.values())
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    bs, timings = args.train_batch, []
    for i, xb in enumerate(x.split(bs)[: args.train_throughput_batches + 2]):
        t = time.perf_counter()
        z = anchor_langevin(m.generator, flow, xb, torch.randn(xb.shape[0], m.latent_dim), 20, 0.1, m.sigma)
        loss = ((m.generator(z) - xb) ** 2).sum() / (2 * m.sigma**2) - flow.log_prob(z).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            timings.append(time.perf_counter() - t)
    return bs / statistics.median(timings)


def library_train_throughput(model, x: torch.Tensor, args) -> float:
    """Examples/s of the library's Algorithm 1 step (``SVI(model, LangevinGuide, Adam)``) on a copy."""
    import copy

    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    m = copy.deepcopy(model).train()
    svi = SVI(m, LangevinGuide(m, num_steps=20, step_size=0.1), pyro.optim.Adam({"lr": 1e-3, "betas": (0.5, 0.999)}), Trace_ELBO())
    bs, timings = args.train_batch, []
    for i, xb in enumerate(x.split(bs)[: args.train_throughput_batches + 2]):
        t = time.perf_counter()
        svi.step(xb)
        if i >= 2:
            timings.append(time.perf_counter() - t)
    pyro.clear_param_store()
    return bs / statistics.median(timings)


def test_cost(args) -> pd.DataFrame:
    """Train a small LFBM (``fit``, cpu/tiny preset) on a held-out-digit split, then measure the
    AUPRC and the gradient evaluations per test image of the test-time inference variants."""
    from pyro_lfbm.data import heldout_digit_split
    from pyro_lfbm.training import OptimConfig, fit

    torch.manual_seed(args.seed)
    split = heldout_digit_split(args.data_root, heldout=args.heldout, limit_train=args.train_images, limit_test=args.test_images, download=False)
    # The split stores its test set sorted by class; inference batches must mix normal and anomalous
    # images, or train-mode BatchNorm normalises an all-anomaly batch by its own statistics (a label leak).
    order = torch.randperm(split.test_x.shape[0], generator=torch.Generator().manual_seed(args.seed))
    split = dataclasses.replace(split, test_x=split.test_x[order], test_is_anomaly=split.test_is_anomaly[order],
                                test_digits=split.test_digits[order])
    preset = get_preset(args.test_preset)
    model = preset.model.build()
    pyro.clear_param_store()
    train_seconds, fit_throughput, final_loss = float("nan"), float("nan"), float("nan")
    ckpt = Path(args.test_checkpoint) if args.test_checkpoint else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu")
        model.load_state_dict(saved["model"])
        train_seconds, fit_throughput, final_loss = saved["train_seconds"], saved["fit_examples_per_s"], saved["final_loss"]
    else:
        guide = LangevinGuide(model, num_steps=preset.learn.num_steps, step_size=preset.learn.step_size)
        t0 = time.perf_counter()
        history = fit(model, guide, split.train_x, epochs=args.train_epochs, batch_size=args.train_batch,
                      optim=OptimConfig(lr=preset.learn.optim.lr), seed=args.seed, progress=not args.smoke)
        train_seconds = time.perf_counter() - t0
        fit_throughput = statistics.median([r["examples_per_second"] for r in history.epochs])
        final_loss = history.epochs[-1]["loss"]
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(dict(model=model.state_dict(), train_seconds=train_seconds, fit_examples_per_s=fit_throughput,
                            final_loss=final_loss, preset=args.test_preset), ckpt)
    lib_tp = library_train_throughput(model, split.train_x, args)
    anchor_tp = anchor_train_throughput(model, split.train_x, args)
    pyro.clear_param_store()
    z0 = torch.randn(split.test_x.shape[0], model.latent_dim, generator=torch.Generator().manual_seed(args.seed + 7))
    table = []
    import copy

    trained_state = copy.deepcopy(model.state_dict())
    for bn_mode in args.test_batchnorm:
        # "train": BatchNorm on batch statistics, as the official test code runs (protocols A3);
        # every train-mode forward also moves the running statistics, so each mode starts afresh
        model.load_state_dict(trained_state)
        model.train(bn_mode == "train")
        rows = run_test_variants(model, split.test_x, z0, args)
        base = next(r for r in rows if r["step_size"] == 0.1 and r["max_steps"] == args.test_steps and r["tolerance"] is None)

        def score(z):  # in the inference batches (train-mode BatchNorm uses their statistics)
            return anomaly_scores(model, split.test_x, z, batch=args.test_batch_size)

        base_auprc = auprc(split.test_is_anomaly, score(base["z"]))
        for r in rows:
            a = auprc(split.test_is_anomaly, score(r["z"]))
            table.append(dict(batchnorm=bn_mode, variant=r["variant"], step_size=r["step_size"], max_steps=r["max_steps"],
                              tolerance=r["tolerance"], grad_evals_per_image=r["grad_evals_per_image"],
                              cheaper_than_paper=args.test_steps / r["grad_evals_per_image"],
                              seconds_per_image=r["seconds_per_image"], auprc=a, auprc_minus_paper=a - base_auprc))
    model.load_state_dict(trained_state)
    model.eval()
    df = pd.DataFrame(table)
    df.attrs.update(train_seconds=train_seconds, fit_examples_per_s=fit_throughput, library_step_examples_per_s=lib_tp,
                    anchor_step_examples_per_s=anchor_tp, final_loss=final_loss,
                    n_train=int(split.train_x.shape[0]), n_test=int(split.test_x.shape[0]),
                    n_anomalous=int(split.test_is_anomaly.sum()))
    return df


def environment(device: torch.device, peak: float) -> Dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "matmul_peak_gflops": f"{peak:.1f}",
        "load_avg_start": f"{load_average():.2f}",
    }


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Ratios to the fast path and the anchor loop for each configuration."""
    key = ["preset", "latent_dim", "batch"]
    fast = df[df.method == "fast"].set_index(key)["ms_per_step"].rename("fast_ms")
    anchor = df[df.method == "anchor"].set_index(key)["ms_per_step"].rename("anchor_ms")
    out = df.join(fast, on=key).join(anchor, on=key)
    out["x_fast"] = out.ms_per_step / out.fast_ms
    out["x_anchor"] = out.ms_per_step / out.anchor_ms
    return out.drop(columns=["fast_ms", "anchor_ms"])


def main_test_cost(args) -> pd.DataFrame:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.test_preset, args.train_images, args.test_images, args.train_epochs = "tiny", 300, 200, 1
        args.test_steps, args.test_checkpoints, args.test_step_sizes = 8, [2, 4, 8], [0.1, 0.2]
        args.test_tolerance_multipliers, args.train_throughput_batches, args.train_batch = [2.0], 1, 50
        args.test_checkpoint = ""
    start_load = load_average()
    df = test_cost(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.tag}_" if args.tag else ""
    df.to_csv(out / f"{tag}test_cost.csv", index=False)
    info = dict(df.attrs, load_avg_start=start_load, load_avg_end=load_average(), torch=torch.__version__, pyro=pyro.__version__,
                threads=torch.get_num_threads(), command="python " + " ".join(sys.argv))
    pd.Series(info).to_csv(out / f"{tag}test_cost_info.csv", header=["value"])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(4).to_string(index=False))
        print(pd.Series(info).to_string())
    return df


def _malloc_returns_large_blocks() -> None:
    """glibc: serve blocks >= 128 KiB by mmap (fixed threshold), so freed tensors leave the RSS
    and the peak-RSS measurement of one method is not hidden by memory cached from another."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main_profile(args) -> None:
    """Operator profile (torch.profiler, self CPU time per op) of ``--profile-steps`` steps of the
    fast path and the anchor loop, for the first preset / latent size / batch size given."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset, latent_dim, batch = args.presets[0], args.latent_dims[0], args.batch_sizes[0]
    model = build_model(preset, latent_dim, device, seed=args.seed)
    x = torch.rand(batch, *model.generator.image_shape, device=device) * 2 - 1
    runners = make_runners(model, x, args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name in ("fast", "anchor"):
        runners[name](2)
        with profile(activities=activities) as prof:
            runners[name](args.profile_steps)
            sync(device)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        path = out / f"profile_{name}_{preset}_d{latent_dim}_b{batch}_{device.type}.txt"
        path.write_text(f"# python {' '.join(sys.argv)}\n# load average {load_average():.2f}; {args.profile_steps} steps\n{table}\n")
        print(path)
        print(table)


def main(args) -> pd.DataFrame:
    if args.test_cost:
        return main_test_cost(args)
    if args.profile:
        return main_profile(args)
    device = torch.device(args.device)
    if device.type == "cpu":
        _malloc_returns_large_blocks()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.presets, args.latent_dims, args.batch_sizes = ["tiny"], [8], [1, 4]
        args.repeats, args.warmup, args.target_seconds, args.max_steps = 2, 1, 0.01, 2
        args.nuts_warmup, args.nuts_samples, args.nuts_tree_depth = 2, 2, 2
    peak = matmul_peak_gflops(device, n=256 if args.smoke else 2048)
    env = environment(device, peak)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    grid = [(p, d, b) for p in args.presets for d in args.latent_dims for b in args.batch_sizes]
    for preset, latent_dim, batch in tqdm(grid, desc="configs", disable=args.smoke):
        rows += bench_config(preset, latent_dim, batch, args, device, peak)
    df = summarize(pd.DataFrame(rows))
    peak_end = matmul_peak_gflops(device, n=256 if args.smoke else 2048)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.tag}_" if args.tag else ""
    df.to_csv(out / f"{tag}langevin_{device.type}.csv", index=False)
    env["matmul_peak_gflops_end"] = f"{peak_end:.1f}"
    env["load_avg_end"] = f"{load_average():.2f}"
    env["command"] = "python " + " ".join(sys.argv)
    pd.Series(env).to_csv(out / f"{tag}environment_{device.type}.csv", header=["value"])
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        cols = ["preset", "latent_dim", "batch", "method", "ms_per_step", "examples_steps_per_s", "peak_mem_mb",
                "achieved_gflops", "pct_matmul_peak", "x_fast", "x_anchor", "load_avg"]
        print(df[cols].round(3).to_string(index=False))
    return df


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["paper", "cpu"])
    p.add_argument("--latent-dims", nargs="+", type=int, default=[20, 100])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 10, 100, 1000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--step-size", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--target-seconds", type=float, default=0.3, help="approximate length of one timed repeat")
    p.add_argument("--max-steps", type=int, default=20, help="most Langevin steps in one timed repeat")
    p.add_argument("--nuts-warmup", type=int, default=10)
    p.add_argument("--nuts-samples", type=int, default=10)
    p.add_argument("--nuts-tree-depth", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="also time the fast step under torch.compile")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--cuda-graph", action="store_true", help="also time the fast step as a CUDA graph (CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="seconds-long run on the tiny preset (CI)")
    p.add_argument("--tag", default="")
    p.add_argument("--profile", action="store_true", help="write operator profiles of fast and anchor (first config only)")
    p.add_argument("--profile-steps", type=int, default=10)
    t = p.add_argument_group("test-time cost (--test-cost): train a small LFBM, then AUPRC against gradient evaluations")
    t.add_argument("--test-cost", action="store_true", help="run this study instead of the step benchmark")
    t.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    t.add_argument("--heldout", type=int, default=7)
    t.add_argument("--test-preset", default="cpu")
    t.add_argument("--train-images", type=int, default=5000)
    t.add_argument("--test-images", type=int, default=1000)
    t.add_argument("--train-epochs", type=int, default=5)
    t.add_argument("--train-batch", type=int, default=100)
    t.add_argument("--train-throughput-batches", type=int, default=8)
    t.add_argument("--test-batch-size", type=int, default=500)
    t.add_argument("--test-steps", type=int, default=400, help="the paper's protocol: 400 noise-free steps of 0.1")
    t.add_argument("--test-checkpoints", nargs="+", type=int, default=[10, 20, 40, 80, 200, 400])
    t.add_argument("--test-step-sizes", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    t.add_argument("--test-tolerance-multipliers", nargs="+", type=float, default=[1.0, 2.0, 5.0])
    t.add_argument("--test-batchnorm", nargs="+", default=["train", "eval"], choices=["train", "eval"],
                   help="BatchNorm mode at test time; 'train' (batch statistics) is the official protocol")
    t.add_argument("--test-checkpoint", default=str(REPO / "results" / "bench" / "test_cost_model.pt"),
                   help="load the trained model from here if present, else train and save it ('' to neither)")
    p.add_argument("--out", default=str(REPO / "results" / "bench"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
