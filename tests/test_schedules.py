"""Learning-rate schedules: against torch.optim.lr_scheduler step by step, hand-checked
closed forms, shape (monotonicity, holding after the end), validation."""

import dataclasses
import math

import numpy as np
import pytest

from fastopt import schedules
from fastopt.schedules import (constant, cosine, exponential, one_cycle, step_decay,
                               warmup_linear_decay)

# ---------------------------------------------------------------------------------------
# Against torch. Each case: our schedule, a function building torch's scheduler on an
# optimizer, and how many steps to compare (cosine: up to total_steps only, since torch's
# CosineAnnealingLR climbs back up after it; one_cycle: the total_steps steps torch defines).


def _cases():
    from torch.optim import lr_scheduler as L

    def warmup_then(sched, W, f):
        return lambda o: L.SequentialLR(o, [L.LinearLR(o, f, 1.0, total_iters=W), sched(o)],
                                        milestones=[W])

    cases = [
        (constant(0.1), lambda o: L.ConstantLR(o, factor=1.0, total_iters=0), 20),
        (step_decay(0.1, 10), lambda o: L.StepLR(o, 10), 60),
        (step_decay(1.0, 1, 0.9), lambda o: L.StepLR(o, 1, 0.9), 200),
        (step_decay(0.01, 7, 0.5), lambda o: L.StepLR(o, 7, 0.5), 50),
        (exponential(0.1, 0.99), lambda o: L.ExponentialLR(o, 0.99), 500),
        (exponential(0.01, 1.01), lambda o: L.ExponentialLR(o, 1.01), 300),
        (exponential(1.0, 0.5), lambda o: L.ExponentialLR(o, 0.5), 100),
    ]
    for lr, T, W, min_lr, f in [(0.1, 100, 0, 0.0, 1 / 3), (1.0, 2000, 0, 1e-3, 1 / 3),
                                (0.1, 1, 0, 0.0, 1 / 3), (0.1, 100, 10, 0.0, 1 / 3),
                                (1.0, 1000, 7, 1e-3, 0.01), (0.3, 51, 50, 0.0, 0.5),
                                (0.1, 2, 1, 0.0, 1.0)]:
        anneal = (lambda T, W, min_lr: lambda o: L.CosineAnnealingLR(o, T_max=T - W,
                                                                     eta_min=min_lr))(T, W, min_lr)
        cases.append((cosine(lr, T, warmup_steps=W, min_lr=min_lr, warmup_start_factor=f),
                      anneal if W == 0 else warmup_then(anneal, W, f), T + 1))
    for lr, W, T, e, f in [(0.1, 0, 100, 0.0, 1 / 3), (0.1, 10, 100, 0.0, 1 / 3),
                           (1.0, 7, 1000, 0.1, 0.01), (0.3, 50, 51, 0.5, 0.5)]:
        decay = (lambda T, W, e: lambda o: L.LinearLR(o, 1.0, e, total_iters=T - W))(T, W, e)
        # torch's LinearLR holds its end value, as ours does: compare 20 steps past the end
        cases.append((warmup_linear_decay(lr, W, T, end_factor=e, warmup_start_factor=f),
                      decay if W == 0 else warmup_then(decay, W, f), T + 20))
    for kw in [dict(max_lr=0.1, total_steps=100),
               dict(max_lr=1.0, total_steps=1000, pct_start=0.25, anneal_strategy="linear"),
               dict(max_lr=0.1, total_steps=100, three_phase=True),
               dict(max_lr=0.1, total_steps=100, pct_start=0.45, anneal_strategy="linear",
                    div_factor=10.0, final_div_factor=100.0, three_phase=True),
               dict(max_lr=0.1, total_steps=100, pct_start=0.7, three_phase=True),
               dict(max_lr=0.1, total_steps=7, pct_start=0.5),
               dict(max_lr=0.1, total_steps=1)]:
        cases.append((one_cycle(**kw),
                      (lambda kw: lambda o: L.OneCycleLR(o, cycle_momentum=False, **kw))(kw),
                      kw["total_steps"]))
    return cases


def torch_lrs(make_scheduler, lr, n):
    """The lr torch uses at steps 0..n-1: one dummy parameter, read before each step."""
    import torch

    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()   # before scheduler.step(): no "step order" warning (grad is None:
        scheduler.step()   # the step changes nothing)
    return lrs


