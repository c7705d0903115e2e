"""Which twin a step runs inside a loop (``fastopt.threads.StepTwins``), and the guard
against two threads stepping one optimizer (README "Guarantees", "Performance").

The choice is driven by a fake clock here: what is tested is the decision rule, the
schedule of probe blocks, that the chosen twin is the one that runs, that the results
do not depend on it, and that a concurrent step is refused before anything is written.
"""

import threading

import numpy as np
import pytest

import fastopt
from fastopt import threads
from fastopt.kernels import config

from cases import CASES, RULES

BIG = 1 << 17   # above PARALLEL_THRESHOLD (2^16): the twin is a real choice


class FakeClock:
    """``perf_counter`` that advances by the period of the twin the last step ran."""

    def __init__(self, serial, parallel):
        self.now, self.periods, self.last = 0.0, {"serial": serial, "parallel": parallel}, None

    def __call__(self):
        if self.last is not None:
            self.now += self.periods[self.last]
        return self.now


@pytest.fixture
def spy(monkeypatch):
    """Which twin each Python-side kernel call ran, per step: a list of sets."""
    runs = []
    original = config.Variant.__call__

    def record(self, param, *args):
        twin = "parallel" if param.shape[0] >= config.PARALLEL_THRESHOLD and not getattr(
            config._serial, "on", False) else "serial"
        runs[-1].add(twin)
        return original(self, param, *args)

    monkeypatch.setattr(config.Variant, "__call__", record)
    entry_of = config.Variant.serial_entry

    def recorded_entry(self, args):   # a step's direct call of the serial twin
        entry = entry_of(self, args)
        if entry is None:
            return None

        def run(*call_args):
            runs[-1].add("serial")
            return entry(*call_args)
        return run

    monkeypatch.setattr(config.Variant, "serial_entry", recorded_entry)
    return runs


def drive(opt, flat, steps, clock, spy, monkeypatch):
    monkeypatch.setattr(threads.time, "perf_counter", clock)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        flat.grads[0][...] = rng.standard_normal(flat.grads[0].shape)
        spy.append(set())
        opt.step()
        (clock.last,) = spy[-1]


def probe_schedule():
    block = threads.BLOCK
    return (["serial"] * block + ["parallel"] * block) * threads.PROBES


@pytest.mark.parametrize("faster", ["serial", "parallel"])
def test_auto_probes_both_twins_in_blocks_then_keeps_the_faster(faster, spy, monkeypatch):
    monkeypatch.setattr(threads, "policy", "auto")
    flat = fastopt.flatten([np.zeros(BIG)])
    opt = fastopt.Adam(flat)
    slow, fast = 2e-3, 1e-3
    clock = FakeClock(serial=fast if faster == "serial" else slow,
                      parallel=fast if faster == "parallel" else slow)
    probe = len(probe_schedule())
    drive(opt, flat, threads.WARMUP + probe + 10, clock, spy, monkeypatch)
    ran = [next(iter(s)) for s in spy]
    assert ran[:threads.WARMUP] == ["parallel"] * threads.WARMUP   # by size, before a probe
    assert ran[threads.WARMUP:threads.WARMUP + probe] == probe_schedule()
    assert ran[threads.WARMUP + probe:] == [faster] * 10
    assert opt._twins.choice == faster


def test_a_tie_keeps_the_serial_twin(spy, monkeypatch):
    """Parallel must be MARGIN faster: on a tie the serial twin leaves the host's cores."""
    monkeypatch.setattr(threads, "policy", "auto")
    flat = fastopt.flatten([np.zeros(BIG)])
    opt = fastopt.SGD(flat, lr=0.1)
    clock = FakeClock(serial=1e-3, parallel=1e-3 * (1 - threads.MARGIN / 2))
    drive(opt, flat, threads.WARMUP + len(probe_schedule()) + 2, clock, spy, monkeypatch)
    assert opt._twins.choice == "serial"


@pytest.mark.parametrize("serial_faster_by", [threads.MARGIN / 2, 2 * threads.MARGIN])
def test_on_the_host_team_a_tie_keeps_the_parallel_twin(serial_faster_by, spy,
                                                         monkeypatch):
    """Where the parallel twin runs on the host's own threads (fastopt.torch on torch's
    team) it takes no core from the host: serial must be MARGIN faster to be chosen."""
    monkeypatch.setattr(threads, "policy", "auto")
    flat = fastopt.flatten([np.zeros(BIG)])
    opt = fastopt.SGD(flat, lr=0.1)
    opt._twins.host_team = lambda: object()
    clock = FakeClock(serial=1e-3 * (1 - serial_faster_by), parallel=1e-3)
    drive(opt, flat, threads.WARMUP + len(probe_schedule()) + 2, clock, spy, monkeypatch)
    assert opt._twins.choice == ("serial" if serial_faster_by > threads.MARGIN
                                 else "parallel")
    opt._twins.host_team = lambda: None          # no team (FASTOPT_HOST_POOL=0)
    opt._twins._periods = {"serial": [1e-3 * (1 - serial_faster_by)], "parallel": [1e-3]}
    opt._twins._decide()
    assert opt._twins.choice == "serial"


