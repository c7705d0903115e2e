"""Compile flags for every fastopt kernel, in one place.

* ``FASTMATH``: empty, so every operation is IEEE-exact as written. The design allowed
  ``contract``/``arcp``/``nsz``; measured here they buy nothing (fp32 Adam, serial twin:
  0.65-0.71 ns/element at 1e3 and 0.15-0.16 at 1e5 with or without them: the kernels are
  bound by memory and by sqrt/divide throughput), while ``arcp`` let LLVM replace
  ``g / sqrt(r + eps)`` by an approximate ``vrsqrt14ps`` plus a Newton step in RMSprop, a
  result that is not correctly rounded and differs between the vector body and the scalar
  remainder. ``nnan``/``ninf`` are never allowed: the finiteness checks must see the data.
* ``error_model="numpy"``: a division by zero gives Inf/NaN as in NumPy instead of
  raising; the Python error model inserts a branch that blocks vectorization.
* ``cache=True`` where Numba can write its cache (next to the source, or in
  ``NUMBA_CACHE_DIR``); where it cannot, kernels compile without caching and a warning
  says how to set ``NUMBA_CACHE_DIR``. Caching never breaks ``import fastopt``.
* ``PARALLEL_THRESHOLD``: buffers with fewer elements than this run the serial twin of
  a kernel, where starting threads costs more than it saves. Overridable with the
  environment variable ``FASTOPT_PARALLEL_THRESHOLD``.

Nothing here changes Numba's global state (thread count, threading layer); ``layer.py``
only makes a pip-installed TBB findable, at import, for Numba's own choice (see there),
and warns once if the layer that ran a parallel kernel is not fork- and thread-safe.
Numba's cache
is keyed by the kernel's source file, not by these flags: after changing a flag here,
delete ``fastopt/kernels/__pycache__/*.nbi`` (or the ``NUMBA_CACHE_DIR`` copies).
"""

import os
import threading
import types
import warnings

import numba
import numpy as np
from numba._dispatcher import compute_fingerprint as _fingerprint

from ..validation import env_int
from . import layer

layer.make_tbb_findable()

FASTMATH = frozenset()
ERROR_MODEL = "numpy"

#: Elements below which the serial twin runs (chosen by ``fastopt bench --threshold``;
#: see README "Performance").
PARALLEL_THRESHOLD = env_int("FASTOPT_PARALLEL_THRESHOLD", 1 << 16, low=0)  # bad: warns

_cache_ok = None

#: Per thread: whether kernels called from Python run their serial twin whatever their
#: size (set by a step whose :class:`fastopt.threads.StepTwins` chose serial).
_serial = threading.local()


