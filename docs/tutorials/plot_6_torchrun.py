"""
Training on several processes with torchrun
===========================================

:func:`pyro_lfbm.train.fit` (and ``experiments/anomaly.py``, ``inpainting.py``, ``synthesis.py``)
train data-parallel when started by ``torchrun``: each global batch is split over the processes,
each process runs the Langevin chains of its rows with the noise those rows get in one process,
BatchNorm normalises by the statistics of the whole global batch, and the gradients are summed.
So N processes follow the one-process run over the same batches, up to float rounding.

This tutorial writes a training script, runs it once with ``python`` and once with
``torchrun --standalone --nproc_per_node 2``, and compares the two trained models. The script
is the one to adapt; only the ``with distributed.process_group(...)`` block is specific to
data-parallel training.
"""

# %%
# The script
# ----------
# The same seed in every process gives the same initial model; ``process_group("cpu")`` joins the
# group that torchrun describes (gloo on the CPU, one torch thread per process; ``"cuda"``: nccl,
# one GPU per process) and does nothing under plain ``python``. Only rank 0 writes files.
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)
FULL = os.environ.get("PYRO_LFBM_DOCS_FULL") == "1"
N_TRAIN, EPOCHS = (10_000, 3) if FULL else (1_000, 2)

SCRIPT = f'''
import sys
import torch
from pyro_lfbm.data import load_images
from pyro_lfbm.infer import LangevinGuide
from pyro_lfbm.train import distributed, fit, get_preset

torch.set_num_threads(1)
torch.manual_seed(0)  # the same seed in every process: the same initial model and noise
model = get_preset("tiny").model.build()
guide = LangevinGuide(model, num_steps=20, step_size=0.1)
x, _ = load_images("mnist", split="train", limit={N_TRAIN}).tensors
with distributed.process_group("cpu"):
    history = fit(model, guide, x, epochs={EPOCHS}, batch_size=50, progress=False)
    if distributed.is_main():
        world = distributed.current()
        print("processes:", world.size if world else 1, "| loss per epoch:", [round(r["loss"], 2) for r in history.epochs])
        torch.save(model.state_dict(), sys.argv[1])
'''
print(SCRIPT)

# %%
# One process, then two
# ---------------------
# ``python -m torch.distributed.run`` is ``torchrun``. Two machines would run the same command on
# both, with ``--nnodes 2 --rdzv_backend c10d --rdzv_endpoint HOST0:29500`` instead of ``--standalone``.
folder = Path(tempfile.mkdtemp())
(folder / "train.py").write_text(SCRIPT)
environment = {**os.environ, "OMP_NUM_THREADS": "1"}
one = subprocess.run([sys.executable, str(folder / "train.py"), str(folder / "one.pt")],
                     capture_output=True, text=True, env=environment, check=True)
print(one.stdout)
two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(folder / "train.py"), str(folder / "two.pt")],
                     capture_output=True, text=True, env=environment)
print(two.stdout)
if two.returncode != 0:
    raise RuntimeError(two.stderr[-2000:])

# %%
# The same model
# --------------
# The two runs see the same batches and the same noise per image; what differs is the order of
# float32 additions (the gradient sum over processes, BatchNorm statistics over the global batch).
# Training amplifies such rounding differences with every update, and Adam most of all for
# parameters whose gradient is zero up to rounding (biases in front of a BatchNorm layer take
# steps of ±lr in either run). So the losses above agree closely and the parameters drift apart
# by a few percent over the run, without a difference in quality (the README reports an AUPRC of
# 0.297 in one process and 0.298 in two for a small anomaly run). In float64 with plain SGD the
# parameters agree to 1e-15 after training (``tests/test_distributed.py``). The largest
# differences here, relative to each tensor's scale:
one_state = torch.load(folder / "one.pt")
two_state = torch.load(folder / "two.pt")
relative = {name: float((one_state[name].double() - two_state[name].double()).abs().max())
            / max(float(one_state[name].double().abs().max()), 1e-12)
            for name in one_state if one_state[name].is_floating_point()}
for name, value in sorted(relative.items(), key=lambda item: -item[1])[:6]:
    print(f"{name:45s} {value:.1e}")
print(f"median over {len(relative)} tensors: {sorted(relative.values())[len(relative) // 2]:.1e}")

# %%
# More (stopping and resuming, what a lost process does, speed on shared cores) is in
# :doc:`../guide/distributed`.
