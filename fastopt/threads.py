"""Threads: the count for the parallel kernels, and which twin a step runs inside a loop.

Two things live here, both about sharing the machine with the code around fastopt:

* :func:`num_threads`: run a block with ``n`` Numba threads and restore the count.
* :class:`StepTwins`: per optimizer, whether its steps run the **serial** or the
  **parallel** twin of each kernel, chosen by timing the training loop around the steps.

Why the choice is timed in the loop and not by size alone. A kernel timed alone is
fastest on every thread from about 2^16 elements (``PARALLEL_THRESHOLD``). Inside a
training loop the host's own thread pool is hot: torch's OpenMP workers and OpenBLAS's
workers spin-wait between operations (measured here, CPU burnt by one idle pool in the
50 ms after one operation: libgomp in torch 4-7 ms, OpenBLAS the full 50 ms, Numba's TBB
about 1 ms). A parallel step must share the cores with those spinners, and its own TBB
workers spin for about 1 ms after it, on the cores the host's next operation needs. On
2 cores a 1.5M-parameter MLP loop ran no faster with parallel steps than with serial ones,
while a kernel alone was 1.7x faster in parallel; on more cores and larger models the
parallel twin wins by far. Which one wins depends on the host, the model and the machine,
so fastopt measures it: the quantity that matters is the loop's period, the time from one
``step()`` to the next, which includes what a step does to the host's work after it.

Inside torch the parallel twin does not need a pool of its own: ``fastopt.torch`` runs it
on torch's own OpenMP team (:mod:`fastopt.kernels.hostpool`), the threads torch's next
operation uses anyway, so it neither shares a core with a spinning worker nor leaves one
spinning after it. In the 1.58M-parameter MLP loop (2 threads) the kernel on the team
took 0.58-0.71 ms where torch's fused kernel took 0.54-0.73 ms in the same runs, the whole
step on Numba's pool 1.3-1.5 ms; and the host's forward and backward were no slower after
it (they were 0.1-0.2 ms slower after a step on Numba's pool). A tie in the probe then goes
to the parallel twin.

The policy (``FASTOPT_PARALLEL``, read at import; or set :data:`policy`):

* ``"auto"`` (default): an optimizer whose largest buffer reaches ``PARALLEL_THRESHOLD``
  (so that it would run parallel at all) times its loop. Its first ``WARMUP`` steps choose
  by size, as ``"size"`` does; then it
  alternates blocks of ``BLOCK`` steps with the serial and the parallel twin, ``PROBES``
  blocks each, then keeps the twin with the shorter median period (serial on a tie within
  ``MARGIN``: it leaves the host's cores alone; parallel where it runs on the host's own
  team, :attr:`StepTwins.host_team`); it probes again every ``REPROBE`` steps,
  since loops change (batch size, evaluation phases). The results are bitwise the same
  either way: the kernels are elementwise and the one reduction sums fixed blocks.
* ``"size"``: the twin by buffer size alone (``PARALLEL_THRESHOLD``): best for a kernel
  timed alone, or when nothing else runs in the process.
* ``"serial"``: always the serial twin (no worker threads at all).

A step also refuses concurrent entry: two threads stepping one optimizer at once would
interleave their writes, so the second raises ``RuntimeError`` before writing anything
(two threads stepping *different* optimizers is fine).
"""

import contextlib
import os
import statistics
import threading
import time
import warnings

import numba

from .kernels import config
from .validation import check_int

POLICIES = ("auto", "size", "serial")

WARMUP = 3      # steps before the first probe (compilation, first allocations)
BLOCK = 4       # steps per probe block
PROBES = 4      # blocks per twin in one probe
MARGIN = 0.03   # parallel must be this much faster to be chosen
REPROBE = 2000  # steps between probes


