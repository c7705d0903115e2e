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

    def step_scalars(self, group, t):
        return None   # (its scalars read the step)

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


def test_cast_columns_casts_as_cast_scalars_and_stops_at_a_refused_row():
    from fastopt.validation import cast_columns, cast_scalars
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    rows = [[0.1, 2.5e-8, float("inf"), 7.0], [1e-3, float("nan"), 3.3e38, 7.0],
            [1e39, 1.0, 1.0, 7.0], [1.0, 2.0, 3.0, 7.0]]
    columns = [list(column) for column in zip(*rows)]
    got = cast_columns(f32, columns, 4)
    assert len(got) == 2                                  # row 2 overflows float32
    for row, cast in zip(rows, got):
        want = cast_scalars(f32, row, [("x", "x")] * 4)
        assert [v.tobytes() for v in cast] == [v.tobytes() for v in want]
        assert all(type(v) is np.float32 for v in cast)
    assert got[0][3] is got[1][3]                         # a constant column: one scalar
    with pytest.raises(ValueError, match="Invalid x"):
        cast_scalars(f32, rows[2], [("x", "x")] * 4)     # where that step raises
    assert cast_columns(f64, columns, 4) == [tuple(map(float, r)) for r in rows]
    # a value already cast (the same each step) is repeated; the shortest list ends it
    cast = np.float32(0.5)
    assert cast_columns(f32, [[1.0, 2.0, 3.0], cast, [4.0, 5.0]], 9) == [
        (np.float32(1.0), cast, np.float32(4.0)), (np.float32(2.0), cast, np.float32(5.0))]
    assert cast_columns(f32, [[10 ** 400, 1.0]], 2) == []    # a huge int: step by step
    assert cast_columns(f64, [[10 ** 400, 1.0]], 2) == []
    assert cast_columns(f32, [[1e39, 1.0], [1.0, 1.0]], 2) == []   # the first step refused
    assert cast_columns(f32, [cast, cast], 3) == [(cast, cast)] * 3   # nothing moves
    assert cast_columns(f32, [], 0) == []


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


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_step_scalars_are_the_scalars_that_move_with_the_step(name):
    """``Rule.step_scalars`` (where a rule says): every other scalar is the same at every
    step, for every option combination of the test matrix, at early and late steps."""
    rule = RULES[name]
    lr, combos = MATRIX[name]
    for combo in combos:
        group = {**rule.defaults, **combo, "lr": lr}
        if rule.step_scalars(group, 1) is None:
            continue
        first = rule.scalars(group, 1, frozenset())
        for t in (1, 2, 3, 10, 1000, 10 ** 6):
            moving = rule.step_scalars(group, t)
            assert set(moving) <= set(first)
            assert rule.scalars(group, t, frozenset()) == {**first, **moving}, (combo, t)


def test_rules_say_which_scalars_move():
    said = {n: RULES[n].step_scalars({**RULES[n].defaults, "lr": 0.1}, 5) for n in MATRIX}
    assert {n for n, moving in said.items() if moving == {}} == {
        "sgd", "rmsprop", "lion", "rprop", "adadelta"}
    assert set(said["adam"]) == set(said["yogi"]) == {"step_size",
                                                      "inv_sqrt_bias_correction2"}
    assert {n for n, moving in said.items() if moving is None} == {"adafactor"}


def test_only_the_moving_scalars_are_computed_ahead():
    calls = {"scalars": 0, "step_scalars": 0}

    class Counting(type(RULES["adam"])):
        def scalars(self, group, t, fresh):
            calls["scalars"] += 1
            return super().scalars(group, t, fresh)

        def step_scalars(self, group, t):
            calls["step_scalars"] += 1
            return super().step_scalars(group, t)

    rule, ahead = Counting(), ScalarsAhead()
    group = {**rule.defaults, "lr": 1e-3}
    dtype = np.dtype(np.float32)
    rows = [ahead.values(rule, group, t, 1.0, dtype) for t in range(2, 60)]
    assert rows == [RULES["adam"].values(group, t, frozenset(), 1.0, dtype)
                    for t in range(2, 60)]
    assert calls["scalars"] == 2 and calls["step_scalars"] < 70   # (steps 2 and 3)
    # SGD: nothing moves: every row the same objects
    sgd, ahead = RULES["sgd"], ScalarsAhead()
    group = {**sgd.defaults, "lr": 0.1, "momentum": 0.9}
    rows = [ahead.values(sgd, group, t, 1.0, dtype) for t in range(2, 60)]
    assert all(a is b for row in rows[1:] for a, b in zip(row, rows[1]))   # (from step 3)
    # with bfloat16 state the noise key moves each step
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
