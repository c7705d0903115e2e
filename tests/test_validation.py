"""Bad input: the right exception, a message naming the argument, nothing written."""

import numpy as np
import pytest

import fastopt
from cases import CASES, RULES, assert_unchanged, case_id, snapshot

from fastopt.rules import RULES as REGISTRY

BAD_HYPERPARAMETERS = [
    ("sgd", {"lr": -0.1}, ValueError, "lr"),
    ("sgd", {"lr": float("nan")}, ValueError, "lr"),
    ("sgd", {"lr": "0.1"}, TypeError, "lr"),
    ("sgd", {"momentum": -0.5}, ValueError, "momentum"),
    ("sgd", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("sgd", {"nesterov": True}, ValueError, "nesterov"),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "nesterov"),
    ("sgd", {"nesterov": "yes"}, TypeError, "nesterov"),
    ("adagrad", {"lr_decay": -1.0}, ValueError, "lr_decay"),
    ("adagrad", {"initial_accumulator_value": -0.1}, ValueError, "initial_accumulator_value"),
    ("adagrad", {"eps": -1e-10}, ValueError, "eps"),
    ("rmsprop", {"alpha": -0.1}, ValueError, "alpha"),
    ("rmsprop", {"alpha": 1.5}, ValueError, r"alpha: 1.5 \(must be in \[0.0, 1.0\]\)"),
    ("rmsprop", {"eps": float("nan")}, ValueError, "eps"),
    ("rmsprop", {"momentum": -0.9}, ValueError, "momentum"),
    ("rmsprop", {"nesterov": True}, ValueError, "nesterov"),
    ("rmsprop", {"centered": 1}, TypeError, "centered"),
    ("adam", {"betas": (1.0, 0.999)}, ValueError, "beta parameter at index 0"),
    ("adam", {"betas": (0.9, -0.1)}, ValueError, "beta parameter at index 1"),
    ("adam", {"betas": (0.9, float("nan"))}, ValueError, "beta parameter at index 1"),
    ("adam", {"betas": 0.9}, TypeError, "betas"),
    ("adam", {"eps": -1e-8}, ValueError, "eps"),
    ("adam", {"amsgrad": None}, TypeError, "amsgrad"),
    ("adamw", {"weight_decay": -0.01}, ValueError, "weight_decay"),
    ("adamw", {"lr": True}, TypeError, "lr"),
]


@pytest.mark.parametrize("rule, options, error, name", BAD_HYPERPARAMETERS,
                         ids=[f"{r}-{list(o)}" for r, o, _, _ in BAD_HYPERPARAMETERS])
def test_bad_hyperparameter_at_construction(rule, options, error, name):
    with pytest.raises(error, match=name):
        RULES[rule][0]([np.ones(3)], **options)


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError, match="momentun"):
        fastopt.SGD([np.ones(3)], momentun=0.9)
    with pytest.raises(ValueError, match="momentun"):
        fastopt.SGD([{"params": [np.ones(3)], "momentun": 0.9}])


@pytest.mark.parametrize("rule, options, error, name", BAD_HYPERPARAMETERS,
                         ids=[f"{r}-{list(o)}" for r, o, _, _ in BAD_HYPERPARAMETERS])
def test_bad_hyperparameter_set_later_is_refused_at_step(rule, options, error, name):
    params = [np.ones(3), np.ones(2)]
    opt = RULES[rule][0]([{"params": params[:1]}, {"params": params[1:]}])
    opt.step([np.ones(3), np.ones(2)])
    before = snapshot(opt, params)
    opt.param_groups[1].update(options)
    with pytest.raises(error, match=name):
        opt.step([np.ones(3), np.ones(2)])
    assert_unchanged(opt, params, before)


def readonly(array):
    array.flags.writeable = False
    return array


BAD_PARAMS = [
    ([np.ones(3, dtype=np.int64)], TypeError,
     r"params\[0\].*float32, float64, bfloat16 or float16, got int64"),
    ([np.ones(3, dtype=np.longdouble)], TypeError, r"params\[0\].*got float128"),
    ([np.ones(3, dtype=bool)], TypeError, r"params\[0\]"),
    ([np.ones(3, dtype=np.complex128)], TypeError, r"params\[0\]"),
    ([np.ones(3), [1.0, 2.0]], TypeError, r"params\[1\].*ndarray"),
    ([np.ones((4, 4))[:, 1]], ValueError, r"params\[0\].*C-contiguous"),
    ([readonly(np.ones(3))], ValueError, r"params\[0\].*read-only"),
    ([], ValueError, "empty"),
    (np.ones(3), TypeError, "list"),
]


