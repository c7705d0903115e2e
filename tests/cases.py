"""One list of every rule and option combination, driving the oracle, torch, state_dict
and validation tests (as optax's tests keep one list of all optimizers)."""

import numpy as np

import fastopt
from fastopt import reference

#: (rule name, optimizer class, reference function, learning rate used in tests)
RULES = {
    "sgd": (fastopt.SGD, reference.sgd, 0.05),
    "adagrad": (fastopt.Adagrad, reference.adagrad, 0.05),
    "rmsprop": (fastopt.RMSprop, reference.rmsprop, 0.01),
    "adam": (fastopt.Adam, reference.adam, 0.01),
    "adamw": (fastopt.AdamW, reference.adamw, 0.01),
}

#: Every option alone, then combinations, per rule.
OPTIONS = {
    "sgd": [
        {}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.1}, {"maximize": True},
        {"momentum": 0.5, "nesterov": True, "weight_decay": 0.01, "maximize": True},
    ],
    "adagrad": [
        {}, {"lr_decay": 0.05}, {"initial_accumulator_value": 0.3}, {"eps": 1e-6},
        {"weight_decay": 0.1}, {"maximize": True},
        {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.05,
         "maximize": True},
    ],
    "rmsprop": [
        {}, {"alpha": 0.9}, {"centered": True}, {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True}, {"eps_in_sqrt": True, "eps": 1e-6},
        {"weight_decay": 0.1}, {"maximize": True},
        {"centered": True, "momentum": 0.5, "nesterov": True, "eps_in_sqrt": True,
         "weight_decay": 0.01, "maximize": True},
        {"centered": True, "momentum": 0.9},
    ],
    "adam": [
        {}, {"betas": (0.8, 0.99)}, {"amsgrad": True}, {"weight_decay": 0.1},
        {"maximize": True}, {"eps": 1e-4},
        {"amsgrad": True, "weight_decay": 0.05, "maximize": True},
    ],
    "adamw": [
        {}, {"amsgrad": True}, {"weight_decay": 0.1}, {"weight_decay": 0.0},
        {"maximize": True}, {"amsgrad": True, "weight_decay": 0.05, "maximize": True},
    ],
}

CASES = [(rule, options) for rule, combos in OPTIONS.items() for options in combos]


def case_id(case):
    rule, options = case
    return rule + "".join(f"-{k}={v}" for k, v in options.items())


def snapshot(opt, params):
    """Copies of ``params`` and ``opt.state_dict()`` (itself a copy), to compare later."""
    return [p.copy() for p in params], opt.state_dict()


def assert_unchanged(opt, params, before, groups=False):
    """Params and state bitwise as in ``before`` (a :func:`snapshot`); with ``groups``,
    the param groups' hyperparameters too."""
    old_params, old = before
    for a, b in zip(params, old_params):
        np.testing.assert_array_equal(a, b)
    new = opt.state_dict()
    if groups:
        assert new["param_groups"] == old["param_groups"]
    assert set(new["state"]) == set(old["state"])
    for i, entry in old["state"].items():
        assert set(new["state"][i]) == set(entry)
        for name, value in entry.items():
            np.testing.assert_array_equal(new["state"][i][name], value)