def test_auto_probes_again_after_reprobe_steps(spy, monkeypatch):
    monkeypatch.setattr(threads, "policy", "auto")
    monkeypatch.setattr(threads, "REPROBE", 64)
    flat = fastopt.flatten([np.zeros(BIG)])
    opt = fastopt.SGD(flat, lr=0.1)
    clock = FakeClock(serial=1e-3, parallel=2e-3)
    drive(opt, flat, 64 + len(probe_schedule()) + 4, clock, spy, monkeypatch)
    assert opt._twins.choice == "serial"
    clock.periods = {"serial": 2e-3, "parallel": 1e-3}   # the loop changed
    drive(opt, flat, 64, clock, spy, monkeypatch)
    assert opt._twins.choice == "parallel"


@pytest.mark.parametrize("policy, expected", [("serial", {"serial"}), ("size", {"parallel"})])
def test_fixed_policies(policy, expected, spy, monkeypatch):
    monkeypatch.setattr(threads, "policy", policy)
    flat = fastopt.flatten([np.zeros(BIG)])
    opt = fastopt.Adam(flat)
    drive(opt, flat, 40, FakeClock(1e-3, 2e-3), spy, monkeypatch)
    assert set().union(*spy) == expected


def test_small_optimizers_are_not_timed(spy, monkeypatch):
    monkeypatch.setattr(threads, "policy", "auto")
    flat = fastopt.flatten([np.zeros(1000)])
    opt = fastopt.Adam(flat)
    drive(opt, flat, 40, FakeClock(1e-3, 2e-3), spy, monkeypatch)
    assert set().union(*spy) == {"serial"} and opt._twins.steps == 0


def test_no_serial_flag_leaks_out_of_a_step_that_raised(monkeypatch):
    monkeypatch.setattr(threads, "policy", "serial")
    opt = fastopt.SGD([np.zeros(BIG)], lr=0.1)
    with pytest.raises(ValueError):
        opt.step([np.zeros(3)])
    assert not getattr(config._serial, "on", False)
    opt.step([np.ones(BIG)])      # and the optimizer is not left locked


@pytest.mark.parametrize("case", [0, len(CASES) - 1, 10, 20])
def test_results_do_not_depend_on_the_twins_chosen(case, monkeypatch):
    """Serial and parallel twins agree bitwise, so the probe cannot change a result."""
    rule, options = CASES[case]
    cls, _, lr = RULES[rule]
    rng = np.random.default_rng(case)
    start = rng.standard_normal(BIG)
    grads = [rng.standard_normal(BIG) for _ in range(5)]
    finals = []
    for policy, clock in (("size", None), ("serial", None),
                          ("auto", FakeClock(1e-3, 2e-3)), ("auto", FakeClock(2e-3, 1e-3))):
        monkeypatch.setattr(threads, "policy", policy)
        if clock is not None:
            monkeypatch.setattr(threads.time, "perf_counter", clock)
        flat = fastopt.flatten([start.copy()])
        opt = cls(flat, lr=lr, clip_grad_norm=1.0, **options)
        for step in range(threads.WARMUP + len(probe_schedule()) + 5):
            flat.grads[0][...] = grads[step % 5]
            opt.step()
            if clock is not None:
                clock.last = "serial" if getattr(config._serial, "on", False) else "parallel"
        finals.append(flat.params[0].copy())
    for other in finals[1:]:
        assert np.array_equal(finals[0], other)


def test_a_second_thread_stepping_the_same_optimizer_is_refused_and_writes_nothing():
    """Thread A is inside step (held in its lr schedule); thread B's step raises
    RuntimeError and changes nothing; A's step then completes normally."""
    inside, release = threading.Event(), threading.Event()

    def lr(step):
        inside.set()
        assert release.wait(30)
        return 0.1

    flat = fastopt.flatten([np.ones(10)])
    opt = fastopt.SGD(flat, lr=lr)
    flat.grads[0][...] = 1.0
    errors = []
    a = threading.Thread(target=lambda: opt.step())
    a.start()
    assert inside.wait(30)
    before = flat.params[0].copy()
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            opt.step()
        assert np.array_equal(flat.params[0], before)
    finally:
        release.set()
        a.join(30)
    assert not errors
    np.testing.assert_allclose(flat.params[0], 0.9)   # A's one step, and only one


def test_torch_front_end_refuses_a_concurrent_step():
    import torch

    import fastopt.torch as ft
    param = torch.nn.Parameter(torch.ones(10))
    opt = ft.SGD([param], lr=0.1)
    param.grad = torch.ones(10)
    opt._twins._busy.acquire()       # as if another thread were inside step
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            opt.step()
        assert torch.equal(param.detach(), torch.ones(10))
    finally:
        opt._twins._busy.release()
    opt.step()
    assert torch.allclose(param.detach(), torch.full((10,), 0.9))