@pytest.mark.parametrize("params, error, message", BAD_PARAMS,
                         ids=["int", "longdouble", "bool", "complex", "list", "strided",
                              "readonly", "empty", "bare-array"])
@pytest.mark.parametrize("rule", list(RULES))
def test_bad_params(rule, params, error, message):
    with pytest.raises(error, match=message):
        RULES[rule][0](params)


def test_same_param_twice_is_refused():
    p = np.ones(3)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        fastopt.Adam([p, p])
    with pytest.raises(ValueError, match="share memory"):
        fastopt.Adam([{"params": [p]}, {"params": [p[1:]]}])


def bad_grads(params):
    """(grads, zero_grad, error, message) for params [(3,), (2, 2)] float64."""
    ok = [np.ones(3), np.ones((2, 2))]
    return [
        ([np.ones(3)], False, ValueError, "grads has 1 arrays, params has 2"),
        ([np.ones(3), np.ones(4)], False, ValueError, r"grads\[1\] has shape \(4,\)"),
        ([np.ones(3), np.ones((2, 2), np.float32)], False, TypeError, r"grads\[1\].*float32"),
        ([np.ones(3, np.int32), ok[1]], False, TypeError,
         r"grads\[0\].*float32, float64, bfloat16 or float16"),
        ([np.ones(3), np.ones((2, 4))[:, ::2]], False, ValueError, r"grads\[1\].*C-contiguous"),
        ([params[0], ok[1]], False, ValueError, r"grads\[0\] shares memory with the param"),
        ([np.ones(3), readonly(np.ones((2, 2)))], True, ValueError, r"grads\[1\] is read-only"),
        ([np.ones(3), "x"], False, TypeError, r"grads\[1\]"),
        (np.ones(3), False, TypeError, "grads must be a list"),
    ]


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("case", range(9))
def test_bad_grads_change_nothing(rule, case):
    params = [np.linspace(0, 1, 3), np.linspace(1, 2, 4).reshape(2, 2)]
    opt = RULES[rule][0](params, lr=0.1, **({"momentum": 0.9} if rule == "sgd" else {}))
    opt.step([np.ones(3), np.ones((2, 2))])
    before = snapshot(opt, params)
    grads, zero_grad, error, message = bad_grads(params)[case]
    with pytest.raises(error, match=message):
        opt.step(grads, zero_grad=zero_grad)
    assert_unchanged(opt, params, before)


def test_grad_aliasing_state_is_refused():
    params = [np.ones(3)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(3)])
    with pytest.raises(ValueError, match="optimizer state"):
        opt.step([opt.state[0]["exp_avg"]])


def test_step_without_grads_needs_a_flatten_result():
    with pytest.raises(TypeError, match="grads is required"):
        fastopt.SGD([np.ones(3)]).step()


def test_none_grad_inside_a_flat_buffer_is_refused():
    flat = fastopt.flatten([np.ones(3), np.ones(2)])
    opt = fastopt.SGD(flat)
    with pytest.raises(ValueError, match=r"grads\[1\] is None"):
        opt.step([np.ones(3), None])


def test_flatten_refuses_non_float_arrays():
    with pytest.raises(TypeError, match=r"arrays\[1\].*int64"):
        fastopt.flatten([np.ones(2), np.arange(3)])


# --- more bad input (issue 5): object arrays, empty and 0-d params, cross-aliasing, ------
# --- another model's state dict, step() before any gradient ---------------------------

def test_object_arrays_are_refused_everywhere():
    objects = np.array([1.0, 2.0], dtype=object)
    with pytest.raises(TypeError,
                       match=r"params\[0\].*float32, float64, bfloat16 or float16.*object"):
        fastopt.Adam([objects])
    with pytest.raises(TypeError, match=r"arrays\[0\].*object"):
        fastopt.flatten([objects])
    with pytest.raises(TypeError, match=r"grads\[0\].*object"):
        fastopt.clip_grad_norm([objects], 1.0)
    params = [np.ones(2)]
    opt = fastopt.Adam(params)
    opt.step([np.ones(2)])
    before = snapshot(opt, params)
    with pytest.raises(TypeError, match=r"grads\[0\].*object"):
        opt.step([objects])
    assert_unchanged(opt, params, before)


EMPTY_AND_SCALAR_SHAPES = [(0,), (3,), (), (2, 0), (0, 3)]


