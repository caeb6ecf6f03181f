"""The two stages of ``experiments/generation_table.py``: train the latent-variable baselines
(LFBM-MCMC, ABP, LEBM and LFBM-VAE, presets of :func:`pyro_lfbm.train.build`) into run folders, and
score every run folder (GLF and CoopFlow included) with the same sample-quality code into one table."""


from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyro
import torch

from pyro_lfbm.harness import cli
from pyro_lfbm.harness.cli import UsageError, read_result_file, run_record, save_tensors, staged_output, write_json
from pyro_lfbm.data import load_images
from pyro_lfbm.infer import infer_dataset
from pyro_lfbm.metrics import fid
from pyro_lfbm.train.checkpoint import Checkpointing
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.recipe import build, train_recipe

__all__ = ["ALL_MODELS", "DATASETS", "LATENT_MODELS", "save_run", "table", "train"]

#: model name -> the prior of a :class:`~pyro_lfbm.models.LatentModel` trained by short-run Langevin.
LATENT_MODELS = {"lfbm-mcmc": "flow", "abp": "gaussian", "lebm": "ebm"}
ALL_MODELS = ("glf", "coopflow", "lfbm-mcmc", "lfbm-vae", "abp", "lebm")
DATASETS = ("mnist", "fashion-mnist")


def save_run(out: Path, samples: torch.Tensor, metrics: dict, extra_files: dict | None = None) -> None:
    """Write one run folder: ``samples.pt`` (N, C, H, W) in [-1, 1], ``samples.png``, ``metrics.json``."""
    from torchvision.utils import save_image

    with staged_output(out) as stage:
        save_tensors(samples.cpu(), stage / "samples.pt")
        save_image(samples[:100].cpu() * 0.5 + 0.5, stage / "samples.png", nrow=10)
        for name, writer in (extra_files or {}).items():
            writer(stage / name)
        write_json(stage / "metrics.json", run_record(metrics))


def _train_latent_model(name: str, args, x_train, x_test, device) -> tuple[torch.Tensor, dict]:
    """Train LFBM-MCMC / ABP / LEBM with SVI + LangevinGuide; returns (samples, metrics)."""
    preset = get_preset(args.preset, LATENT_MODELS[name]).with_epochs(args.epochs)
    model, history = _train(preset, _checkpoint_dir(args) / f"{args.dataset}-{name}.pt", args, x_train, device)
    epochs = preset.learn.epochs
    model.eval()
    started = time.perf_counter()
    result = infer_dataset(model, x_test.to(device), num_steps=preset.learn.test_steps,
                           step_size=preset.learn.test_step_size, noise=False,
                           batch_size=preset.learn.test_batch_size, progress=not args.no_progress, desc="test inference")
    with torch.no_grad():
        recon = torch.cat([model.generator(z.to(device)).cpu() for z in result.z.split(500)])
        mse = (recon - x_test).pow(2).mean().item()
        samples = torch.cat([model.sample(min(500, args.num_samples - i)).cpu()
                             for i in range(0, args.num_samples, 500)])
    metrics = {
        "model": name, "dataset": args.dataset, "preset": args.preset, "epochs": epochs, "seed": args.seed,
        "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
        "train_seconds": history.train_seconds, "recon_mse": mse,
        "recon_protocol": f"{preset.learn.test_steps} noise-free Langevin steps of {preset.learn.test_step_size} from N(0, I)",
        "test_inference_seconds": time.perf_counter() - started,
        "final_loss": history.epochs[-1]["loss"], "history": history.epochs,
    }
    return samples, metrics


