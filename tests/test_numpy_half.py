"""The NumPy front end trains bfloat16 (``ml_dtypes``) and float16 params over a float32
master (issue 13): ``flatten()`` takes them, each step reads the half gradient, updates
the master and the state and writes the params rounded to nearest even, in one pass.

The oracle: the rule's float32 optimizer run on the widened params and gradients gives
the master bit for bit, and the params are the master rounded (``astype``, as torch's
``.to()``)."""

import numpy as np
import pytest

import fastopt
from cases import MATRIX
from fastopt.rules import RULES

ml_dtypes = pytest.importorskip("ml_dtypes")

HALVES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
CASES = [(name, dict(combos[-1], lr=lr)) for name, (lr, combos) in MATRIX.items()]
SHAPES = [(6, 5), (7,), (2, 3, 4)]
STEPS = 8


def _arrays(half, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(half) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 0.5).astype(half) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


@pytest.mark.parametrize("layout", ["flatten", "arrays"])
@pytest.mark.parametrize("fmt", list(HALVES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_half_params_train_over_a_float32_master(case, fmt, layout):
    name, options = case
    cls = fastopt.optim.CLASSES[RULES[name].class_name]
    half = HALVES[fmt]
    params, grads = _arrays(half)
    wide = [p.astype(np.float32) for p in params]
    oracle = cls(wide, **options)
    if layout == "flatten":
        flat = fastopt.flatten(params)
        params = flat.params
        opt = cls(flat, **options)
    else:
        opt = cls(params, **options)
    for t, step_grads in enumerate(grads, start=1):
        if layout == "flatten":
            for view, g in zip(flat.grads, step_grads):
                view[...] = g
            opt.step()
        else:
            opt.step(step_grads)
        oracle.step([g.astype(np.float32) for g in step_grads])
        for i, (p, w) in enumerate(zip(params, wide)):
            master = opt.state[i]["master"]
            assert master.dtype == np.float32 and master.shape == p.shape
            np.testing.assert_array_equal(master, w, err_msg=f"master {i}, step {t}")
            np.testing.assert_array_equal(p.view(np.uint16), w.astype(half).view(np.uint16),
                                          err_msg=f"param {i}, step {t}")
            for key, value in oracle.state[i].items():
                if key != "step":
                    np.testing.assert_array_equal(opt.state[i][key], value, err_msg=key)


@pytest.mark.parametrize("fmt", list(HALVES))
def test_clipping_reads_half_gradients_as_their_widened_values(fmt):
    half = HALVES[fmt]
    params, grads = _arrays(half, seed=2)
    wide = [p.astype(np.float32) for p in params]
    opt = fastopt.Adam(params, lr=1e-2, clip_grad_norm=0.5)
    oracle = fastopt.Adam(wide, lr=1e-2, clip_grad_norm=0.5)
    opt.step(grads[0])
    oracle.step([g.astype(np.float32) for g in grads[0]])
    assert opt.last_grad_norm == oracle.last_grad_norm > 0.5
    np.testing.assert_array_equal(opt.state[0]["master"], wide[0])
    copies = [g.copy() for g in grads[1]]
    norm = fastopt.clip_grad_norm(copies, 0.5)
    assert norm == fastopt.clip_grad_norm([g.astype(np.float32) for g in grads[1]], 0.5)
    assert all(c.dtype == half for c in copies)


def test_state_dict_round_trip_and_torch_style_load_without_master():
    params, grads = _arrays(ml_dtypes.bfloat16, seed=3)
    opt = fastopt.AdamW(params, lr=1e-2)
    for g in grads[:3]:
        opt.step(g)
    saved = opt.state_dict()
    assert all(entry["master"].dtype == np.float32 for entry in saved["state"].values())
    twins = [p.copy() for p in params]
    other = fastopt.AdamW(twins, lr=1e-2)
    other.load_state_dict(saved)
    for g in grads[3:]:
        opt.step(g)
        other.step(g)
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))
    # a state dict without masters (torch.optim's, of bf16 params): the master starts from
    # the params, exactly widened
    bare = opt.state_dict()
    for entry in bare["state"].values():
        del entry["master"]
    fresh = fastopt.AdamW([p.copy() for p in params], lr=1e-2)
    fresh.load_state_dict(bare)
    np.testing.assert_array_equal(fresh.state[0]["master"], params[0].astype(np.float32))


