"""The pure MALA step: its Metropolis-Hastings ratio, per-row tests, divergence handling and exactness."""


import pytest
import torch

from pyro_lfbm.infer.langevin import LangevinState, langevin_move
from pyro_lfbm.infer.mala import mala_step


def gaussian_rows(precision):
    """Rows z_b ~ N(0, P⁻¹): log p_b = -z_bᵀ P z_b / 2, shape (B,)."""
    return lambda latents: -0.5 * ((latents["z"] @ precision) * latents["z"]).sum(-1)


def brute_force_log_alpha(log_p, grad_log_p, z, z_new, s):
    """log α of one row, written out from the definition (1-row tensors)."""
    def log_q(a, b):
        return -((a - b - 0.5 * s**2 * grad_log_p(b)) ** 2).sum() / (2 * s**2)

    return log_p(z_new) - log_p(z) + log_q(z, z_new) - log_q(z_new, z)


def test_acceptance_probability_equals_the_hand_written_ratio_in_every_row():
    torch.manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64)
    precision = a @ a.T + torch.eye(3, dtype=torch.float64)
    fn = gaussian_rows(precision)
    z = torch.randn(7, 3, dtype=torch.float64)
    s = 0.6
    new, info = mala_step(LangevinState({"z": z}), fn, s)
    z_prop = info.proposal.position["z"]

    def log_p(v):
        return -0.5 * v @ precision @ v

    def grad_log_p(v):
        return -(precision @ v)

    for b in range(7):
        log_alpha = brute_force_log_alpha(log_p, grad_log_p, z[b], z_prop[b], s)
        assert torch.allclose(info.acceptance_prob[b], log_alpha.clamp(max=0).exp(), atol=1e-12)
        expected = z_prop[b] if info.is_accepted[b] else z[b]
        assert torch.equal(new.position["z"][b], expected)
    assert 0 < int(info.is_accepted.sum()) < 7  # the step is large enough for both outcomes
    assert not info.is_divergent.any()
    # the new state's cached log density and gradient are those of the kept positions
    assert torch.allclose(new.log_density, fn(new.position))
    assert torch.allclose(new.grad["z"], -(new.position["z"] @ precision))


def test_proposal_is_the_one_langevin_move():
    fn = gaussian_rows(torch.eye(2))
    z = torch.randn(5, 2)
    _, info = mala_step(LangevinState({"z": z}), fn, 0.3, generator=torch.Generator().manual_seed(4))
    expected = langevin_move(z, -z, 0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(info.proposal.position["z"], expected)


def test_tiny_step_on_an_exact_gaussian_accepts_everything():
    fn = gaussian_rows(torch.diag(torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)))
    state = LangevinState({"z": torch.randn(500, 3, dtype=torch.float64)})
    for _ in range(5):
        state, info = mala_step(state, fn, 1e-3)
        assert info.is_accepted.all()
        assert (info.acceptance_prob > 0.9999).all()


def test_mala_is_exact_where_unadjusted_langevin_is_biased():
    """Target N(0, 1) with s = 1.2: ULA's stationary variance is 1 / (1 - s²/4) = 1.5625; MALA's is 1."""
    fn = gaussian_rows(torch.eye(1, dtype=torch.float64))
    gen = torch.Generator().manual_seed(1)
    variances = {}
    for adjust in (True, False):
        state = LangevinState({"z": torch.randn(4000, 1, dtype=torch.float64, generator=gen)})
        draws = []
        for k in range(120):
            state, info = mala_step(state, fn, 1.2, adjust=adjust, generator=gen)
            if k >= 20:
                draws.append(state.position["z"])
        variances[adjust] = torch.stack(draws).var().item()
        if not adjust:
            assert info.is_accepted.all()
    assert abs(variances[True] - 1.0) < 0.05, variances
    assert abs(variances[False] - 1.5625) < 0.08, variances


def test_proposal_in_a_non_finite_region_is_rejected_and_flagged_row_by_row():
    def fn(latents):  # log p = NaN for z > 1 (a "hole" in the support), standard normal elsewhere
        z = latents["z"][:, 0]
        lp = -0.5 * z * z
        return torch.where(z > 1.0, torch.full_like(lp, float("nan")), lp)

    z = torch.zeros(200, 1)
    for adjust in (True, False):  # MALA, and unadjusted Langevin (which rejects only divergent rows)
        new, info = mala_step(LangevinState({"z": z}), fn, 1.0, adjust=adjust, generator=torch.Generator().manual_seed(0))
        landed = info.proposal.position["z"][:, 0] > 1.0
        assert landed.any() and (~landed).any()
        assert torch.equal(info.is_divergent, landed)
        assert not (info.is_accepted & info.is_divergent).any()
        assert (info.acceptance_prob[landed] == 0).all()
        assert torch.equal(new.position["z"][landed], z[landed])
        assert torch.isfinite(new.log_density).all() and torch.isfinite(new.grad["z"]).all()
        # the other rows were tested as usual: from z = 0 (the mode) most are accepted
        assert info.is_accepted[~landed].float().mean() > (0.5 if adjust else 0.999)