def _train_lfbm_vae(args, x_train, x_test, device) -> tuple[torch.Tensor, dict]:
    """LFBM-VAE: the LFBM model (same generator and flow prior as LFBM-MCMC) learned with the amortized
    encoder guide of :mod:`pyro_lfbm.infer.encoder_guide` (reparametrized ELBO); the encoder mirrors
    the generator. Reconstruction: G(μ_φ(x))."""
    preset = get_preset(args.preset, "flow", "encoder").with_epochs(args.epochs)
    model, history, guide = _train(preset, _checkpoint_dir(args) / f"{args.dataset}-lfbm-vae.pt", args, x_train, device,
                                   with_guide=True)
    epochs = preset.learn.epochs
    model.eval()
    guide.eval()
    started = time.perf_counter()
    with torch.no_grad():
        recon = torch.cat([model.generator(guide.mean(xb.to(device))).cpu() for xb in x_test.split(500)])
        samples = torch.cat([model.sample(min(500, args.num_samples - i)).cpu()
                             for i in range(0, args.num_samples, 500)])
    metrics = {
        "model": "lfbm-vae", "dataset": args.dataset, "preset": args.preset, "epochs": epochs, "seed": args.seed,
        "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
        "train_seconds": history.train_seconds, "recon_mse": (recon - x_test).pow(2).mean().item(),
        "recon_protocol": "G(encoder mean), one encoder pass",
        "test_inference_seconds": time.perf_counter() - started,
        "final_loss": history.epochs[-1]["loss"], "history": history.epochs,
    }
    return samples, metrics


def _train(preset, ckpt: Path, args, x_train, device, with_guide: bool = False):
    """Build ``preset`` by the one recipe (seeded by --seed, in a fresh param store) and train it;
    returns (model, history) or, with ``with_guide``, (model, history, guide)."""
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    recipe = build(preset, device=device)
    history = train_recipe(recipe, x_train, seed=args.seed,
                           checkpoint=Checkpointing(ckpt, args.resume, preset.to_dict(), ("model",)), progress=not args.no_progress,
                           skip_nonfinite=args.skip_nonfinite)
    return (recipe.model, history, recipe.guide) if with_guide else (recipe.model, history)


def _checkpoint_dir(args) -> Path:
    return Path(args.checkpoint_dir or Path(args.runs_dir) / "checkpoints")


def prepare_train(args) -> torch.device:
    """Every check of the ``train`` stage, before any data are read."""
    unknown = [m for m in args.models if m not in LATENT_MODELS and m != "lfbm-vae"]
    if unknown:
        raise UsageError(f"train trains {', '.join([*LATENT_MODELS, 'lfbm-vae'])}; got {', '.join(unknown)} "
                         f"(GLF and CoopFlow have their own scripts)")
    device = cli.check_common_arguments(args, out=False)
    batch = max(get_preset(args.preset, LATENT_MODELS.get(m, "flow")).learn.batch_size for m in args.models)
    if args.n_train < batch:
        raise UsageError(f"--n-train {args.n_train} is less than one training batch ({batch} images in the {args.preset} "
                         f"preset); pass at least {batch}")
    cli.writable_dir(args.runs_dir, "--runs-dir")
    ckpt_dir = cli.writable_dir(_checkpoint_dir(args), "--checkpoint-dir")
    for name in args.models:
        cli.refuse_finished_run(Path(args.runs_dir) / args.dataset / name, "metrics.json", args.overwrite)
    if args.resume:
        cli.require_checkpoint([ckpt_dir / f"{args.dataset}-{name}.pt" for name in args.models])
    return device


def train(args) -> None:
    device = prepare_train(args)
    x_train = load_images(args.dataset, args.data_root, "train", limit=args.n_train).tensors[0]
    x_test = load_images(args.dataset, args.data_root, "test", limit=args.n_test).tensors[0]
    for name in args.models:
        print(f"== {args.dataset}: {name}")
        if name == "lfbm-vae":
            samples, metrics = _train_lfbm_vae(args, x_train, x_test, device)
        else:
            samples, metrics = _train_latent_model(name, args, x_train, x_test, device)
        save_run(Path(args.runs_dir) / args.dataset / name, samples, metrics)
        print(f"   train {metrics['train_seconds']:.0f} s, test recon MSE {metrics['recon_mse']:.4f}")