def _policy_from_environment():
    value = os.environ.get("FASTOPT_PARALLEL", "auto").strip().lower()
    if value not in POLICIES:
        warnings.warn(f"fastopt: FASTOPT_PARALLEL={value!r} is not one of {POLICIES}; "
                      "using 'auto'", RuntimeWarning, stacklevel=2)
        return "auto"
    return value


#: How steps choose between the serial and parallel twins: ``"auto"``, ``"size"`` or
#: ``"serial"`` (module docstring). Read by every step; change it at any time.
policy = _policy_from_environment()


@contextlib.contextmanager
def num_threads(n):
    """Run the enclosed code with ``n`` Numba threads; restore the previous count after.

    fastopt never changes the thread count by itself (not at import, not in a step).
    ``n`` must be an integer (``TypeError`` otherwise; NumPy's too, not a bool) between 1
    and ``numba.config.NUMBA_NUM_THREADS`` (``ValueError`` otherwise; set that environment
    variable before the process starts to allow more).
    """
    n = check_int(n, "num_threads", 1, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)


class StepTwins:
    """One optimizer's choice of twin, and its guard against concurrent steps.

    The front ends call :meth:`enter` first thing in ``step`` (it raises if another
    thread is inside a step of the same optimizer, before anything is written) and
    :meth:`leave` in a ``finally``. ``elements`` is the optimizer's largest buffer."""

    def __init__(self, owner):
        self._owner = owner
        self._busy = threading.Lock()
        self.steps = 0            # steps entered (this object's own count)
        self.choice = None        # "serial" / "parallel" once a probe decided; None before
        self._plan = []           # the twins of the probe steps still to come
        self._periods = {"serial": [], "parallel": []}
        self._last = None         # (perf_counter at the last enter, the twin it ran)
        self._flagged = False     # whether this step set the serial flag (leave resets it)
        self.measured = None      # median periods of the last probe, by twin
        #: A function saying whether the parallel twin runs on the host's own threads
        #: (``fastopt.torch``: :func:`fastopt.kernels.hostpool.torch_team`, a team or
        #: ``None``); then it takes no core from the host, and a tie goes to it.
        self.host_team = None

    def enter(self, elements):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{self._owner}.step was called from two threads at once; "
                               "an optimizer steps from one thread at a time (give each "
                               "thread its own optimizer, or hold a lock around step)")
        if elements < config.PARALLEL_THRESHOLD:
            return                    # the serial twin anyway: nothing to choose or time
        current = policy
        if current == "size":
            self._last = None
            return
        if current == "serial":
            self._last = None
            self._serial()
            return
        now = time.perf_counter()
        if self._last is not None:   # the previous step was a probe step: its period
            self._periods[self._last[1]].append(now - self._last[0])
        twin = self._next_twin()
        self._last = (now, twin) if self._plan else None
        if twin == "serial":
            self._serial()

    def _serial(self):
        config.set_serial(True)
        self._flagged = True

    def leave(self):
        if self._flagged:
            config.set_serial(False)
            self._flagged = False
        self._busy.release()

    def _next_twin(self):
        self.steps += 1
        if not self._plan:
            if self._periods["serial"] and self._periods["parallel"]:
                self._decide()
            if self.steps > WARMUP and (self.choice is None
                                        or self.steps % REPROBE == 0):
                self._plan = (["serial"] * BLOCK + ["parallel"] * BLOCK) * PROBES
            else:
                return self.choice or "parallel"   # before the first probe: by size
        return self._plan.pop(0)

    def _decide(self):
        serial = statistics.median(self._periods["serial"])
        parallel = statistics.median(self._periods["parallel"])
        if self.host_team is not None and self.host_team() is not None:
            self.choice = "serial" if serial < parallel * (1.0 - MARGIN) else "parallel"
        else:
            self.choice = "parallel" if parallel < serial * (1.0 - MARGIN) else "serial"
        self.measured = {"serial": serial, "parallel": parallel}
        self._periods = {"serial": [], "parallel": []}