def test_matches_torch():
    pytest.importorskip("torch")
    for schedule, make_scheduler, n in _cases():
        lr = schedule.max_lr if isinstance(schedule, one_cycle) else schedule.lr
        ours = [schedule(t) for t in range(n)]
        theirs = torch_lrs(make_scheduler, lr, n)
        # rtol 1e-12: our closed forms against torch's chainable (recursive) ones, which
        # multiply the previous lr by a ratio each step and so accumulate rounding. The
        # worst measured is cosine's ratio (1 + cos(pi t/T)) / (1 + cos(pi (t-1)/T)) near
        # t = T, where 1 + cos cancels: 1.6e-13 at T = 2000 (3.9e-13 at T = 20000).
        # ExponentialLR / StepLR / LinearLR stay below 2e-14; OneCycleLR is a closed form
        # computed the same way, and agrees bitwise.
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0, err_msg=repr(schedule))


# ---------------------------------------------------------------------------------------
# Closed forms at key points, by hand.

def test_constant():
    s = constant(0.1)
    assert [s(0), s(1), s(10**9)] == [0.1, 0.1, 0.1]


def test_step_decay():
    s = step_decay(1.0, step_size=3, gamma=0.5)
    assert [s(t) for t in range(8)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert step_decay(0.2, 10)(25) == pytest.approx(0.2 * 0.01, rel=1e-15)  # default 0.1


def test_exponential():
    s = exponential(2.0, 0.5)
    assert [s(0), s(1), s(2), s(10)] == [2.0, 1.0, 0.5, 2.0 / 1024]


def test_cosine_key_points():
    s = cosine(1.0, total_steps=110, warmup_steps=10, min_lr=0.1, warmup_start_factor=0.2)
    assert s(0) == pytest.approx(0.2, rel=1e-15)                 # start: f * lr
    assert s(5) == pytest.approx(0.6, rel=1e-15)                 # halfway through warmup
    assert s(10) == 1.0                                          # end of warmup: the peak
    assert s(60) == pytest.approx(0.55, rel=1e-15)               # midpoint: (lr + min_lr)/2
    assert s(35) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2, rel=1e-15)
    assert s(110) == 0.1 and s(10**6) == 0.1                     # end, and held after it
    plain = cosine(1.0, total_steps=4)                           # no warmup: starts at lr
    assert [plain(t) for t in range(5)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0], abs=1e-15)


def test_warmup_linear_decay_key_points():
    s = warmup_linear_decay(1.0, warmup_steps=4, total_steps=12, end_factor=0.2,
                            warmup_start_factor=0.0)
    assert [s(t) for t in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], rel=1e-15)
    assert s(8) == pytest.approx(0.6, rel=1e-15)                 # midpoint of the decay
    assert s(12) == pytest.approx(0.2, rel=1e-15)                # end: end_factor * lr
    assert s(13) == s(10**6) == s(12)                            # held after it
    s = warmup_linear_decay(0.3, warmup_steps=0, total_steps=3)  # default end_factor 0
    assert [s(t) for t in range(4)] == pytest.approx([0.3, 0.2, 0.1, 0.0], abs=1e-16)


def test_warmup_equal_to_total():
    """warmup_steps == total_steps: the warmup, then the final rate (torch: division by 0)."""
    s = cosine(1.0, total_steps=4, warmup_steps=4, min_lr=0.1, warmup_start_factor=0.0)
    assert [s(t) for t in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.1, 0.1])
    s = warmup_linear_decay(1.0, 4, 4, end_factor=0.5, warmup_start_factor=0.0)
    assert [s(t) for t in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.5, 0.5])


