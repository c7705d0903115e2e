"""Parallel kernels on the host's own OpenMP team (torch's), instead of Numba's pool.

Inside a torch training loop two thread pools want the same cores: torch's OpenMP team
(every forward and backward op, MKL and oneDNN too), whose idle workers spin for a few
milliseconds after each op, and Numba's TBB workers, which a parallel kernel wakes. A
parallel step then shares the second core with torch's spinning worker, and its own
workers spin on the cores torch's next op needs (:mod:`fastopt.threads`). Measured here
(2 cores, Adam over 1.58M float32 elements, blocks alternating with torch's fused Adam):
torch fused 0.44 ms, fastopt on Numba's pool 0.62 ms, serial 0.55 ms, **on torch's team
0.31 ms**. torch's own fused optimizers run on that team, so fastopt does too:

* :func:`torch_team` finds the OpenMP runtime torch runs on (its ATen parallel backend
  must be OpenMP; the library is found among the loaded ones, torch's own copy first),
  once per process; ``None`` where there is none (macOS, a native-threads build) or where
  ``FASTOPT_HOST_POOL=0``, and then fastopt uses Numba's pool as before.
* :meth:`Team.launch` runs a kernel's block driver (:mod:`fastopt.kernels.gathered`,
  whose :class:`~fastopt.kernels.gathered.Repeated` decides when) with
  ``GOMP_parallel``, the entry point an ``#pragma omp parallel`` compiles to: torch's
  own threads, already awake, each take an equal share of the table's blocks and call the
  serial driver on them, from a Numba ``cfunc`` that rebuilds the arrays from their
  addresses. The team has ``torch.get_num_threads()`` threads (fewer if Numba's count was
  lowered, ``fastopt.threads.num_threads``); at one thread nothing is launched.

The results are bitwise those of the serial driver (each block is the serial twin over a
slice; elementwise rules only; bf16 state rounds each block with its own key,
:func:`~fastopt.kernels.halves.block_key`), so determinism across thread counts holds. A
child forked
after its parent used the team runs serial twins (:class:`~fastopt.kernels.config._ForkGate`):
a GNU OpenMP team does not survive ``fork``. Two Python threads may run kernels at once:
each gets its own team from the runtime. Nothing of Numba's, torch's or OpenMP's global
state is changed.

The ``cfunc`` is generated per (variant, argument dtypes) and compiled on first use
(about a second; it calls the runtime's functions by address, so Numba cannot cache it).
"""

import ctypes
import os
import re
import sys
import threading

import numpy as np
import numba
from numba import carray, cfunc, types
from numba.np.ufunc import parallel as _numba_pool

from . import config
from .gathered import _voidptr_at
from ..validation import env_int

#: Whether fastopt.torch runs its parallel kernels on torch's OpenMP team where it finds
#: one (``FASTOPT_HOST_POOL``, default on; ``0``/``off`` keeps Numba's pool). Read by every
#: step.
enabled = bool(env_int("FASTOPT_HOST_POOL", 1, low=0))

_RUNTIME = re.compile(r"lib(gomp|iomp5|omp)([-.][^/]*)?\.so[.0-9]*$")

_SOURCE = """
def body(data):
    ctl = carray(data, (CONTROL,), dtype=np.int64)
    rows = ctl[0]
    tid = thread_num()
    threads = num_threads()
    first = tid * rows // threads
    stop = (tid + 1) * rows // threads
    if first < stop:
        table = carray(_voidptr_at(ctl[1]), (rows, 4), dtype=np.int64)
        addresses = carray(_voidptr_at(ctl[2]), (ctl[3],), dtype=np.int64)
        param = carray(_voidptr_at(ctl[4]), (ctl[5],), dtype=PARAM)
        scalars = carray(_voidptr_at(ctl[6]), (SCALARS,), dtype=np.float64)
{arrays}
        driver(param, addresses, table[first:stop], {arguments})
"""