class _ForkGate:
    """Makes ``os.fork`` wait until no parallel kernel is running, and keeps new ones from
    starting while it forks: a child forked while TBB's workers were inside a parallel
    region hung in its first parallel kernel (about one fork in 16, TBB printing "Unable
    to join threads to shut down before fork()"). Parallel kernel calls from Python enter
    and leave it (many at once is fine); ``os.register_at_fork`` holds it across a fork.
    ``subprocess`` does not run fork hooks and is not delayed. Parallel twins called
    directly (``kernel.variant(...).parallel``) bypass it: fork only between such calls.

    That is not enough on a loaded machine: with no kernel running, TBB's idle workers
    still may not join before the fork (Numba's fork hook prints "Unable to join
    threads"), and a child then hung in its first parallel kernel (1-3 forks in 200 with
    both cores busy, at 15 s and at 60 s timeouts alike). So a child forked after the
    parent ran a parallel kernel runs every kernel's serial twin (``serial_chosen``): the
    same results (the twins agree bitwise), no TBB in the child. A child of a parent that
    never started the pool keeps its parallel twins."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._forking = False
        #: Whether this process ran a parallel kernel (so TBB's workers exist).
        self.started = False
        #: Whether this process is a child forked after its parent started the pool.
        self.serial_child = False

    def enter(self):
        with self._cond:
            while self._forking:        # a fork is waiting: let it go first
                self._cond.wait()
            self._running += 1
            self.started = True

    def leave(self):
        with self._cond:
            self._running -= 1
            if not self._running:
                self._cond.notify_all()

    def before_fork(self):
        self._cond.acquire()            # held until after the fork: no kernel can start
        self._forking = True
        while self._running:
            self._cond.wait()           # releases it while the running kernels finish

    def after_fork_in_parent(self):
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self):
        serial = self.started or self.serial_child
        self.__init__()                 # the parent's other threads do not exist here
        self.serial_child = serial      # the parent's TBB may not have joined: no pool


_fork_gate = _ForkGate()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_gate.before_fork,
                        after_in_parent=_fork_gate.after_fork_in_parent,
                        after_in_child=_fork_gate.after_fork_in_child)


def set_serial(serial):
    """Make the calling thread's Python-side kernel calls run the serial twin (``True``)
    or choose by size (``False``, the default). Used by optimizer steps only."""
    _serial.on = serial


def _jit(func, parallel):
    """Compile ``func`` with fastopt's flags, caching where a cache can be written."""
    global _cache_ok
    options = dict(parallel=parallel, fastmath=set(FASTMATH), error_model=ERROR_MODEL)
    if _cache_ok is not False:
        try:
            dispatcher = numba.njit(cache=True, **options)(func)
            _cache_ok = True
            return dispatcher
        except RuntimeError as exc:  # numba: "cannot cache function ...: no locator"
            _cache_ok = False
            warnings.warn(
                f"fastopt: Numba cannot write its cache ({exc}); kernels will compile "
                "in every new process. Set NUMBA_CACHE_DIR to a writable folder.",
                RuntimeWarning,
                stacklevel=3,
            )
    return numba.njit(cache=False, **options)(func)


def _renamed(func, suffix):
    """A copy of ``func`` under another name, so its compiled twin has its own cache."""
    twin = types.FunctionType(
        func.__code__, func.__globals__, func.__name__ + suffix,
        func.__defaults__, func.__closure__,
    )
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__doc__ = func.__doc__
    twin.__module__ = func.__module__
    return twin


def _specialized(func, flags, suffix):
    """A copy of ``func`` whose globals bind the compile-time ``flags`` (name -> bool),
    under a name that encodes them: Numba's cache is keyed by the qualified name (and the
    source file), so each variant must have its own or they would load each other's code."""
    copy = _renamed(func, suffix)
    special = types.FunctionType(copy.__code__, {**func.__globals__, **flags},
                                 copy.__name__, copy.__defaults__, copy.__closure__)
    for attribute in ("__qualname__", "__doc__", "__module__"):
        setattr(special, attribute, getattr(copy, attribute))
    return special


class Variant:
    """One combination of a kernel's compile-time options, compiled twice: ``.parallel``
    (``prange`` over threads) and ``.serial`` (the same body, ``prange`` read as
    ``range``). Both are ordinary Numba dispatchers, callable from your own ``@njit``
    code; their arguments are the kernel's, without the options."""

    def __init__(self, body, flags):
        on = [name for name, value in flags.items() if value]
        suffix = "__" + ("_".join(on) or "plain") if flags else ""
        function = _specialized(body, flags, suffix)
        self.flags = flags
        self.parallel = _jit(function, parallel=True)
        self.serial = _jit(_renamed(function, "_serial"), parallel=False)
        #: The drivers that run this variant over many gradient arrays in one call
        #: (:mod:`fastopt.kernels.gathered`), compiled on first use, by argument kinds.
        self.drivers = {}
        self._entries = {}   # argument fingerprints -> the serial twin's entry point

    def serial_entry(self, args):
        """The serial twin's compiled entry point for arguments of the types of ``args``
        (the kernel's, without the options), or ``None`` while it is not compiled: a call
        without the dispatcher's type resolution (0.4 us less of a 1e3-element step's
        5.5 us). Valid for arguments of exactly these types only: callers keep it with
        the arguments it was found for."""
        try:   # Numba's own C type fingerprints (what its dispatcher caches by): fast
            key = tuple(map(_fingerprint, args))
        except Exception:   # noqa: BLE001 (a value it cannot fingerprint: dispatch)
            return None
        entry = self._entries.get(key)
        if entry is None:
            found = self.serial.overloads.get(tuple(map(numba.typeof, args)))
            if found is None:
                return None
            entry = self._entries[key] = found.entry_point
        return entry

    def __call__(self, param, *args):
        """Run the twin the size of ``param`` calls for (``PARALLEL_THRESHOLD``), or the
        serial one inside a step that chose it (:mod:`fastopt.threads`)."""
        if param.shape[0] >= PARALLEL_THRESHOLD and not serial_chosen():
            run_parallel(self.parallel, param, *args)
        else:
            self.serial(param, *args)


