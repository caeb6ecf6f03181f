"""StepSizeAdaptation: Pyro's dual averaging in windows, shared by the guide and the MALA draws."""

import math

import pytest
import torch
from pyro.ops.dual_averaging import DualAveraging

from pyro_lfbm.infer import LangevinGuide, StepSizeAdaptation
from pyro_lfbm.infer.adaptation import window_ends


def _accepts(n, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_one_window_is_pyros_dual_averaging_then_its_average():
    accepts = _accepts(30)
    adaptation = StepSizeAdaptation(0.6, num_updates=30, initial_step_size=0.3, gamma=0.05, windowed=False)
    reference = DualAveraging(prox_center=math.log(0.3), gamma=0.05)
    for t, a in enumerate(accepts):
        got = adaptation.update(a)
        reference.step(0.6 - a)
        x_t, x_avg = reference.get_state()
        assert got == pytest.approx(math.exp(x_avg if t == 29 else x_t), rel=1e-12)
    assert not adaptation.adapting and adaptation.updates == 30
    with pytest.raises(RuntimeError, match="frozen"):
        adaptation.update(0.5)


def test_windows_restart_at_the_step_size_reached():
    accepts = _accepts(200, seed=1)
    adaptation = StepSizeAdaptation(num_updates=200)
    ends = window_ends(200)
    reference = DualAveraging(prox_center=math.log(0.1), gamma=0.2)
    for t, a in enumerate(accepts, start=1):
        got = adaptation.update(a)
        reference.step(0.8 - a)
        x_t, x_avg = reference.get_state()
        expected = math.exp(x_avg if t in ends or t == 200 else x_t)
        assert got == pytest.approx(expected, rel=1e-12)
        if t in ends:
            reference.reset()
            reference.prox_center = math.log(expected)


def test_state_round_trip_continues_identically():
    accepts = _accepts(40, seed=2)
    first = StepSizeAdaptation(num_updates=40)
    for a in accepts[:15]:
        first.update(a)
    second = StepSizeAdaptation(num_updates=40)
    second.load_state_dict(first.state_dict())
    assert [first.update(a) for a in accepts[15:]] == [second.update(a) for a in accepts[15:]]


def test_a_guide_loads_the_state_layout_saved_before_step_size_adaptation():
    def model(x):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    x = torch.randn(50)
    guide = LangevinGuide(model, num_steps=5)
    for _ in range(12):  # past the first window's end
        guide.infer(x)
    state = guide.get_extra_state()
    saved = dict(state["adaptation"])
    old = {"step_size": state["step_size"], "adapted_calls": saved.pop("updates"), "divergences": 0, "chains": None,
           "adapter": {k: saved[k] for k in ("prox_center", "x_avg", "g_avg", "t", "x_t")}}
    other = LangevinGuide(model, num_steps=5)
    other.set_extra_state(old)
    assert other.adaptation.state_dict() == state["adaptation"] and other.step_size == guide.step_size


@pytest.mark.parametrize("kwargs, match", [
    ({"target_accept_prob": 0.0}, "target_accept_prob"),
    ({"num_updates": 2.5}, "num_updates"),
    ({"initial_step_size": -1.0}, "initial_step_size"),
    ({"gamma": 0.0}, "gamma"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepSizeAdaptation(**kwargs)


def test_the_guide_takes_auto_or_an_adaptation_and_refuses_other_strings():
    assert isinstance(LangevinGuide(lambda x: None, step_size="auto").adaptation, StepSizeAdaptation)
    given = StepSizeAdaptation(num_updates=7)
    assert LangevinGuide(lambda x: None, step_size=given).adaptation is given
    assert LangevinGuide(lambda x: None, step_size=0.2).adaptation is None
    with pytest.raises(ValueError, match="StepSizeAdaptation"):
        LangevinGuide(lambda x: None, step_size="fast")