def _reference_images(dataset: str, args) -> torch.Tensor:
    """The real images the samples are compared with: the first ``--n-reference`` test images."""
    return load_images(dataset, args.data_root, "test", limit=args.n_reference).tensors[0]


def _scores(samples: torch.Tensor, real: torch.Tensor, classifier, inception: tuple) -> dict:
    """Classifier-feature Fréchet distance, and Inception FID when ``pytorch_fid`` and its weights exist."""
    row = {"fd_classifier": fid.sample_frechet_distance(samples, real, classifier=classifier)}
    row["fid_inception"] = fid.inception_fid(samples, real) if inception[0] else float("nan")
    return row


def _samples(path: Path) -> torch.Tensor:
    """Saved samples (N, C, H, W); a damaged file is one line naming it."""
    def read(p):
        x = torch.load(p, map_location="cpu")
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[0] < 2:
            raise ValueError("not a (N, C, H, W) tensor with N >= 2")
        return x

    return read_result_file(path, read, "samples file")


def table(args) -> pd.DataFrame:
    runs = Path(args.runs_dir)
    cli.check_data_root(args.data_root)
    if not runs.is_dir():
        raise UsageError(f"--runs-dir {runs} is not a folder; run the 'train' stage (and the GLF / CoopFlow scripts) first")
    # every run read (and checked) before the expensive part: reference images, classifier, distances
    found = {}
    for dataset in DATASETS:
        for name in ALL_MODELS:
            folder = runs / dataset / name
            if (folder / "metrics.json").exists():
                metrics = read_result_file(folder / "metrics.json", lambda p: json.loads(p.read_text()), "run metrics")
                before = _samples(folder / "flow_samples.pt") if (folder / "flow_samples.pt").exists() else None
                found.setdefault(dataset, []).append((folder, metrics, _samples(folder / "samples.pt"), before))
    if not found:
        raise UsageError(f"no runs under {runs}; run the 'train' stage and the GLF / CoopFlow scripts first")
    cli.writable_dir(args.out, "--out")
    inception = fid.inception_status()
    rows = []
    for dataset, runs_of_dataset in found.items():
        real = _reference_images(dataset, args)
        classifier = fid.ClassifierFeatures.load_or_train(dataset, args.data_root, progress=False)
        # a floor for the distances: as many real training images as there are samples per model
        n = int(runs_of_dataset[0][2].shape[0])
        train_real = load_images(dataset, args.data_root, "train", limit=n).tensors[0]
        rows.append({"dataset": dataset, "model": f"real train images (n={n})",
                     **_scores(train_real, real, classifier, inception), "recon_mse": None, "train_seconds": None,
                     "epochs": None, "n_train": None, "n_samples": n, "command": None})
        for folder, metrics, samples, before in runs_of_dataset:
            rows.append({
                "dataset": dataset, "model": folder.name, **_scores(samples, real, classifier, inception),
                "recon_mse": metrics.get("recon_mse"), "train_seconds": metrics.get("train_seconds"),
                "epochs": metrics.get("epochs"), "n_train": metrics.get("n_train"),
                "n_samples": int(samples.shape[0]), "command": metrics.get("command"),
            })
            if before is not None:  # CoopFlow: the same samples before Langevin revision
                rows.append({**rows[-1], "model": f"{folder.name} (flow samples, before revision)",
                             **_scores(before, real, classifier, inception)})
    frame = pd.DataFrame(rows)
    with staged_output(args.out) as stage:
        frame.to_csv(stage / "table.csv", index=False)
        write_json(stage / "table_run.json", run_record({
            "reference": f"first {args.n_reference} test images", "classifier_fd": "pyro_lfbm.metrics.fid.sample_frechet_distance",
            "inception_fid": "computed" if inception[0] else f"not computed: {inception[1]}",
        }))
    print(frame.drop(columns=["command"]).to_string(index=False))
    return frame
