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


# --- every incoming value is converted and checked before the first write ---------------


def trained_flat_adam(steps=3):
    """An Adam over one flatten() buffer in two groups (so a segment has several members
    and a load has several things to write), after ``steps`` steps."""
    rng = np.random.default_rng(5)
    flat = fastopt.flatten([rng.standard_normal(s) for s in SHAPES])
    opt = fastopt.Adam([{"params": flat.params[:2]}, {"params": flat.params[2:], "lr": 0.1}],
                       lr=0.01)
    for g in grads_for(rng, np.float64, steps):
        opt.step(g)
    return opt, flat.params


def forged(opt, index, name, value):
    """The optimizer's state dict with new lr and step everywhere (so that a load which
    writes before it checks shows) and ``state[index][name] = value``."""
    bad = opt.state_dict()
    for group in bad["param_groups"]:
        group["lr"] = 0.5
    for entry in bad["state"].values():
        entry["step"] = 7
    bad["state"][index][name] = value
    return bad


BAD_STATE_VALUES = {
    "strings": (1, np.array(["a", "b", "c", "d"])),
    "object-None": (1, np.array([None] * 4)),
    "object-floats": (1, np.array([0.5] * 4, dtype=object)),
    "complex": (1, np.ones(4, complex)),
    "bool": (1, np.ones(4, bool)),
    "datetime": (1, np.zeros(4, "datetime64[s]")),
    "list": (1, [0.5] * 4),
    "python-float-for-0-d": (2, 0.5),
    "string-for-0-d": (2, "0.5"),
}


@pytest.mark.parametrize("name", ["exp_avg", "exp_avg_sq"])
@pytest.mark.parametrize("case", BAD_STATE_VALUES)
def test_bad_state_value_is_refused_before_anything_is_written(case, name):
    """Strings, objects (None included), complex, bool, lists and bare numbers of the right
    shape: refused naming the entry, with lr, steps and every state buffer unchanged
    (they were written before the conversion failed, or loaded silently, before)."""
    opt, params = trained_flat_adam()
    before = snapshot(opt, params)
    index, value = BAD_STATE_VALUES[case]
    with pytest.raises((TypeError, ValueError), match=rf"state\[{index}\]\['{name}'\]"):
        opt.load_state_dict(forged(opt, index, name, value))
    assert_unchanged(opt, params, before, groups=True)


@pytest.mark.parametrize("where", ["step", "lr", "betas", "eps"])
def test_huge_int_in_state_dict_is_a_value_error(where):
    """An int beyond float range (1e400) is a ValueError naming the value, not an
    OverflowError; nothing changes."""
    opt, params = trained_flat_adam()
    before = snapshot(opt, params)
    bad = opt.state_dict()
    huge = 10 ** 400
    if where == "step":
        bad["state"][1]["step"] = huge
    else:
        bad["param_groups"][1][where] = (huge, 0.999) if where == "betas" else huge
    with pytest.raises(ValueError, match="step|lr|betas|eps"):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, before, groups=True)


def test_integer_and_other_float_state_is_cast_and_copied():
    """Real integer and float arrays of another dtype are accepted and cast to the
    param's dtype (as torch casts); the optimizer keeps its own copy."""
    params = [np.zeros(3, np.float32)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(3, np.float32)])
    d = opt.state_dict()
    d["state"][0]["exp_avg"] = np.array([1, 2, 3], np.int64)
    d["state"][0]["exp_avg_sq"] = np.array([4.0, 5.0, 6.0], np.float64)
    opt.load_state_dict(d)
    d["state"][0]["exp_avg"][...] = 0
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].dtype == np.float32 and state["exp_avg_sq"].dtype == np.float32
    np.testing.assert_array_equal(state["exp_avg"], [1, 2, 3])
    np.testing.assert_array_equal(state["exp_avg_sq"], [4, 5, 6])


def test_torch_tensor_state_is_checked_like_arrays():
    """fastopt.Adam loading tensors: sparse and complex refused before anything is
    written; bfloat16 widened (NumPy has no bfloat16)."""
    torch = pytest.importorskip("torch")
    opt, params = trained_flat_adam()
    before = snapshot(opt, params)
    for bad, match in [(torch.ones(4).to_sparse(), "sparse"),
                       (torch.ones(4, dtype=torch.complex64), "complex")]:
        with pytest.raises(TypeError, match=match):
            opt.load_state_dict(forged(opt, 1, "exp_avg", bad))
        assert_unchanged(opt, params, before, groups=True)
    bf16 = torch.full((4,), 0.5, dtype=torch.bfloat16)
    opt.load_state_dict(forged(opt, 1, "exp_avg", bf16))
    np.testing.assert_array_equal(opt.state_dict()["state"][1]["exp_avg"], np.full(4, 0.5))


# --- Adam and AdamW state dicts are told apart (torch's decoupled_weight_decay) ---------


def test_state_dict_says_decoupled_weight_decay_as_torch_does():
    torch = pytest.importorskip("torch")
    for name in ("Adam", "AdamW"):
        ours = getattr(fastopt, name)([np.ones(3)]).state_dict()["param_groups"][0]
        param = torch.ones(3, requires_grad=True)
        theirs = getattr(torch.optim, name)([param]).state_dict()["param_groups"][0]
        assert ours["decoupled_weight_decay"] is theirs["decoupled_weight_decay"]
    assert "decoupled_weight_decay" not in fastopt.SGD([np.ones(3)]).state_dict()[
        "param_groups"][0]


@pytest.mark.parametrize("source", ["fastopt", "torch.optim"])
@pytest.mark.parametrize("saved, loader", [("AdamW", "Adam"), ("Adam", "AdamW")])
def test_adam_and_adamw_state_dicts_are_not_interchangeable(saved, loader, source):
    """An AdamW state dict loaded into Adam (or the reverse) would continue with the
    other weight decay: refused, nothing changed."""
    if source == "torch.optim":
        torch = pytest.importorskip("torch")
        param = torch.ones(3, requires_grad=True)
        other = getattr(torch.optim, saved)([param], weight_decay=0.1)
        param.grad = torch.ones(3)
    else:
        other = getattr(fastopt, saved)([np.ones(3)], weight_decay=0.1)
    other.step(*([] if source == "torch.optim" else [[np.ones(3)]]))
    params = [np.ones(3)]
    opt = getattr(fastopt, loader)(params, weight_decay=0.1)
    opt.step([np.full(3, 0.5)])
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=f"decoupled_weight_decay=.*{loader} has"):
        opt.load_state_dict(other.state_dict())
    assert_unchanged(opt, params, before, groups=True)
    same = getattr(fastopt, saved)([np.ones(3)], weight_decay=0.1)
    same.load_state_dict(other.state_dict())   # the matching rule loads it
