"""state_dict / load_state_dict: PyTorch's layout, and an identical continuation."""

import numpy as np
import pytest

import fastopt
from cases import CASES, RULES, assert_unchanged, case_id, snapshot

SHAPES = [(5, 3), (4,), ()]


def grads_for(rng, dtype, steps):
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


@pytest.mark.parametrize("layout", ["flat", "arrays"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_continues_bitwise(case, dtype, layout):
    """10 steps, save, load into a fresh optimizer, 10 more == 20 uninterrupted."""
    rule, options = case
    cls, _, lr = RULES[rule]
    rng = np.random.default_rng(2)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = grads_for(rng, dtype, 20)

    def make(params):
        params = fastopt.flatten(params) if layout == "flat" else [p.copy() for p in params]
        views = params.params if layout == "flat" else params
        return cls(params, lr=lr, **options), views

    straight, straight_params = make(start)
    for g in grads:
        straight.step(g)

    first, first_params = make(start)
    for g in grads[:10]:
        first.step(g)
    saved = first.state_dict()
    params_after_10 = [p.copy() for p in first_params]
    for g in grads[10:12]:        # the snapshot must not change when the optimizer steps on
        first.step(g)
    resumed, resumed_params = make([p.copy() for p in params_after_10])
    resumed.load_state_dict(saved)
    for g in grads[10:]:
        resumed.step(g)
    for a, b in zip(resumed_params, straight_params):
        np.testing.assert_array_equal(a, b)
    assert resumed.state_dict()["state"][0]["step"] == 20


def test_layout_is_torchs():
    params = [np.ones((2, 2)), np.ones(3)]
    opt = fastopt.Adam([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}],
                       amsgrad=True)
    assert opt.state_dict()["state"] == {}
    opt.step([np.ones((2, 2)), np.ones(3)])
    d = opt.state_dict()
    assert set(d["state"]) == {0, 1}
    assert set(d["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert d["state"][1]["exp_avg"].shape == (3,)
    assert [g["params"] for g in d["param_groups"]] == [[0], [1]]
    assert d["param_groups"][1]["lr"] == 0.1 and d["param_groups"][0]["lr"] == 1e-3
    assert d["param_groups"][0]["amsgrad"] is True


def test_loads_torch_optim_checkpoint_and_continues_on_its_trajectory():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s) for s in SHAPES]
    theirs = [torch.tensor(p, requires_grad=True) for p in start]
    torch_opt = torch.optim.Adam(theirs, lr=0.01, amsgrad=True, foreach=False)
    grads = grads_for(rng, np.float64, 20)
    for g in grads[:10]:
        for t, gi in zip(theirs, g):
            t.grad = torch.from_numpy(gi.copy())
        torch_opt.step()
    ours = [t.detach().numpy().copy() for t in theirs]
    opt = fastopt.Adam(ours, lr=0.5)
    opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["amsgrad"] is True
    for g in grads[10:]:
        for t, gi in zip(theirs, g):
            t.grad = torch.from_numpy(gi.copy())
        torch_opt.step()
        opt.step(g)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["param_groups"].append(dict(d["param_groups"][0])), "param groups"),
    (lambda d: d["param_groups"][0]["params"].pop(), "params"),
    (lambda d: d["state"][1].__setitem__("exp_avg", np.zeros(7)), "shape"),
    (lambda d: d["state"][0].pop("exp_avg_sq"), "exp_avg_sq"),
    (lambda d: d["param_groups"][0].__setitem__("momentum", 0.9), "momentum"),
    (lambda d: d["param_groups"][0].__setitem__("lr", -1.0), "lr"),
    (lambda d: d.pop("state"), "state"),
])
def test_bad_state_dict_is_refused_and_changes_nothing(mutate, message):
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s) for s in SHAPES]
    opt = fastopt.Adam(params, lr=0.01)
    for g in grads_for(rng, np.float64, 3):
        opt.step(g)
    bad = opt.state_dict()
    for g in grads_for(rng, np.float64, 2):
        opt.step(g)
    before = snapshot(opt, params)
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, before, groups=True)


def test_state_dict_from_another_rule_is_refused():
    params = [np.ones(3)]
    sgd = fastopt.SGD(params, momentum=0.9)
    sgd.step([np.ones(3)])
    adam = fastopt.Adam([np.ones(3)])
    with pytest.raises(ValueError, match="momentum"):
        adam.load_state_dict(sgd.state_dict())


@pytest.mark.parametrize("step", [0, -1, 1.5, "3", None])
def test_bad_step_count_is_refused(step):
    params = [np.ones(3)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(3)])
    bad = opt.state_dict()
    bad["state"][0]["step"] = step
    before = opt.state_dict()
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(bad)
    assert opt.state_dict()["state"][0]["step"] == before["state"][0]["step"]


def test_duplicate_param_index_is_refused():
    params = [np.ones(3), np.ones(3)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(3), np.ones(3)])
    bad = opt.state_dict()
    bad["param_groups"][0]["params"] = [0, 0]
    with pytest.raises(ValueError, match="more than once"):
        opt.load_state_dict(bad)
