import numpy as np
import pytest
import torch

from pyro_lfbm.metrics.fid import (
    ClassifierFeatures,
    default_cache_dir,
    frechet_distance,
    frechet_distance_from_statistics,
    inception_fid,
    inception_status,
    sample_frechet_distance,
)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 5.0 + sum((np.sqrt(a) - np.sqrt(b)) ** 2 for a, b in [(1, 4), (4, 1), (9, 1)])
    assert frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_frechet_distance_of_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 4, generator=g)
    b = torch.randn(4000, 4, generator=g) * 2 + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(4 * 1 + 4 * 1, rel=0.1)  # |Δμ|² = 4, Σ(1-2)² = 4
    # singular covariances (fewer samples than dimensions) stay finite and non-negative
    assert 0 <= frechet_distance(torch.randn(10, 64, generator=g), torch.randn(10, 64, generator=g)) < 1e3
    with pytest.raises(ValueError):
        frechet_distance(torch.randn(1, 4), a)


def test_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_LFBM_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    net = ClassifierFeatures.load_or_train("fake", cache_dir=tmp_path, epochs=1, limit=100, progress=False)
    assert net.info["cached"] is False and 0 <= net.info["test_accuracy"] <= 1
    assert ClassifierFeatures.cache_path("fake", tmp_path, 100).is_file()
    again = ClassifierFeatures.load_or_train("fake", cache_dir=tmp_path, epochs=1, limit=100, progress=False)
    assert again.info["cached"] is True
    x = torch.rand(30, 3, 32, 32) * 2 - 1
    assert torch.allclose(net.features(x), again.features(x))
    assert net.features(x).shape == (30, 128)
    fd_same = sample_frechet_distance(x, x, classifier=net)
    fd_noise = sample_frechet_distance(torch.zeros(30, 3, 32, 32), x, classifier=net)
    assert fd_same == pytest.approx(0.0, abs=1e-4) and fd_noise > fd_same
    with pytest.raises(ValueError, match="labelled"):
        ClassifierFeatures.load_or_train("celeba", cache_dir=tmp_path)


def test_inception_path_reports_why_it_cannot_run():
    ok, why = inception_status()
    if ok:
        pytest.skip("pytorch-fid and its weights are present")
    assert why
    with pytest.raises(RuntimeError, match="Inception FID unavailable"):
        inception_fid(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28))
