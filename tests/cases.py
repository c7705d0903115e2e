"""One list of every rule and option combination, driving the oracle, torch, state_dict
and validation tests (as optax's tests keep one list of all optimizers)."""

import numpy as np

import fastopt
from fastopt import reference
from fastopt.rules import RULES as REGISTRY

#: The test matrix, one entry per rule of the registry (:mod:`fastopt.rules`): the
#: learning rate the tests use, then every option alone and combinations.
MATRIX = {
    "sgd": (0.05, [
        {}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.1}, {"maximize": True},
        {"momentum": 0.5, "nesterov": True, "weight_decay": 0.01, "maximize": True},
    ]),
    "adagrad": (0.05, [
        {}, {"lr_decay": 0.05}, {"initial_accumulator_value": 0.3}, {"eps": 1e-6},
        {"weight_decay": 0.1}, {"maximize": True},
        {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.05,
         "maximize": True},
    ]),
    "rmsprop": (0.01, [
        {}, {"alpha": 0.9}, {"centered": True}, {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True}, {"eps_in_sqrt": True, "eps": 1e-6},
        {"weight_decay": 0.1}, {"maximize": True},
        {"centered": True, "momentum": 0.5, "nesterov": True, "eps_in_sqrt": True,
         "weight_decay": 0.01, "maximize": True},
        {"centered": True, "momentum": 0.9},
    ]),
    "adam": (0.01, [
        {}, {"betas": (0.8, 0.99)}, {"amsgrad": True}, {"weight_decay": 0.1},
        {"maximize": True}, {"eps": 1e-4},
        {"amsgrad": True, "weight_decay": 0.05, "maximize": True},
    ]),
    "adamw": (0.01, [
        {}, {"amsgrad": True}, {"weight_decay": 0.1}, {"weight_decay": 0.0},
        {"maximize": True}, {"amsgrad": True, "weight_decay": 0.05, "maximize": True},
    ]),
    "adadelta": (1.0, [
        {}, {"rho": 0.5}, {"eps": 1e-4}, {"weight_decay": 0.1}, {"maximize": True},
        {"rho": 0.8, "weight_decay": 0.05, "maximize": True},
    ]),
    "adamax": (0.01, [
        {}, {"betas": (0.8, 0.99)}, {"betas": (0.3, 0.9)}, {"eps": 1e-4},
        {"weight_decay": 0.1}, {"maximize": True},
        {"betas": (0.8, 0.99), "weight_decay": 0.05, "maximize": True},
    ]),
    "asgd": (0.05, [
        {}, {"t0": 5}, {"lambd": 0.01, "alpha": 0.5}, {"weight_decay": 0.1},
        {"maximize": True}, {"t0": 3, "lambd": 0.001, "weight_decay": 0.05, "maximize": True},
    ]),
    "lion": (1e-3, [
        {}, {"betas": (0.8, 0.95)}, {"weight_decay": 0.1}, {"maximize": True},
        {"betas": (0.95, 0.98), "weight_decay": 0.5, "maximize": True},
    ]),
    "nadam": (0.01, [
        {}, {"betas": (0.8, 0.99)}, {"momentum_decay": 0.05}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"maximize": True},
        {"eps": 1e-4},
        {"momentum_decay": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True,
         "maximize": True},
    ]),
    "radam": (0.01, [
        {}, {"betas": (0.8, 0.99)}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"maximize": True},
        {"eps": 1e-4},
        {"weight_decay": 0.05, "decoupled_weight_decay": True, "maximize": True},
    ]),
    "lamb": (0.01, [
        {}, {"weight_decay": 0.1}, {"betas": (0.8, 0.99)}, {"maximize": True},
        {"eps": 1e-4},
        {"betas": (0.85, 0.98), "weight_decay": 0.05, "eps": 1e-5, "maximize": True},
    ]),
    "adafactor": (0.01, [
        {}, {"weight_decay": 0.1}, {"d": 2.0}, {"beta2_decay": -0.5},
        {"eps": (1e-30, 1e-3)}, {"maximize": True},
        {"beta2_decay": -0.6, "eps": (1e-20, 1e-2), "d": 1.5, "weight_decay": 0.05,
         "maximize": True},
    ]),
    "rprop": (0.01, [
        {}, {"etas": (0.3, 1.5)}, {"step_sizes": (1e-3, 0.05)}, {"maximize": True},
        {"etas": (0.4, 1.1), "step_sizes": (1e-4, 1.0), "maximize": True},
    ]),
    "yogi": (0.01, [
        {}, {"betas": (0.8, 0.99)}, {"eps": 1e-6}, {"initial_accumulator_value": 0.1},
        {"weight_decay": 0.1}, {"maximize": True},
        {"betas": (0.8, 0.99), "weight_decay": 0.05, "maximize": True},
    ]),
}

#: Buffers each rule's bench case moves per element (``fastopt.bench.cases``: every
#: buffer read once and every buffer written once), counted by hand: fp32 Adam reads p, g,
#: m, v and writes p, m, v: 7. Checked against ``Case.bytes_per_element``.
BUFFERS_MOVED = {"sgd": 5, "adagrad": 5, "rmsprop": 5, "adam": 7, "adamw": 7, "adadelta": 7,
                 "adamax": 7, "asgd": 5, "lion": 5, "nadam": 7, "radam": 7, "rprop": 7,
                 "lamb": 7, "adafactor": 5,   # adafactor, 1-D: p, g, variance
                 "yogi": 7}

#: (optimizer class, reference function, learning rate used in tests), per rule.
RULES = {name: (fastopt.optim.CLASSES[REGISTRY[name].class_name], reference.RULES[name], lr)
         for name, (lr, _) in MATRIX.items()}

#: Every option alone, then combinations, per rule.
OPTIONS = {name: options for name, (_, options) in MATRIX.items()}

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