def test_one_cycle_key_points():
    s = one_cycle(1.0, total_steps=100, pct_start=0.25, div_factor=10.0, final_div_factor=5.0)
    # phases: steps [0, 24] 0.1 -> 1.0 (cos), then [24, 99] 1.0 -> 0.02
    assert s(0) == pytest.approx(0.1, rel=1e-15)                 # max_lr / div_factor
    assert s(12) == pytest.approx(0.55, rel=1e-15)               # warmup midpoint
    assert s(24) == 1.0                                          # the peak
    assert s(99) == pytest.approx(0.02, rel=1e-15)               # / final_div_factor
    assert s(100) == s(10**6) == s(99)                           # held after the end
    lin = one_cycle(1.0, total_steps=11, pct_start=0.5, anneal_strategy="linear",
                    div_factor=10.0, final_div_factor=5.0)
    # phases: steps [0, 4.5] 0.1 -> 1.0, then [4.5, 10] 1.0 -> 0.02
    assert lin(0) == pytest.approx(0.1, rel=1e-15)
    assert lin(4) == pytest.approx(0.1 + 0.9 * 4 / 4.5, rel=1e-15)
    assert lin(10) == pytest.approx(0.02, rel=1e-15)
    cos = one_cycle(1.0, total_steps=21, pct_start=0.5, div_factor=10.0,
                    final_div_factor=5.0)  # warmup over [0, 9.5]: the peak lies between steps
    assert cos(0) == pytest.approx(0.1, rel=1e-15)
    assert cos(20) == pytest.approx(0.02, rel=1e-15)
    three = one_cycle(1.0, total_steps=21, pct_start=0.25, anneal_strategy="linear",
                      div_factor=10.0, final_div_factor=5.0, three_phase=True)
    # phases: [0, 4.25] 0.1 -> 1, [4.25, 8.5] 1 -> 0.1, [8.5, 20] 0.1 -> 0.02
    assert three(4) == pytest.approx(0.1 + 0.9 * 4 / 4.25, rel=1e-15)
    assert three(8) == pytest.approx(1.0 - 0.9 * 3.75 / 4.25, rel=1e-15)
    assert three(20) == pytest.approx(0.02, rel=1e-15)
    assert one_cycle(0.5, total_steps=1)(0) == pytest.approx(0.5 / 25 / 1e4, rel=1e-15)


def test_one_cycle_zero_length_phase():
    """pct_start * total_steps == 1: the warmup ends at step 0, so step 0 is the peak
    (torch divides by zero here)."""
    assert one_cycle(1.0, total_steps=10, pct_start=0.1)(0) == 1.0


# ---------------------------------------------------------------------------------------
# Shape.

def _diffs(s, steps):
    return np.diff([s(t) for t in steps])


def test_monotone():
    assert (_diffs(step_decay(1.0, 3, 0.5), range(50)) <= 0).all()
    assert (_diffs(exponential(1.0, 0.9), range(50)) < 0).all()
    assert (_diffs(exponential(1.0, 1.1), range(50)) > 0).all()
    for s in (cosine(1.0, 100, warmup_steps=20, min_lr=0.01),
              warmup_linear_decay(1.0, 20, 100, end_factor=0.01)):
        assert (_diffs(s, range(21)) > 0).all()          # warmup rises to the peak at 20
        assert (_diffs(s, range(20, 101)) < 0).all()     # then falls to the end at 100
        assert (_diffs(s, range(100, 150)) == 0).all()   # and holds
    for s in (one_cycle(1.0, 100), one_cycle(1.0, 100, anneal_strategy="linear")):
        peak = int(np.argmax([s(t) for t in range(100)]))
        assert peak in (29, 30)
        assert (_diffs(s, range(peak + 1)) > 0).all()
        assert (_diffs(s, range(peak, 100)) < 0).all()
    s = one_cycle(1.0, 100, three_phase=True)
    values = [s(t) for t in range(100)]
    assert max(values) == pytest.approx(1.0, rel=1e-3)
    assert values[-1] == min(values) == pytest.approx(1.0 / 25 / 1e4)


def test_plain_floats_numpy_ints_repr_frozen():
    s = cosine(np.float32(0.5), np.int64(100), warmup_steps=np.int32(10))
    assert type(s.lr) is float and type(s.total_steps) is int and type(s.warmup_steps) is int
    assert type(s(np.int64(3))) is float and s(np.int64(3)) == s(3)
    assert type(constant(1)(0)) is float
    assert repr(s) == ("cosine(lr=0.5, total_steps=100, warmup_steps=10, min_lr=0.0, "
                       "warmup_start_factor=0.3333333333333333)")
    assert repr(one_cycle(0.1, 10)) == (
        "one_cycle(max_lr=0.1, total_steps=10, pct_start=0.3, anneal_strategy='cos', "
        "div_factor=25.0, final_div_factor=10000.0, three_phase=False)")
    assert repr(step_decay(0.1, 5)) == "step_decay(lr=0.1, step_size=5, gamma=0.1)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0
    assert cosine(0.5, 100, 10) == s and hash(cosine(0.5, 100, 10)) == hash(s)
    assert set(schedules.__all__) == {"constant", "step_decay", "exponential", "cosine",
                                      "warmup_linear_decay", "one_cycle"}