def serial_chosen():
    """Whether kernels called from Python run their serial twin whatever their size: in a
    step that chose it (:mod:`fastopt.threads`), or in a child forked after its parent
    started the parallel pool (:class:`_ForkGate`)."""
    return _fork_gate.serial_child or getattr(_serial, "on", False)


def run_gated(function, *args):
    """Call ``function``, which starts threads (a parallel kernel, or a kernel on the
    host's team: :mod:`fastopt.kernels.hostpool`), inside the fork gate: a fork waits
    until it returns, and a child forked after it runs serial twins."""
    _fork_gate.enter()
    try:
        function(*args)
    finally:
        _fork_gate.leave()


def run_parallel(function, *args):
    """Call a parallel compiled ``function`` from Python: inside the fork gate
    (:func:`run_gated`), then Numba's threading layer's one-time check."""
    run_gated(function, *args)
    if not layer._checked:
        layer.check_once()


class Kernel:
    """One rule's body, compiled per combination of its compile-time options.

    ``flags`` name the body's options; the body reads each as a module-level name, which
    :meth:`variant` binds to a constant, so a compiled loop has no branch on an option and
    never touches a buffer the option leaves unused (a run-time branch there kept LLVM's
    vector loop doing masked loads from the unused buffers: RMSprop fp64 at 1e7 elements
    ran at 30 ns/element). Variants compile lazily, each cached on disk.

    Calling a ``Kernel`` from Python takes the options as the last positional arguments,
    in ``flags`` order, and runs the serial or parallel twin by the size of the first
    argument (the parameter buffer) against ``PARALLEL_THRESHOLD``. From ``@njit`` code,
    call ``kernel.variant(**options).parallel`` (or ``.serial``), bound to a global name.

    A per-tensor kernel (a reduction per member of the buffer, then an update: LAMB) adds:

    * ``layout``: the names of the body's LAST arguments that describe the buffer's member
      layout and its per-block scratch (``offsets``, ``block_offsets``, ... from
      :func:`~fastopt.kernels.reductions.block_table`). The caller never passes them:
      :class:`~fastopt.kernels.binding.Binding` leaves them out of the scalars, and the
      ``compound`` supplies them.
    * ``compound``: a class whose instance, ``compound(variant)``, stands for each
      :class:`Variant` (its ``flags``, ``serial``, ``parallel`` and ``__call__`` taking the
      bound arguments without the layout), runs this body as its first pass and then its
      own further passes, and has ``over(sizes)`` for a buffer of several members.
      :mod:`fastopt.kernels.lamb` is one.
    """

    def __init__(self, body, flags=(), layout=(), compound=None):
        self.body = body
        self.flags = tuple(flags)
        self.layout = tuple(layout)
        self.compound = compound
        self._variants = {}
        self.__doc__ = body.__doc__
        self.__name__ = body.__name__
        self.__wrapped__ = body

    def variant(self, **options):
        """The :class:`Variant` for these options (each a bool; missing ones are False)."""
        unknown = set(options) - set(self.flags)
        if unknown:
            raise TypeError(f"{self.__name__} has no option(s) {sorted(unknown)}; "
                            f"its options are {list(self.flags)}")
        return self._variant(tuple(bool(options.get(name, False)) for name in self.flags))

    def _variant(self, key):
        found = self._variants.get(key)
        if found is None:
            found = Variant(self.body, dict(zip(self.flags, key)))
            if self.compound is not None:
                found = self.compound(found)
            self._variants[key] = found
        return found

    def resolve(self, args):
        """``(variant, args without the options)`` for a full Python-style argument tuple."""
        count = len(self.flags)
        if not count:
            return self._variant(()), args
        return self._variant(tuple(map(bool, args[-count:]))), args[:-count]

    def __call__(self, *args):
        count = len(self.flags)
        if count:   # the hot path of every step: one dict lookup (np.bool_ hashes as bool)
            variant = self._variants.get(args[-count:]) or self.resolve(args)[0]
            args = args[:-count]
        else:
            variant = self._variant(())
        variant(*args)

    @property
    def parallel(self):
        """The parallel twin of a kernel without options."""
        return self._only().parallel

    @property
    def serial(self):
        """The serial twin of a kernel without options."""
        return self._only().serial

    def _only(self):
        if self.flags:
            raise TypeError(f"{self.__name__} has options {list(self.flags)}: use "
                            f"{self.__name__}.variant(...).parallel / .serial")
        return self._variant(())

    @property
    def binding(self):
        """The kernel's :class:`~fastopt.kernels.binding.Binding`: its arguments by name
        (buffers, scalars, options), read from the body's signature once."""
        found = self.__dict__.get("_binding")
        if found is None:
            from .binding import Binding
            found = self._binding = Binding(self)
        return found

    def __repr__(self):
        return f"<fastopt kernel {self.__name__}>"


