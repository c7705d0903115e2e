"""Timing helpers: the median of several repeats, each a loop of at least ``min_time``.

Absolute times on a shared machine drift; compare ratios measured in one run.
"""

import contextlib
import math
import statistics
import time

from ..threads import num_threads

#: Defaults of ``fastopt bench``: 5 repeats, each looping for at least 50 ms.
REPEAT = 5
MIN_TIME = 0.05


def loops_for(func, min_time=MIN_TIME):
    """How many calls of ``func`` take at least ``min_time`` seconds. Tries 1, 10, 100...
    calls until a loop lasts a twentieth of ``min_time``, then scales up from that."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            func()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return loops
        if elapsed >= min_time / 20:
            return math.ceil(loops * min_time / elapsed)
        loops *= 10


def time_call(func, *, repeat=REPEAT, min_time=MIN_TIME, warmup=True):
    """Median seconds per call of ``func()``: ``repeat`` samples, each the mean over a loop
    that runs at least ``min_time`` seconds. ``warmup`` calls it once first (compilation,
    state allocation, first touch of memory)."""
    if warmup:
        func()
    loops = loops_for(func, min_time)
    samples = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        for _ in range(loops):
            func()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def interleaved(calls, repeat=REPEAT, min_time=MIN_TIME):
    """Median seconds per call of each of ``calls`` (name -> function), timed in rounds:
    each round runs every function's loop once (A/B/A/B), so drift on a shared machine
    hits all alike and their ratios are stable. Each is called once first (compilation,
    first touch), and its loop lasts at least ``min_time``."""
    loops = {}
    for name, func in calls.items():
        func()
        loops[name] = loops_for(func, min_time)
    samples = {name: [] for name in calls}
    for _ in range(max(1, repeat)):
        for name, func in calls.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                func()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def max_threads():
    """The most threads Numba may use in this process (``NUMBA_NUM_THREADS``)."""
    import numba
    return numba.config.NUMBA_NUM_THREADS


@contextlib.contextmanager
def threads(count):
    """Run with ``count`` threads in Numba (and in torch, if torch is imported), then
    restore both. ``None`` leaves the thread counts as they are."""
    import sys

    if count is None:
        yield
        return
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(count)
    try:
        with num_threads(count):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(saved_torch)
