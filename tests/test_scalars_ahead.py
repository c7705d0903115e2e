"""``ScalarsAhead``: a rule's kernel scalars computed ahead for the coming steps are, step by
step, exactly what :meth:`Rule.values` gives (values and types), through group changes;
an error of a later step is raised at that step, not before."""

import numpy as np
import pytest

from cases import MATRIX
from fastopt.kernels.halves import noise_key
from fastopt.rules import RULES
from fastopt.rules.base import ScalarsAhead


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_values_ahead_are_the_rule_values_of_each_step(name, dtype):
    rule = RULES[name]
    lr, combos = MATRIX[name]
    groups = [{**rule.defaults, **combo, "lr": lr} for combo in combos]
    ahead = ScalarsAhead()
    dtype = np.dtype(dtype)
    for t in range(1, 120):
        group = groups[(t // 37) % len(groups)]     # a new group now and then
        if t % 53 == 0:
            group = dict(group)                      # an equal group, another object
        factor = 1.0 if t < 90 else 0.5               # a new loss scale
        got = ahead.values(rule, group, t, factor, dtype)
        want = rule.values(group, t, frozenset(), factor, dtype)
        assert got == want and list(map(type, got)) == list(map(type, want)), t


def test_the_noise_key_of_each_step_with_low_precision_state():
    rule = RULES["adam"]
    group = {**rule.defaults, "lr": 1e-3, "state_dtype": "bfloat16"}
    ahead = ScalarsAhead()
    for t in range(1, 70):
        got = ahead.values(rule, group, t, 1.0, np.dtype(np.float32), stream=3)
        assert got == rule.values(group, t, frozenset(), 1.0, np.dtype(np.float32),
                                  noise_key=noise_key(t, 3)), t


class _FailsAt(type(RULES["sgd"])):
    """SGD whose scalars raise at one step (not registered: no ``name`` of its own)."""

    step_dependent = True   # (its scalars read the step)

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = bad, []

    def scalars(self, group, t, fresh):
        self.calls.append(t)
        if t == self.bad:
            raise ValueError(f"Invalid lr at step {t}")
        return super().scalars(group, t, fresh)


def test_a_later_step_error_is_raised_at_that_step_only():
    rule, ahead, sgd = _FailsAt(6), ScalarsAhead(), RULES["sgd"]
    group = {**sgd.defaults, "lr": 0.1}
    dtype = np.dtype(np.float32)

    def want(t):
        return sgd.values(group, t, frozenset(), 1.0, dtype)
    assert ahead.values(rule, group, 1, 1.0, dtype) == want(1)
    assert ahead.values(rule, group, 2, 1.0, dtype) == want(2)   # computes 2..5, stops at 6
    assert rule.calls == [1, 2, 3, 4, 5, 6]
    for t in (3, 4, 5):
        assert ahead.values(rule, group, t, 1.0, dtype) == want(t)
    assert rule.calls == [1, 2, 3, 4, 5, 6]                       # from the ones ahead
    with pytest.raises(ValueError, match="step 6"):
        ahead.values(rule, group, 6, 1.0, dtype)


def test_cast_rows_casts_as_cast_scalars_and_stops_at_a_refused_row():
    from fastopt.validation import cast_rows, cast_scalars
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    rows = [[0.1, 2.5e-8, float("inf")], [1e-3, float("nan"), 3.3e38],
            [1e39, 1.0, 1.0], [1.0, 2.0, 3.0]]
    got = cast_rows(f32, rows)
    assert len(got) == 2                                  # row 2 overflows float32
    for row, cast in zip(rows, got):
        want = cast_scalars(f32, row, [("x", "x")] * 3)
        assert [v.tobytes() for v in cast] == [v.tobytes() for v in want]
        assert all(type(v) is np.float32 for v in cast)
    with pytest.raises(ValueError, match="Invalid x"):
        cast_scalars(f32, rows[2], [("x", "x")] * 3)     # where that step raises
    assert cast_rows(f64, rows) == [tuple(map(float, r)) for r in rows]
    assert cast_rows(f32, [[10 ** 400, 1.0]]) == []       # a huge int: row by row
    assert cast_rows(f32, []) == []


def test_values_ahead_stop_before_a_step_whose_scalars_overflow():
    """Adam with lr = 1e38: lr / (1 - beta1**t) overflows float32 at steps 1-3 only."""
    rule = RULES["adam"]
    group = {**rule.defaults, "lr": 1e38}
    dtype = np.dtype(np.float32)
    assert rule.values_ahead(group, 1, 10, 1.0, dtype) == []
    ahead = rule.values_ahead(group, 4, 10, 1.0, dtype)
    assert ahead == [rule.values(group, t, frozenset(), 1.0, dtype) for t in range(4, 14)]
    with pytest.raises(ValueError, match="Invalid lr"):
        ScalarsAhead().values(rule, group, 3, 1.0, dtype)


@pytest.mark.parametrize("name", sorted(n for n in MATRIX if not RULES[n].step_dependent))
def test_a_rule_that_says_its_scalars_ignore_the_step_computes_the_same_at_every_step(name):
    """``Rule.step_dependent = False`` lets ScalarsAhead compute a row once; the claim
    holds for every option combination of the test matrix, at early and late steps."""
    rule = RULES[name]
    lr, combos = MATRIX[name]
    for combo in combos:
        group = {**rule.defaults, **combo, "lr": lr}
        first = rule.scalars(group, 1, frozenset())
        for t in (2, 3, 10, 1000, 10 ** 6):
            assert rule.scalars(group, t, frozenset()) == first, (combo, t)


def test_step_independent_rules_compute_one_row_and_step_dependent_ones_each_step():
    assert {n for n in MATRIX if not RULES[n].step_dependent} == {
        "sgd", "rmsprop", "lion", "rprop", "adadelta"}

    class Counting(type(RULES["sgd"])):
        calls = 0

        def scalars(self, group, t, fresh):
            Counting.calls += 1
            return super().scalars(group, t, fresh)

    rule, ahead = Counting(), ScalarsAhead()
    group = {**rule.defaults, "lr": 0.1, "momentum": 0.9}
    dtype = np.dtype(np.float32)
    rows = [ahead.values(rule, group, t, 1.0, dtype) for t in range(2, 300)]
    assert Counting.calls == 1 and all(row is rows[0] for row in rows)
    assert rows[0] == RULES["sgd"].values(group, 299, frozenset(), 1.0, dtype)
    ahead.values(rule, dict(group), 300, 1.0, dtype)   # another group object: computed
    assert Counting.calls == 2
    # with bfloat16 state the noise key moves each step: one row per step
    adam, ahead = RULES["adam"], ScalarsAhead()
    group = {**adam.defaults, "lr": 1e-3, "state_dtype": "bfloat16"}
    keys = {ahead.values(adam, group, t, 1.0, dtype, stream=1)[-1] for t in range(2, 40)}
    assert len(keys) == 38


def test_nadam_mu_product_is_the_fresh_product_in_any_order_and_costs_o1_a_step(monkeypatch):
    """NAdam's ``mu_1*...*mu_t`` is memoised over a window of recent steps: in any order
    of ``t`` (steps, steps computed ahead, a load's earlier step) bitwise the product
    from step 1; in a loop each step multiplies a bounded number of factors (the memo
    once restarted from step 1 whenever the steps ahead had moved past the step's own
    scalar state: 45 us a step at 1e3 elements)."""
    import fastopt
    from fastopt.rules import nadam

    def fresh(t):
        product = 1.0
        for k in range(1, t + 1):
            product = product * nadam._mu(0.9, 0.004, k)
        return product
    rng = np.random.default_rng(0)
    for t in [*range(0, 700), *rng.integers(0, 700, 300), *range(650, 900)]:
        assert nadam.mu_product(0.9, 0.004, int(t)) == fresh(int(t)), t

    calls = []
    real = nadam._mu
    monkeypatch.setattr(nadam, "_mu", lambda *args: calls.append(args) or real(*args))
    flat = fastopt.flatten([np.ones(100, np.float32)])
    opt = fastopt.NAdam(flat, lr=1e-3, momentum_decay=0.0037)   # a key of its own
    flat.grads[0][...] = 0.1
    for _ in range(1000):
        opt.step()
    calls.clear()
    for _ in range(500):
        opt.step()
    assert len(calls) < 500 * 4, len(calls)