def unused(dtype, slot=0):
    """An empty array of ``dtype`` to pass for a state buffer an option leaves unused;
    a kernel with two unused buffers passes ``slot=0`` and ``slot=1``. ``uint16`` and
    ``int16`` stand for an unused half-precision copy (:mod:`fastopt.kernels.halves`).

    It must not share memory with the other arguments, nor with another unused buffer of
    the same call: LLVM guards the vectorized loop with a run-time overlap check over the
    array arguments, and a dummy that aliases another argument fails it, so the loop runs
    scalar. Measured, RMSprop fp32 per element: 1.80 ns with ``param[:0]`` and 0.19 with
    this (serial twin, 2^16 elements); 0.31 with one dummy for both unused buffers and
    0.13 with two (parallel twin, 2^20).
    """
    found = _UNUSED.get((dtype, slot))    # the hot path: a dtype or a scalar type
    if found is None:
        key = (np.dtype(dtype), slot)
        found = _UNUSED.get(key)
        if found is None:
            found = _UNUSED[key] = np.empty(0, dtype=key[0])
        _UNUSED[dtype, slot] = found
    return found


_UNUSED = {(np.dtype(t), slot): np.empty(0, dtype=t)
           for t in (np.float32, np.float64, np.uint16, np.int16) for slot in (0, 1)}
_UNUSED.update({(np.dtype(key).type, slot): array for (key, slot), array in _UNUSED.items()})


def kernel(body=None, *, flags=(), layout=(), compound=None):
    """Decorator: ``@kernel`` or ``@kernel(flags=("amsgrad", ...))`` makes ``body`` a
    :class:`Kernel`, compiled per option combination into serial and parallel twins
    (``layout``, ``compound``: a per-tensor kernel's, see :class:`Kernel`)."""
    if body is None:
        return lambda function: Kernel(function, flags, layout, compound)
    return Kernel(body, flags, layout, compound)
