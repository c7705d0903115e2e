"""Kernels bound by name (``fastopt.kernels.binding``): the plan read from each body's
signature, and the refusals of a misspelt, missing or extra name, which reach the user
before any kernel runs (a step refused that way changes nothing)."""

import numpy as np
import pytest

import fastopt
from cases import assert_unchanged, snapshot
from fastopt import kernels
from fastopt.kernels.binding import COMMON_FLAGS
from fastopt.kernels.config import Kernel, kernel
from fastopt.rules import RULES


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_names_exactly_its_kernels_scalars_buffers_and_options(name):
    """The rule's scalars (plus grad_factor, and noise_key for a rule with low-precision
    state), state names and options are the kernel's signature, name for name: nothing a
    rule derives is dropped or left over."""
    rule = RULES[name]
    binding = rule.kernel.binding
    group = fastopt.validation.as_floats(dict(rule.defaults))
    scalars = set(rule.scalars(group, 3, frozenset())) | {"grad_factor"}
    if rule.low_precision_state:
        scalars.add("noise_key")
        assert "state_dtype" in rule.defaults
    assert scalars == set(binding.scalars)
    assert set(rule.state_names(group)) <= set(binding.buffers)
    assert set(rule.options(group)) == set(binding.options)
    assert tuple(rule.kernel.flags[-2:]) == COMMON_FLAGS


def test_adam_binding_plan():
    binding = kernels.adam.binding
    assert binding.buffers == ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    assert binding.scalars[-2:] == ("grad_factor", "noise_key")
    assert "step_size" in binding.scalars
    assert binding.options == ("amsgrad",)


def test_missing_unknown_or_extra_names_are_type_errors():
    binding = kernels.sgd.binding
    named = dict(lr=0.1, weight_decay=0.0, grad_factor=1.0, momentum=0.0, buffer_decay=0.0,
                 buffer_gain=1.0, noise_key=0.0)
    assert len(binding.ordered_scalars(named)) == len(binding.scalars)
    with pytest.raises(TypeError, match=r"missing \['lr'\], unknown \['learning_rate'\]"):
        binding.ordered_scalars({**{k: v for k, v in named.items() if k != "lr"},
                                 "learning_rate": 0.1})
    with pytest.raises(TypeError, match=r"missing \['lr'\], unknown \[\]"):
        binding.ordered_scalars({k: v for k, v in named.items() if k != "lr"})
    with pytest.raises(TypeError, match=r"unknown \['beta'\]"):
        binding.ordered_scalars({**named, "beta": 0.9})
    param = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="no buffer.*exp_avg"):
        binding.arrays(param, param.copy(), {"exp_avg": param.copy()})
    with pytest.raises(TypeError, match=r"option names.*missing \['nesterov'\]"):
        binding.variant({"use_momentum": True})
    with pytest.raises(TypeError, match=r"unknown \['amsgrad'\]"):
        binding.variant({"use_momentum": True, "nesterov": False, "amsgrad": True})


def test_unused_buffers_get_slots_of_their_own():
    """Each missing buffer is an empty array of its own (the vector loop's aliasing check
    fails on two arguments at one address), and the copy slot is uint16."""
    param = np.zeros(8)
    arrays = kernels.rmsprop.binding.arrays(param, param.copy(), {"square_avg": param.copy()})
    empties = [a for a in arrays if a.size == 0]
    assert len(empties) == 3
    assert len({a.__array_interface__["data"][0] for a in empties}) == 3
    assert arrays[-1].dtype == np.uint16


def test_a_kernel_whose_signature_breaks_the_contract_is_refused():
    def no_copy(param, grad, exp_avg, lr, grad_factor):
        pass

    def no_factor(param, grad, param_copy, lr):
        pass

    def no_common_flags(param, grad, param_copy, grad_factor):
        pass

    with pytest.raises(TypeError, match="param_copy"):
        kernel(no_copy, flags=("zero_grad", "write_copy")).binding
    with pytest.raises(TypeError, match="grad_factor"):
        kernel(no_factor, flags=("zero_grad", "write_copy")).binding
    with pytest.raises(TypeError, match="zero_grad"):
        Kernel(no_common_flags, flags=("write_copy",)).binding


def test_a_rule_with_a_misspelt_scalar_is_refused_and_the_step_changes_nothing(monkeypatch):
    """A rule whose scalars name something the kernel does not take: the step raises
    ``TypeError`` before any kernel runs; params, state and step counts stay bitwise."""
    params = [np.linspace(-1, 1, 6).astype(np.float32)]
    opt = fastopt.SGD(params, lr=0.1, momentum=0.9)
    opt.step([np.ones(6, np.float32)])
    before = snapshot(opt, params)
    rule = RULES["sgd"]
    scalars = rule.scalars
    monkeypatch.setattr(rule, "scalars", lambda group, t, fresh: {
        ("learning_rate" if k == "lr" else k): v for k, v in scalars(group, t, fresh).items()})
    with pytest.raises(TypeError, match="learning_rate"):
        opt.step([np.ones(6, np.float32)])
    assert_unchanged(opt, params, before)