class _InfiniteSlope(torch.autograd.Function):
    """Value 0 everywhere; derivative +inf where z > 0.25 (a finite log density with a non-finite gradient)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.zeros_like(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * torch.where(z > 0.25, torch.full_like(z, float("inf")), torch.zeros_like(z))


def test_non_finite_gradient_is_a_divergence_too():
    def fn(latents):
        z = latents["z"][:, 0]
        return -0.5 * z * z + _InfiniteSlope.apply(z)

    z = torch.full((50, 1), -0.5)
    new, info = mala_step(LangevinState({"z": z}), fn, 0.8, generator=torch.Generator().manual_seed(3))
    landed = info.proposal.position["z"][:, 0] > 0.25
    assert landed.any() and (~landed).any()
    assert torch.isfinite(info.proposal.log_density).all()
    assert torch.equal(info.is_divergent, landed)
    assert torch.equal(new.position["z"][landed], z[landed])


def test_one_divergent_row_leaves_the_other_rows_unchanged():
    fn = gaussian_rows(torch.eye(2))

    def fn_with_hole(latents):  # row 3 diverges, whatever it proposes
        lp = fn(latents)
        return torch.where(torch.arange(len(lp)) == 3, torch.full_like(lp, float("inf")), lp)

    z = torch.randn(8, 2)
    runs = [mala_step(LangevinState({"z": z}), f, 0.9, generator=torch.Generator().manual_seed(2)) for f in (fn, fn_with_hole)]
    (new_a, info_a), (new_b, info_b) = runs
    others = torch.arange(8) != 3
    assert torch.equal(info_b.is_divergent, ~others)
    assert torch.equal(new_a.position["z"][others], new_b.position["z"][others])
    assert torch.equal(info_a.is_accepted[others], info_b.is_accepted[others])
    assert torch.equal(new_b.position["z"][3], z[3])


def test_row_dims_select_the_row_dimension_of_each_site():
    precision = torch.diag(torch.tensor([1.0, 3.0]))

    def fn_rows_first(latents):  # z (B, 2), w (B,)
        return gaussian_rows(precision)(latents) - 0.5 * latents["w"] ** 2

    def fn_rows_last(latents):  # z stored as (2, B)
        return gaussian_rows(precision)({"z": latents["z"].T}) - 0.5 * latents["w"] ** 2

    z, w = torch.randn(6, 2), torch.randn(6)
    a, info_a = mala_step(LangevinState({"z": z, "w": w}), fn_rows_first, 0.9,
                          generator=torch.Generator().manual_seed(5))
    b, info_b = mala_step(LangevinState({"z": z.T.contiguous(), "w": w}), fn_rows_last, 0.9,
                          row_dims={"z": 1, "w": 0}, generator=torch.Generator().manual_seed(5))
    # the noise is drawn in each site's own layout, so compare the MH ratio on the same proposal:
    assert torch.allclose(info_a.acceptance_prob, _ratio_of(fn_rows_first, z, w, info_a.proposal, precision, 0.9))
    assert torch.allclose(info_b.acceptance_prob, _ratio_of(fn_rows_first, z, w, _transposed(info_b.proposal), precision, 0.9))
    with pytest.raises(ValueError, match="row dimension"):
        mala_step(LangevinState({"z": z.T.contiguous(), "w": w}), fn_rows_last, 0.9)


def _transposed(state):
    return LangevinState({"z": state.position["z"].T, "w": state.position["w"]})


def _ratio_of(fn, z, w, proposal, precision, s):
    zp, wp = proposal.position["z"], proposal.position["w"]
    out = []
    for b in range(len(w)):
        def log_p(v):
            return -0.5 * v[:2] @ precision @ v[:2] - 0.5 * v[2] ** 2

        def grad(v):
            return torch.cat([-(precision @ v[:2]), -v[2:]])

        cur, new = torch.cat([z[b], w[b:b + 1]]), torch.cat([zp[b], wp[b:b + 1]])
        out.append(brute_force_log_alpha(log_p, grad, cur, new, s).clamp(max=0).exp())
    return torch.stack(out)


def test_scalar_log_density_makes_one_test_for_the_whole_chain():
    def fn(latents):
        return -0.5 * (latents["mu"] ** 2).sum() - 0.5 * (latents["tau"] ** 2).sum()

    state = LangevinState({"mu": torch.randn(3), "tau": torch.randn(2, 2)})
    seen = set()
    for _ in range(30):
        state, info = mala_step(state, fn, 1.5)
        assert info.is_accepted.shape == () and info.acceptance_prob.shape == ()
        seen.add(bool(info.is_accepted))
    assert seen == {True, False}


def test_float64_in_float64_out():
    fn = gaussian_rows(torch.eye(2, dtype=torch.float64))
    state, info = mala_step(LangevinState({"z": torch.randn(4, 2, dtype=torch.float64)}), fn, 0.5)
    assert state.position["z"].dtype == torch.float64
    assert info.acceptance_prob.dtype == torch.float64 and state.log_density.dtype == torch.float64


def test_bad_arguments():
    fn = gaussian_rows(torch.eye(2))
    with pytest.raises(ValueError, match="step_size"):
        mala_step(LangevinState({"z": torch.randn(4, 2)}), fn, 0.0)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        mala_step(LangevinState({"z": torch.randn(4, 2)}), lambda l: l["z"] ** 2, 0.1)


def test_one_step_size_per_row_equals_separate_runs():
    precision = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    fn = gaussian_rows(precision)
    z = torch.randn(4, 2, dtype=torch.float64)
    steps = torch.tensor([0.1, 0.5, 1.0, 1.5], dtype=torch.float64)
    new, info = mala_step(LangevinState({"z": z}), fn, steps, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for b in range(4):
        s = steps[b].item()
        expected = z[b] + 0.5 * s**2 * (-(precision @ z[b])) + s * noise[b]
        assert torch.allclose(info.proposal.position["z"][b], expected)
        log_alpha = brute_force_log_alpha(lambda v: -0.5 * v @ precision @ v, lambda v: -(precision @ v), z[b], expected, s)
        assert torch.allclose(info.acceptance_prob[b], log_alpha.clamp(max=0).exp())
    with pytest.raises(ValueError, match="one entry per row"):
        mala_step(LangevinState({"z": z}), fn, steps[:3])