@pytest.mark.parametrize("layout", ["flat", "arrays"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_zero_size_and_0d_params_step_like_the_reference(case, layout):
    """Supported as torch supports them: an empty param steps (its state exists, empty, and
    its step count advances) and a 0-d param is an ordinary one-element parameter."""
    rule, options = case
    cls, ref, lr = RULES[rule]
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s) for s in EMPTY_AND_SCALAR_SHAPES]
    grads = [[rng.standard_normal(s) for s in EMPTY_AND_SCALAR_SHAPES] for _ in range(3)]
    if layout == "flat":
        flat = fastopt.flatten(start)
        params, opt = flat.params, cls(flat, lr=lr, **options)
    else:
        params = [p.copy() for p in start]
        opt = cls(params, lr=lr, **options)
    want, states = [p.copy() for p in start], [{} for _ in start]
    for step_grads in grads:
        opt.step(step_grads)
        for i, g in enumerate(step_grads):
            want[i], states[i] = ref(want[i], g, states[i], lr=lr, **options)
    for got, expected in zip(params, want):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    state = opt.state_dict()["state"]
    assert sorted(state) == list(range(len(start)))
    for i, expected in enumerate(states):
        assert state[i]["step"] == 3
        for name, value in expected.items():
            if name in REGISTRY[rule].scalar_state_names:   # NAdam's mu_product: a number
                assert state[i][name] == pytest.approx(value, rel=1e-12)
            elif name != "step":
                group = {**REGISTRY[rule].defaults, **options}
                assert state[i][name].shape == REGISTRY[rule].state_shape(
                    name, group, EMPTY_AND_SCALAR_SHAPES[i])
                np.testing.assert_allclose(state[i][name], value, rtol=1e-12, atol=1e-13)


def test_flatten_of_only_empty_arrays_steps():
    flat = fastopt.flatten([np.zeros(0, np.float32), np.zeros((0, 2), np.float32)])
    opt = fastopt.Adam(flat)
    opt.step()
    assert opt.state_dict()["state"][1]["exp_avg"].shape == (0, 2)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("zero_grad", [False, True])
def test_grad_aliasing_another_param_is_refused(rule, zero_grad):
    """grads[1] is params[0]: params[0] would be updated first, then read as the gradient
    of params[1] (and zeroed with zero_grad)."""
    params = [np.linspace(0, 1, 3), np.linspace(1, 2, 3)]
    opt = RULES[rule][0](params, lr=0.1)
    opt.step([np.ones(3), np.ones(3)])
    before = snapshot(opt, params)
    for grads, name in [([np.ones(3), params[0]], r"grads\[1\]"),
                        ([params[1], np.ones(3)], r"grads\[0\]")]:
        with pytest.raises(ValueError, match=name + r" shares memory with the parameters"):
            opt.step(grads, zero_grad=zero_grad)
        assert_unchanged(opt, params, before)


def test_grad_aliasing_part_of_a_flat_buffer_is_refused():
    flat = fastopt.flatten([np.ones(3), np.ones(4)])
    other = [np.ones(2)]
    opt = fastopt.SGD([{"params": flat}, {"params": other}], lr=0.1)
    before = snapshot(opt, flat.params + other)
    with pytest.raises(ValueError, match=r"grads\[2\] shares memory with the parameters"):
        opt.step([np.ones(3), np.ones(4), flat.params[1][1:3]])
    assert_unchanged(opt, flat.params + other, before)


@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rmsprop", "adam"])
def test_grad_aliasing_another_params_state_is_refused(rule):
    params = [np.linspace(0, 1, 3), np.linspace(1, 2, 3)]
    options = {"momentum": 0.9} if rule == "sgd" else {}
    opt = RULES[rule][0](params, lr=0.1, **options)
    opt.step([np.ones(3), np.ones(3)])
    before = snapshot(opt, params)
    name = next(k for k in opt.state[0] if k != "step")
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with optimizer state"):
        opt.step([np.ones(3), opt.state[0][name]])
    assert_unchanged(opt, params, before)


def test_one_gradient_for_two_params_is_allowed_but_not_with_zero_grad():
    """Reading one array twice is fine; zeroing it after the first read is not."""
    params, shared = [np.ones(3), np.ones(3)], np.full(3, 0.5)
    opt = fastopt.SGD(params, lr=0.1)
    opt.step([shared, shared])
    np.testing.assert_array_equal(params[0], params[1])
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with grads\[1\].*zero_grad"):
        opt.step([shared, shared], zero_grad=True)
    assert_unchanged(opt, params, before)
    np.testing.assert_array_equal(shared, 0.5)