# ---------------------------------------------------------------------------------------
# Validation: at construction, naming the argument; and of the step.

NAN = float("nan")


@pytest.mark.parametrize("build, error, name", [
    (lambda: constant(-0.1), ValueError, "lr"),
    (lambda: constant(NAN), ValueError, "lr"),
    (lambda: constant(math.inf), ValueError, "lr"),
    (lambda: constant("0.1"), TypeError, "lr"),
    (lambda: constant(True), TypeError, "lr"),
    (lambda: step_decay(0.1, 0), ValueError, "step_size"),
    (lambda: step_decay(0.1, 2.0), TypeError, "step_size"),
    (lambda: step_decay(0.1, 2, 0.0), ValueError, "gamma"),
    (lambda: step_decay(0.1, 2, -0.5), ValueError, "gamma"),
    (lambda: step_decay(-1.0, 2), ValueError, "lr"),
    (lambda: exponential(0.1, 0.0), ValueError, "gamma"),
    (lambda: exponential(0.1, NAN), ValueError, "gamma"),
    (lambda: exponential(NAN, 0.9), ValueError, "lr"),
    (lambda: cosine(-0.1, 10), ValueError, "lr"),
    (lambda: cosine(0.1, 0), ValueError, "total_steps"),
    (lambda: cosine(0.1, 10.0), TypeError, "total_steps"),
    (lambda: cosine(0.1, 10, warmup_steps=11), ValueError, "warmup_steps"),
    (lambda: cosine(0.1, 10, warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: cosine(0.1, 10, min_lr=-0.1), ValueError, "min_lr"),
    (lambda: cosine(0.1, 10, min_lr=0.2), ValueError, "min_lr"),
    (lambda: cosine(0.1, 10, min_lr=NAN), ValueError, "min_lr"),
    (lambda: cosine(0.1, 10, 2, warmup_start_factor=1.5), ValueError, "warmup_start_factor"),
    (lambda: cosine(0.1, 10, 2, warmup_start_factor=-0.1), ValueError, "warmup_start_factor"),
    (lambda: warmup_linear_decay(0.1, 11, 10), ValueError, "warmup_steps"),
    (lambda: warmup_linear_decay(0.1, 0, 0), ValueError, "total_steps"),
    (lambda: warmup_linear_decay(-0.1, 1, 10), ValueError, "lr"),
    (lambda: warmup_linear_decay(0.1, 1, 10, end_factor=1.5), ValueError, "end_factor"),
    (lambda: warmup_linear_decay(0.1, 1, 10, end_factor=NAN), ValueError, "end_factor"),
    (lambda: warmup_linear_decay(0.1, 1, 10, warmup_start_factor=NAN), ValueError,
     "warmup_start_factor"),
    (lambda: one_cycle(-0.1, 10), ValueError, "max_lr"),
    (lambda: one_cycle(NAN, 10), ValueError, "max_lr"),
    (lambda: one_cycle(0.1, 0), ValueError, "total_steps"),
    (lambda: one_cycle(0.1, None), TypeError, "total_steps"),
    (lambda: one_cycle(0.1, 10, pct_start=0.0), ValueError, "pct_start"),
    (lambda: one_cycle(0.1, 10, pct_start=1.0), ValueError, "pct_start"),
    (lambda: one_cycle(0.1, 10, pct_start=NAN), ValueError, "pct_start"),
    (lambda: one_cycle(0.1, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: one_cycle(0.1, 10, anneal_strategy=None), TypeError, "anneal_strategy"),
    (lambda: one_cycle(0.1, 10, div_factor=0.0), ValueError, "div_factor"),
    (lambda: one_cycle(0.1, 10, final_div_factor=-1.0), ValueError, "final_div_factor"),
    (lambda: one_cycle(0.1, 10, three_phase=1), TypeError, "three_phase"),
])
def test_invalid_settings(build, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        build()


@pytest.mark.parametrize("schedule", [constant(0.1), step_decay(0.1, 2), exponential(0.1, 0.9),
                                      cosine(0.1, 10, 2), warmup_linear_decay(0.1, 2, 10),
                                      one_cycle(0.1, 10)], ids=lambda s: type(s).__name__)
def test_invalid_step(schedule):
    with pytest.raises(ValueError, match="step"):
        schedule(-1)
    for bad in (1.0, "1", None, True):
        with pytest.raises(TypeError, match="step"):
            schedule(bad)
    assert schedule(0) >= 0.0