class Team:
    """An OpenMP runtime already loaded by the host, and fastopt's entries into it."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)   # already loaded: the same runtime, the same threads
        self.path = path
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                   ctypes.c_uint]
        self._parallel.restype = None
        self._thread_num = lib.omp_get_thread_num
        self._num_threads = lib.omp_get_num_threads
        for function in (self._thread_num, self._num_threads):
            function.argtypes, function.restype = [], ctypes.c_int
        self._bodies = {}
        self._lock = threading.Lock()
        self._torch = sys.modules["torch"]

    def threads(self):
        """The team's size for the next kernel: torch's intra-op thread count, lowered to
        Numba's where the user set that below its maximum (``fastopt.num_threads(1)``;
        read only after Numba's pool started: reading it would start it)."""
        count = self._torch.get_num_threads()
        if _numba_pool._is_initialized:
            lowered = numba.get_num_threads()
            if lowered < numba.config.NUMBA_NUM_THREADS:   # set below its maximum
                count = min(count, lowered)
        return count

    def body(self, driver, key):
        """The ``cfunc`` that runs ``driver`` (a serial block driver) over each thread's
        share of the table, for arguments of ``key``: (param dtype, array dtypes, scalar
        types)."""
        found = self._bodies.get((driver, key))
        if found is None:
            with self._lock:
                found = self._bodies.get((driver, key))
                if found is None:
                    found = self._bodies[(driver, key)] = self._compile(driver, *key)
        return found

    def _compile(self, driver, param, arrays, scalars):
        lines, arguments = [], []
        for k, dtype in enumerate(arrays):
            lines.append(f"        a{k} = carray(_voidptr_at(ctl[{7 + 2 * k}]), "
                         f"(ctl[{8 + 2 * k}],), dtype=A{k})")
            arguments.append(f"a{k}")
        arguments += [f"S{k}(scalars[{k}])" for k in range(len(scalars))]
        namespace = {"np": np, "carray": carray, "_voidptr_at": _voidptr_at,
                     "thread_num": self._thread_num, "num_threads": self._num_threads,
                     "driver": driver, "PARAM": param, "CONTROL": 7 + 2 * len(arrays),
                     "SCALARS": max(len(scalars), 1)}
        namespace.update({f"A{k}": dtype for k, dtype in enumerate(arrays)})
        namespace.update({f"S{k}": np.dtype(kind).type for k, kind in enumerate(scalars)})
        source = _SOURCE.format(arrays="\n".join(lines), arguments=", ".join(arguments))
        exec(compile(source, "<fastopt host-team body>", "exec"), namespace)
        return cfunc(types.void(types.voidptr), error_model=config.ERROR_MODEL)(
            namespace["body"])

    def control(self, driver, param, addresses, table, rest):
        """``(cfunc address, control block, scalars)`` for running the serial block
        ``driver`` over ``table`` (:func:`gathered.block_table`) with ``rest`` as
        :func:`gathered.run` takes it: the control block (``int64``) holds the addresses
        and lengths of ``table``, ``addresses``, ``param``, the float64 ``scalars`` array
        and each array of ``rest``, so a caller may rewrite ``addresses`` and ``scalars``
        in place and :meth:`launch` again."""
        arrays = [a for a in rest if isinstance(a, np.ndarray)]
        kinds = tuple(map(type, rest[len(arrays):]))
        # scalars by type (NumPy scalars, or Python floats: float64, as Numba reads them)
        key = (param.dtype, tuple(a.dtype for a in arrays), kinds)
        body = self.body(driver, key)
        scalars = np.array(rest[len(arrays):] or (0.0,), dtype=np.float64)
        control = [table.shape[0], table.ctypes.data, addresses.ctypes.data,
                   addresses.shape[0], param.ctypes.data, param.shape[0],
                   scalars.ctypes.data]
        for a in arrays:
            control += [a.ctypes.data, a.shape[0]]
        return body.address, np.array(control, dtype=np.int64), scalars

    def launch(self, body, control, threads):
        """Run ``body`` (a :meth:`control` cfunc address) on ``threads`` threads of this
        team over ``control`` (its block, an ``int64`` array); returns when all are done."""
        self._parallel(body, control.ctypes.data, threads, 0)

_UNSET = object()
_torch_team = _UNSET


def torch_team():
    """The :class:`Team` torch's intra-op parallelism runs on, or ``None`` (module
    docstring). Found once; ``None`` also when :data:`enabled` is false."""
    global _torch_team
    if not enabled:
        return None
    if _torch_team is _UNSET:
        _torch_team = _find_torch_team()
    return _torch_team


def _loaded_runtimes():
    """Paths of the OpenMP runtimes mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if _RUNTIME.search(os.path.basename(p)))


def _find_torch_team():
    torch = sys.modules.get("torch")
    if torch is None or not sys.platform.startswith("linux"):
        return None
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
    except Exception:   # an unusual build: keep Numba's pool
        return None
    runtimes = _loaded_runtimes()
    home = os.path.realpath(os.path.dirname(torch.__file__))
    own = [p for p in runtimes if os.path.realpath(p).startswith(home + os.sep)]
    chosen = own or (runtimes if len(runtimes) == 1 else [])
    if not chosen:
        return None
    try:
        return Team(chosen[0])
    except (OSError, AttributeError):   # not loadable again, or no GOMP_parallel
        return None
