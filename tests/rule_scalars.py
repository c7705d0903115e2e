"""The rules' host-side scalars (:mod:`fastopt.rules`) for tests that call kernels by name:
each takes a partial group (the rule's defaults fill the rest, numbers as floats)."""

from functools import partial

from fastopt.rules import RULES
from fastopt.validation import as_floats


def full(rule, group):
    """``group`` completed with ``rule``'s defaults, every number a Python float."""
    return as_floats({**RULES[rule].defaults, **group})


def scalars(rule, group, t, fresh=frozenset()):
    return RULES[rule].scalars(full(rule, group), t, frozenset(fresh))


def scalar_state(rule, group, t):
    return RULES[rule].scalar_state(full(rule, group), t)


def initial(rule, group):
    """The value each state buffer starts at."""
    spec, group = RULES[rule], full(rule, group)
    return {name: spec.initial_state(name, group) for name in spec.state_names(group)}


SCALARS = {name: partial(scalars, name) for name in RULES}
