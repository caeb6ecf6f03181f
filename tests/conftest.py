import errno
import importlib.util
import os
import signal
import threading
from functools import lru_cache
from pathlib import Path

# One thread per process: the suite's models are small, and on a busy 2-core machine two threads
# per process made single tests up to 50x slower (oversubscription). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from a clean Pyro param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _default_sigint_handler():
    """Every test sees Python's own SIGINT handler (Ctrl-C raises KeyboardInterrupt), as in a
    foreground terminal. A shell that starts pytest in the background (``&``, ``nohup``) without job
    control makes it ignore SIGINT (SIG_IGN, inherited), and Python then keeps SIG_IGN: the tests
    that raise SIGINT would see nothing happen. A subprocess started under this handler gets SIG_DFL."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def data_root():
    """The real MNIST files: $PYRO_LFBM_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("PYRO_LFBM_DATA", REPO.parent / "shared" / "data"))


def require_mnist():
    root = data_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST files not found under {root} (set PYRO_LFBM_DATA)")
    return root


@lru_cache(maxsize=None)
def experiment_script(name: str):
    """The script ``experiments/<name>.py`` loaded as a module (its ``main`` and parser), once per
    session: the scripts themselves are what these tests exercise, so they are loaded from their files."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FullDisk:
    """A file object that takes ``room`` bytes, then fails with ``ENOSPC`` as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


def smooth_noise_split():
    """90 smooth random 28×28 images as an anomaly split: 50 to train on, 40 to score (every fourth one "anomalous")."""
    from pyro_lfbm.data import AnomalySplit

    g = torch.Generator().manual_seed(0)
    x = torch.tanh(2 * torch.nn.functional.interpolate(torch.randn(90, 1, 7, 7, generator=g), size=28, mode="bilinear"))
    is_anomaly = (torch.arange(40) % 4 == 0).long()
    return AnomalySplit(train_x=x[:50], train_digits=torch.zeros(50, dtype=torch.long), test_x=x[50:],
                        test_is_anomaly=is_anomaly, test_digits=is_anomaly * 7, heldout=7, seed=1)


def scored_at_the_encoders_z(preset):
    """``preset`` scored at the encoder's z (no test-time Langevin steps)."""
    from dataclasses import replace

    return replace(preset, learn=replace(preset.learn, test_steps=0))
