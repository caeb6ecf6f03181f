"""The inpainting experiment: per prior, load (or train) the model, complete held-out images, measure (experiments/inpainting.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pyro_lfbm.harness.cli import UsageError, refuse_finished_run, run_record, staged_output, write_json
from pyro_lfbm.harness.formatting import prior_label
from pyro_lfbm.data import dataset_info
from pyro_lfbm.tasks.inpainting import hole_mask, inpaint, inpainting_errors, paper_hole
from pyro_lfbm.harness.panels import save_panel
from pyro_lfbm.harness.task_cli import check_task_arguments, load_split, task_preset, trained_model
from pyro_lfbm.train import distributed

__all__ = ["parse_hole", "run_inpainting"]

def parse_hole(text, image_shape) -> tuple:
    """``"TOP,LEFT,SIDE"`` (or None: the paper's hole scaled to ``image_shape``) -> (top, left, side)."""
    if text is None:
        return paper_hole(image_shape)
    try:
        top, left, side = (int(v) for v in text.split(","))
        hole_mask(image_shape, top, left, side)
    except ValueError as err:
        raise UsageError(f"--hole must be TOP,LEFT,SIDE inside the {image_shape[1]}x{image_shape[2]} image; got {text!r} ({err})") from None
    return top, left, side


def run_inpainting(args: argparse.Namespace) -> pd.DataFrame:
    """Write ``<out>/<dataset>/``: table.csv, panel.png, README.md, run.json; returns the table."""
    if args.completions < 1 or args.show < 1:
        raise UsageError("--completions and --show must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.step_size is not None and not args.step_size > 0:
        raise UsageError(f"--step-size must be positive, got {args.step_size}")
    _, shape = check_task_arguments(args, priors=args.priors)
    top, left, side = parse_hole(args.hole, shape)
    info = dataset_info(args.dataset)
    refuse_finished_run(Path(args.out) / info.name, "table.csv", args.overwrite)
    x_train = load_split(args, "train", args.n_train)
    x_test = load_split(args, "test", args.n_test)
    shape = tuple(x_test.shape[1:])
    mask = hole_mask(shape, top, left, side)
    rows, shown = [], {}
    show = min(args.show, x_test.shape[0])
    main = distributed.is_main()  # under torchrun: training is data-parallel, rank 0 alone prints and writes
    for prior in args.priors:
        model, history = trained_model(args, prior, x_train)
        learn = task_preset(args, prior, shape).learn
        steps = args.steps if args.steps is not None else learn.test_steps
        step_size = args.step_size if args.step_size is not None else learn.test_step_size
        with distributed.local_batchnorm():  # each process completes every image, as one process does
            completions = inpaint(model, x_test, mask, num_completions=args.completions, num_steps=steps,
                                  step_size=step_size, seed=args.seed, batch_size=learn.test_batch_size,
                                  progress=not args.no_progress and main)
        errors = inpainting_errors(completions, x_test, mask)
        shown[prior] = completions[:show]
        rows.append({"dataset": info.name, "prior": prior, **errors, "completions": args.completions, "steps": steps,
                     "step_size": step_size, "n_test": int(x_test.shape[0]), "hole": f"{side}x{side} at ({top}, {left})",
                     "n_train": int(x_train.shape[0]), "epochs": len(history.epochs), "seed": args.seed, "preset": args.preset})
        if main:
            print(f"{info.name} {prior}: hole MSE {errors['mse_hole']:.4f} (best of {args.completions}: {errors['mse_hole_best']:.4f})", flush=True)
    table = pd.DataFrame(rows)
    if not main:
        return table
    record = run_record()
    out = Path(args.out) / info.name
    with staged_output(out) as stage:
        table.to_csv(stage / "table.csv", index=False)
        panel = {}
        for i in range(show):
            panel[f"#{i} original"] = x_test[i : i + 1]
            panel[f"#{i} occluded"] = x_test[i : i + 1] * mask[0]
            for prior, comp in shown.items():
                panel[f"#{i} {prior_label(prior, model=False)}"] = comp[i]
        save_panel(panel, stage / "panel.png",
                   title=f"{info.name}: {side}x{side} hole, {args.completions} completions per prior (different chain starts)")
        write_json(stage / "run.json", record)
        lines = [
            f"# Supervised inpainting: {info.name}",
            "",
            f"Models trained on {x_train.shape[0]} complete training images (the synthesis models, same preset/epochs/seed). "
            f"Each of the first {x_test.shape[0]} test images loses a {side}x{side} square at (row {top}, col {left}) "
            "(the paper's 40x40 hole at (20, 12) on 64x64, scaled); z is inferred from the observed pixels only "
            f"(masked likelihood + prior) by {rows[0]['steps']} noise-free Langevin steps of {rows[0]['step_size']} from "
            f"{args.completions} chain starts z0 ~ p(z); each completion keeps the observed pixels and fills the hole with g(z).",
            "MSE on the hole in [0, 1] units: `mse_hole` mean over completions, `mse_hole_best` best of K per image, "
            "`mse_hole_of_mean` of the average completion.",
            "",
            table.drop(columns=["dataset"]).to_markdown(index=False),
            "",
            f"Command: `{record['command']}` ({record['finished']}, {record['machine']}).",
            "",
            "![panel](panel.png)",
            "",
        ]
        (stage / "README.md").write_text("\n".join(lines))
    return table