@pytest.mark.parametrize("other_shapes, message", [
    ([(3,), (2, 3)], r"state\[1\]\['exp_avg'\] has shape \(2, 3\), params\[1\] has \(2, 2\)"),
    ([(3,)], "1 params"),
    ([(3,), (2, 2), (5,)], "3 params"),
])
@pytest.mark.parametrize("layout", ["flat", "arrays"])
def test_state_dict_from_another_model_is_refused(other_shapes, message, layout):
    shapes = [(3,), (2, 2)]
    params = [np.ones(s) for s in shapes]
    if layout == "flat":
        flat = fastopt.flatten(params)
        params, opt = flat.params, fastopt.Adam(flat, lr=0.1)
        flat.grads[0][...] = 1
        opt.step()
    else:
        opt = fastopt.Adam(params, lr=0.1)
        opt.step([np.ones(s) for s in shapes])
    other = fastopt.Adam([np.ones(s) for s in other_shapes], lr=0.5)
    other.step([np.ones(s) for s in other_shapes])
    before = snapshot(opt, params)
    groups = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(other.state_dict())
    assert_unchanged(opt, params, before)
    assert opt.param_groups[0]["lr"] == 0.1 and [dict(g) for g in opt.param_groups] == groups


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_step_before_any_gradient_on_flatten_is_a_zero_gradient_step(case):
    """flatten() zero-initializes the gradient buffers, so step() before any backward pass
    is a step with g = 0: it counts (step 1, state allocated) and moves the parameters only
    by weight decay (AdamW's decoupled decay, or an L2 term), exactly as the reference with
    zero gradients does; without weight decay they stay bitwise unchanged."""
    rule, options = case
    cls, ref, lr = RULES[rule]
    start = [np.linspace(-1, 1, 6).reshape(2, 3), np.array([0.5, -0.25])]
    flat = fastopt.flatten(start)
    opt = cls(flat, lr=lr, **options)
    opt.step()
    state = opt.state_dict()["state"]
    for i, p in enumerate(start):
        want, _ = ref(p, np.zeros_like(p), {}, lr=lr, **options)
        np.testing.assert_allclose(flat.params[i], want, rtol=1e-15, atol=0)
        assert state[i]["step"] == 1
        if np.array_equal(want, p):   # no decay (ASGD's lambd shrinks p even with g = 0)
            np.testing.assert_array_equal(flat.params[i], p)


def test_hyperparameter_list_edited_in_place_is_revalidated():
    params = [np.ones(3)]
    opt = fastopt.Adam(params, betas=[0.9, 0.999])
    opt.step([np.ones(3)])
    before = params[0].copy()
    opt.param_groups[0]["betas"][0] = 1.5
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(params[0], before)


def test_grad_aliasing_state_loaded_from_a_state_dict_is_refused():
    """The byte spans the aliasing check keeps are those of the state buffers a load
    put in place, not the ones it replaced."""
    params = [np.linspace(0, 1, 3), np.linspace(1, 2, 3)]
    opt = fastopt.Adam(params, lr=0.1)
    opt.step([np.ones(3), np.ones(3)])
    old = opt.state[0]["exp_avg"]
    opt.load_state_dict(opt.state_dict())
    assert not np.shares_memory(opt.state[0]["exp_avg"], old)
    opt.step([np.ones(3), old])                  # the replaced buffer: not ours any more
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with optimizer state"):
        opt.step([np.ones(3), opt.state[0]["exp_avg"]])
    assert_unchanged(opt, params, before)


@pytest.mark.parametrize("zero_grad", [False, True])
def test_aliasing_among_many_arrays_is_found_and_the_collector_restored(zero_grad):
    """Past GC_PAUSE_FROM arrays a step pauses the cyclic collector: the aliasing check
    still finds a gradient over a param in the middle (or, with zero_grad, over another
    gradient), nothing is written, and the collector is as it was, enabled or not."""
    import gc

    from fastopt.optim import base
    count = base.GC_PAUSE_FROM + 44
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(5) for _ in range(count)]
    opt = fastopt.Adam(params, lr=0.1)
    grads = [rng.standard_normal(5) for _ in range(count)]
    opt.step(grads)
    before = snapshot(opt, params)
    bad = list(grads)
    if zero_grad:
        bad[200] = grads[100]
        match = r"grads\[100\] shares memory with grads\[200\]"
    else:
        bad[200] = params[150]
        match = r"grads\[200\] shares memory with the parameters"
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            with pytest.raises(ValueError, match=match):
                opt.step(bad, zero_grad=zero_grad)
            assert gc.isenabled() is enabled
            assert_unchanged(opt, params, before)
            opt.step(grads)
            assert gc.isenabled() is enabled
        finally:
            gc.enable()
        before = snapshot(opt, params)
