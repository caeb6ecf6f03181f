import pytest
import torch

from pyro_lfbm.data.masks import (
    MASK_SETTINGS,
    PAPER_HOLE_COUNTS_64,
    MaskSetting,
    coverage,
    coverage_stats,
    expected_salt_pepper_coverage,
    make_masks,
    occlude,
    salt_pepper_hole_count,
    single_hole_side,
)
from pyro_lfbm.train.presets import get_preset
from pyro_lfbm.train.svi import fit


@pytest.mark.parametrize("level", [30, 50, 70])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_salt_pepper_coverage_is_near_the_level(level, size):
    mask = make_masks(400, (1, size, size), "salt-pepper", level, seed=0)
    assert abs(coverage(mask) - level / 100) < 0.04
    k = salt_pepper_hole_count(level, size, size)
    assert abs(expected_salt_pepper_coverage(k, size, size) - level / 100) < 0.05


def test_paper_hole_counts_on_64_and_calibration_agrees():
    for level in (30, 50, 70):
        assert salt_pepper_hole_count(level, 64, 64) == PAPER_HOLE_COUNTS_64[level]
    assert [salt_pepper_hole_count(level, 28, 28) for level in (30, 50, 70)] == [4, 9, 19]


def test_single_hole_sizes_scale_with_the_image():
    assert [single_hole_side(s, 28, 28) for s in (20, 30, 40)] == [9, 13, 18]
    assert [single_hole_side(s, 64, 64) for s in (20, 30, 40)] == [20, 30, 40]
    mask = make_masks(50, (3, 28, 28), "single", 30, seed=1)
    holes = (mask == 0).flatten(1).sum(1)
    assert torch.all(holes == 3 * 13 * 13)


def test_masks_are_deterministic_per_seed_and_shared_across_channels():
    a = make_masks(20, (3, 28, 28), "salt-pepper", 50, seed=7)
    b = make_masks(20, (3, 28, 28), "salt-pepper", 50, seed=7)
    c = make_masks(20, (3, 28, 28), "salt-pepper", 50, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])
    assert torch.equal(make_masks(5, (3, 28, 28), "salt-pepper", 50, seed=7), a[:5])  # image i's mask ignores N
    assert set(a.unique().tolist()) <= {0.0, 1.0}


def test_mask_settings_parse_and_describe():
    assert [MaskSetting(*s).name for s in MASK_SETTINGS][:2] == ["salt-pepper-30", "salt-pepper-50"]
    assert MaskSetting.parse("single-40") == MaskSetting("single", 40)
    assert "18x18" in MaskSetting("single", 40).describe((1, 28, 28))
    with pytest.raises(ValueError, match="salt-pepper-50"):
        MaskSetting.parse("holes-50")
    with pytest.raises(ValueError):
        MaskSetting("salt-pepper", 150)
    stats = coverage_stats(make_masks(10, (1, 28, 28), "single", 20))
    assert stats["min"] == stats["max"] == pytest.approx(81 / 784)


def test_masked_likelihood_ignores_hole_pixels():
    model = get_preset("tiny", "flow").model.build().eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    mask = make_masks(4, (1, 28, 28), "salt-pepper", 50, seed=0)
    z = torch.randn(4, model.latent_dim)
    changed = torch.where(mask.bool(), x, torch.randn_like(x) * 5)
    lp, lp_changed = model.log_joint(x, mask, z=z), model.log_joint(changed, mask, z=z)
    assert torch.allclose(lp, lp_changed)
    assert not torch.allclose(model.log_joint(x, z=z), model.log_joint(changed, z=z))
    assert torch.equal(occlude(x, mask)[mask == 0], torch.zeros(int((mask == 0).sum())))


class _Spy(torch.nn.Module):
    """Records which mask came with which image in every call (a stand-in for the model)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, mask=None):
        import pyro
        import pyro.distributions as dist

        if self.training:
            self.seen.append((x.clone(), mask.clone()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.w, 1.0).expand(x.shape[1:]).to_event(3), obs=x)


def test_fit_keeps_each_images_mask_across_epochs():
    n = 40
    x = torch.arange(n, dtype=torch.float).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()  # image id in pixels
    mask = make_masks(n, (1, 28, 28), "salt-pepper", 50, seed=3)
    spy = _Spy()
    fit(spy, lambda x, mask=None: None, x, epochs=3, batch_size=10, mask=mask, progress=False)
    assert len(spy.seen) == 12
    for xb, mb in spy.seen:
        ids = xb[:, 0, 0, 0].long()
        assert torch.equal(mb, mask[ids])
