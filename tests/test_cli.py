import pytest

from pyro_lfbm.harness.cli import UsageError, parse_overrides, staged_output


def test_parse_overrides_types():
    assert parse_overrides(["latent_dim=16", "batch_norm=false", "sigma=0.5", "prior=flow", "flow-width=32"]) == {
        "latent_dim": 16, "batch_norm": False, "sigma": 0.5, "prior": "flow", "flow_width": 32,
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["latent_dim"])


def test_staged_output_is_all_or_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "half.csv").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind
    with staged_output(out) as stage:
        (stage / "metrics.csv").write_text("ok")
    assert (out / "metrics.csv").read_text() == "ok"
