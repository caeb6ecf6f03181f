"""Tests for pyro_lfbm.train.checkpoint: round trips, RNG restore, atomic writes, errors."""

from __future__ import annotations

import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_lfbm.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    check_config_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tests.conftest import FullDisk


def _trained_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
    return net, opt


def test_round_trip_model_optimizer_step_config(tmp_path):
    net, opt = _trained_net()
    config = {"latent_dim": 20, "dataset": "mnist", "betas": (0.5, 0.999)}
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", model=net.state_dict(), optim=opt.state_dict(),
                           step=3, config=config)
    assert path.is_file()

    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["step"] == 3 and ckpt["config"] == config

    net2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    net2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    for key, value in net.state_dict().items():
        assert torch.equal(value, net2.state_dict()[key]), key
    # optimizer moments restored: one more identical step gives identical weights
    batch = torch.randn(16, 4)
    for model, optim in ((net, opt), (net2, opt2)):
        optim.zero_grad()
        model(batch).pow(2).mean().backward()
        optim.step()
    for key, value in net.state_dict().items():
        assert torch.equal(value, net2.state_dict()[key]), key


def _model(data):
    loc = pyro.param("loc", torch.zeros(2))
    scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)


def _guide(data):
    q = pyro.param("q", torch.zeros(2))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("z", dist.Normal(q, 1.0).to_event(1))


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_pyro_resume_reproduces_next_step(tmp_path):
    """Param store + pyro.optim state + RNG round trip: the resumed SVI step equals the uninterrupted one."""
    data = torch.randn(10, 2) + 3.0
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = SVI(_model, _guide, optim, Trace_ELBO())
    for _ in range(3):
        svi.step(data)
    path = save_checkpoint(tmp_path / "svi.pt", param_store=pyro.get_param_store().get_state(),
                           optim=optim.get_state(), step=3)
    svi.step(data)
    expected = _params()

    pyro.clear_param_store()
    torch.randn(100)  # disturb the RNG
    ckpt = load_checkpoint(path)
    pyro.get_param_store().set_state(ckpt["param_store"])
    optim2 = pyro.optim.Adam({"lr": 0.05})
    optim2.set_state(ckpt["optim"])
    restore_rng_state(ckpt)
    SVI(_model, _guide, optim2, Trace_ELBO()).step(data)
    resumed = _params()
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
    pyro.clear_param_store()


def test_rng_restore_reproduces_draws(tmp_path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    path = save_checkpoint(tmp_path / "rng.pt", step=0)
    first = (torch.randn(5), np.random.standard_normal(3), random.random())
    torch.randn(7), np.random.rand(2), random.random()  # move every stream on
    restore_rng_state(load_checkpoint(path))
    second = (torch.randn(5), np.random.standard_normal(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, interrupt):
    path = tmp_path / "last.pt"
    save_checkpoint(path, step=1, weights=torch.arange(5.0))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # some bytes reach the disk, then the write dies
        raise interrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(interrupt)):
        save_checkpoint(path, step=2, weights=torch.zeros(5))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "temp file left behind"
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["weights"], torch.arange(5.0))


def test_corrupt_or_truncated_file_raises(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt") as info:
        load_checkpoint(garbage)
    assert "\n" not in str(info.value)

    good = save_checkpoint(tmp_path / "good.pt", weights=torch.randn(1000))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(CheckpointError, match="not a pyro-lfbm checkpoint"):
        load_checkpoint(foreign)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_reserved_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", rng_state=None)


def test_config_mismatch_names_key():
    saved = {"latent_dim": 20, "dataset": "mnist", "betas": [0.5, 0.999], "lr": 4e-4}
    same = {**saved, "betas": (0.5, 0.999), "lr": 1e-3}  # tuple vs list and unchecked keys are fine
    check_config_compatible(saved, same, ["dataset", "latent_dim", "betas"])
    with pytest.raises(CheckpointError) as info:
        changed = {**saved, "latent_dim": 16, "dataset": "svhn"}
        check_config_compatible(saved, changed, ["latent_dim", "dataset"])
    msg = str(info.value)
    assert "latent_dim=20" in msg and "latent_dim=16" in msg and "--checkpoint-dir" in msg
    assert "dataset" not in msg  # only the first mismatch is reported
    with pytest.raises(CheckpointError, match="prior"):
        check_config_compatible(saved, {**saved, "prior": "flow"}, ["prior"])


def _flip_bytes_in_record(path, record_suffix: str = "", count: int = 8) -> str:
    """Invert ``count`` bytes in the middle of the zip record whose name ends with ``record_suffix``
    (the largest record without one), found through the record's local header; the container
    itself stays intact. :returns: the record's name."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
    if record_suffix:
        (info,) = [i for i in records if i.filename.endswith(record_suffix)]
    else:
        info = max(records, key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + int.from_bytes(data[local + 28:local + 30], "little")
    middle = start + info.file_size // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))
    return info.filename


def test_damaged_tensor_data_is_refused_by_its_checksum(tmp_path):
    """Bytes overwritten in the middle of a tensor: ``torch.load`` reads the file without complaint
    (the zip container is intact), ``load_checkpoint`` refuses it in the one "unreadable" line."""
    path = save_checkpoint(tmp_path / "last.pt", weights=torch.arange(100_000.0))
    assert load_checkpoint(path)["weights"].equal(torch.arange(100_000.0))
    record = _flip_bytes_in_record(path)  # the weights, the largest record
    assert not torch.load(path, weights_only=False)["weights"].equal(torch.arange(100_000.0))  # torch does not notice
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} is unreadable (checksum mismatch in record {record})")
    assert message.endswith("delete it or use another --checkpoint-dir")


def test_damaged_pickle_record_is_refused_by_its_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", step=7, config={"name": "x" * 400})
    _flip_bytes_in_record(path, "/data.pkl", count=1)
    with pytest.raises(CheckpointError, match=r"unreadable \(checksum mismatch in record archive/data.pkl\)"):
        load_checkpoint(path)


def test_checksums_are_written_even_when_torch_is_told_not_to(tmp_path):
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        path = save_checkpoint(tmp_path / "last.pt", weights=torch.arange(10.0))
        assert torch.serialization.get_crc32_options() is False  # the caller's setting is put back
    finally:
        torch.serialization.set_crc32_options(before)
    assert load_checkpoint(path)["weights"].equal(torch.arange(10.0))



def test_a_full_disk_is_one_oserror_naming_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """``torch.save`` meets ``ENOSPC`` and raises ``RuntimeError: [enforce fail at inline_container.cc]
    ... unexpected pos`` on top of it; the save turns it into one OSError naming the checkpoint."""
    import errno

    path = save_checkpoint(tmp_path / "last.pt", step=1, weights=torch.arange(5.0))
    before = path.read_bytes()
    real = torch.save
    seen = []

    def full(obj, f, *args, **kwargs):
        try:
            return real(obj, FullDisk(f, 500), *args, **kwargs)
        except BaseException as err:
            seen.append(err)
            raise

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, step=2, weights=torch.zeros(100_000))
    monkeypatch.undo()
    assert isinstance(seen[0], RuntimeError) and "unexpected pos" in str(seen[0])  # what torch raises
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert str(info.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{path}'"
    assert info.value.__suppress_context__  # shown without torch's traceback
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "temp file left behind"
