"""Each benchmark case's ceiling: its kernel's loads and stores without its arithmetic.

A rule's kernel reads ``Case.reads`` and writes ``Case.writes`` once per element; the
fastest that traffic can go on this machine, at this size and thread count, is a kernel
that does only that. :func:`ceiling_call` builds one for any :class:`~.cases.Case` from
those two lists, over the very buffers (names, dtypes, sizes) :func:`~.cases.kernel_args`
gives the kernel. The written buffers rotate (each takes the next one's old value) and
the last takes a compare-and-select of the first one's old value and the read-only
gradient, so every load is used and every store happens, and there is nothing else a
compiler could drop or a core could spend time on. Compiled by
:func:`fastopt.kernels.config.kernel` (the kernels' flags, serial and parallel twins
picked by the size of the first buffer, the parameter, as a rule's kernel is).
:mod:`fastopt.bench.mixed` has the same construction for the mixed-precision step.

``fastopt bench`` times each kernel and its ceiling interleaved
(:func:`~.measure.interleaved`), so both see the same machine: ceiling time over kernel
time is the fraction of the achievable speed the kernel reaches (1.0: at the ceiling).
"""

from functools import partial

from numba import prange

from ..kernels.config import kernel
from . import cases


@kernel
def rotate2(first, second, read_only):
    """Reads ``first``, ``second``, ``read_only``; writes ``first`` and ``second``."""
    for i in prange(first.shape[0]):
        old = first[i]
        other = read_only[i]
        first[i] = second[i]
        second[i] = old if old > other else other


@kernel
def rotate3(first, second, third, read_only):
    """Reads ``first``, ``second``, ``third``, ``read_only``; writes the first three."""
    for i in prange(first.shape[0]):
        old = first[i]
        other = read_only[i]
        first[i] = second[i]
        second[i] = third[i]
        third[i] = old if old > other else other


@kernel
def rotate4(first, second, third, fourth, read_only):
    """Reads ``first`` to ``fourth`` and ``read_only``; writes the first four (Adam with
    amsgrad: the parameter, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)."""
    for i in prange(first.shape[0]):
        old = first[i]
        other = read_only[i]
        first[i] = second[i]
        second[i] = third[i]
        third[i] = fourth[i]
        fourth[i] = old if old > other else other


#: Ceiling kernels by (buffers written, buffers only read).
KERNELS = {(2, 1): rotate2, (3, 1): rotate3, (4, 1): rotate4}


def buffers(case, size, dtype, seed=0):
    """``name -> array``: the buffers ``case``'s kernel reads or writes, as
    :func:`~.cases.kernel_args` allocates them for the kernel itself."""
    args = cases.kernel_args(case, size, dtype, seed)
    return {name: array for name, array in zip(case.arrays, args) if name is not None}


def layout(case):
    """``(kernel, names)``: the ceiling kernel for ``case`` and the buffer names it takes,
    in order: ``Case.writes`` (the parameter first), then the buffers only read."""
    if case.options.get("state_dtype"):
        raise cases.Unavailable(f"{case.name}: no ceiling kernel for buffers of two widths "
                                "(float32 params, bfloat16 state): values cannot rotate")
    read_only = tuple(name for name in case.reads if name not in case.writes)
    missing = set(case.writes) - set(case.reads)
    if missing:   # a kernel that writes a buffer it never reads: not a rotation
        raise ValueError(f"{case.name}: writes {sorted(missing)} without reading them")
    return KERNELS[len(case.writes), len(read_only)], case.writes + read_only


def ceiling_call(case, size, dtype, twin=None, seed=0):
    """Run ``case``'s ceiling kernel once per call, over fresh buffers of ``size``
    elements. ``twin``: ``"serial"``, ``"parallel"``, or ``None`` to pick by size as
    the rule's kernel does. The buffers are the call's ``buffers`` attribute."""
    func, names = layout(case)
    arrays = buffers(case, size, dtype, seed)
    if twin is not None:
        func = getattr(func, twin)
    call = partial(func, *(arrays[name] for name in names))
    call.buffers = arrays
    return call
