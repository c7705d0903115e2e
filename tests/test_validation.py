"""Bad input: the right exception, a message naming the argument, nothing written."""

import numpy as np
import pytest

import fastopt
from cases import RULES

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
    snapshot = snapshot_of(opt, params)
    opt.param_groups[1].update(options)
    with pytest.raises(error, match=name):
        opt.step([np.ones(3), np.ones(2)])
    assert_unchanged(opt, params, snapshot)


def snapshot_of(opt, params):
    return [p.copy() for p in params], opt.state_dict()


def assert_unchanged(opt, params, snapshot):
    old_params, old = snapshot
    for a, b in zip(params, old_params):
        np.testing.assert_array_equal(a, b)
    new = opt.state_dict()
    assert set(new["state"]) == set(old["state"])
    for i in old["state"]:
        assert set(new["state"][i]) == set(old["state"][i])
        for name, value in old["state"][i].items():
            np.testing.assert_array_equal(new["state"][i][name], value)


def readonly(array):
    array.flags.writeable = False
    return array


BAD_PARAMS = [
    ([np.ones(3, dtype=np.int64)], TypeError, r"params\[0\].*float32 or float64"),
    ([np.ones(3, dtype=np.float16)], TypeError, r"params\[0\].*float16"),
    ([np.ones(3, dtype=bool)], TypeError, r"params\[0\]"),
    ([np.ones(3, dtype=np.complex128)], TypeError, r"params\[0\]"),
    ([np.ones(3), [1.0, 2.0]], TypeError, r"params\[1\].*ndarray"),
    ([np.ones((4, 4))[:, 1]], ValueError, r"params\[0\].*C-contiguous"),
    ([readonly(np.ones(3))], ValueError, r"params\[0\].*read-only"),
    ([], ValueError, "empty"),
    (np.ones(3), TypeError, "list"),
]


@pytest.mark.parametrize("params, error, message", BAD_PARAMS,
                         ids=["int", "float16", "bool", "complex", "list", "strided",
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
        ([np.ones(3, np.int32), ok[1]], False, TypeError, r"grads\[0\].*float32 or float64"),
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
    snapshot = snapshot_of(opt, params)
    grads, zero_grad, error, message = bad_grads(params)[case]
    with pytest.raises(error, match=message):
        opt.step(grads, zero_grad=zero_grad)
    assert_unchanged(opt, params, snapshot)


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