def test_checkpoint_round_trips_half_params_master_and_bf16_state(tmp_path):
    pytest.importorskip("safetensors")
    params, grads = _arrays(ml_dtypes.bfloat16, seed=4)
    opt = fastopt.Adam(params, lr=1e-2, state_dtype="bfloat16")
    for g in grads[:2]:
        opt.step(g)
    fastopt.save(opt, tmp_path / "run.safetensors", params=True)
    twins = [np.zeros_like(p) for p in params]
    other = fastopt.Adam(twins, lr=1e-2, state_dtype="bfloat16")
    fastopt.load(other, tmp_path / "run.safetensors")
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))
    for g in grads[2:]:
        opt.step(g)
        other.step(g)
    for i, (p, q) in enumerate(zip(params, twins)):
        np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))
        np.testing.assert_array_equal(opt.state[i]["master"], other.state[i]["master"])
        np.testing.assert_array_equal(opt.state[i]["exp_avg"].view(np.uint16),
                                      other.state[i]["exp_avg"].view(np.uint16))


def test_refusals_change_nothing():
    params, grads = _arrays(ml_dtypes.bfloat16, seed=5)
    opt = fastopt.Adam(params, lr=1e-2)
    opt.step(grads[0])
    before = [p.copy() for p in params], [opt.state[i]["master"].copy() for i in range(3)]
    wrong = [g.astype(np.float32) for g in grads[1]]
    with pytest.raises(TypeError, match="grads\\[0\\] has dtype float32"):
        opt.step(wrong)
    mixed = [grads[1][0].astype(np.float16), *grads[1][1:]]
    with pytest.raises(TypeError, match="float16"):
        opt.step(mixed)
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p.view(np.uint16), b.view(np.uint16))
    for i, m in enumerate(before[1]):
        np.testing.assert_array_equal(opt.state[i]["master"], m)
        assert opt.state[i]["step"] == 1


def test_a_gradient_in_the_masters_memory_is_refused():
    """``opt.state[i]["master"]`` is a view of the optimizer's own float32 master: passed
    (viewed as the param's dtype) as a gradient it would be read while written."""
    params, grads = _arrays(np.float16, seed=6)
    opt = fastopt.SGD(params, lr=0.1)
    opt.step(grads[0])
    before = [p.copy() for p in params]
    master = opt.state[0]["master"]
    forged = [master.reshape(-1).view(np.float16)[:params[0].size].reshape(params[0].shape),
              *grads[1][1:]]
    with pytest.raises(ValueError, match="master"):
        opt.step(forged)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.view(np.uint16), b.view(np.uint16))


def test_a_bf16_state_dict_loads_into_float64_state_widened():
    """``state_dtype`` is the optimizer's own: a float64 optimizer keeps float64 state and
    takes bf16 state widened (exact); an invalid saved value is still refused."""
    p32 = np.ones(4, np.float32)
    opt = fastopt.Adam([p32], state_dtype="bfloat16")
    opt.step([np.full(4, 0.3, np.float32)])
    saved = opt.state_dict()
    other = fastopt.Adam([np.ones(4)])
    other.load_state_dict(saved)
    assert other.param_groups[0]["state_dtype"] is None
    assert other.state[0]["exp_avg"].dtype == np.float64
    np.testing.assert_array_equal(other.state[0]["exp_avg"],
                                  saved["state"][0]["exp_avg"].astype(np.float64))
    forged = {**saved, "param_groups": [{**saved["param_groups"][0],
                                         "state_dtype": "float16"}]}
    fresh = fastopt.Adam([np.ones(4)])
    with pytest.raises(ValueError, match="state_dtype"):
        fresh.load_state_dict(forged)
    assert not fresh.state
