"""One kernel call over many gradient arrays: the gradients read in place, by address.

An optimizer over a flat parameter buffer often gets its gradients as separate arrays
(``fastopt.torch`` after ``zero_grad()``: autograd allocates each parameter's gradient).
Stepping them one kernel call per array costs a Python call and a thread launch each
(50 tensors of 2e4 elements: 0.32 ms against 0.13 ms in one call); gathering them into
one buffer first costs a pass over memory. Here one compiled *driver* per kernel
:class:`~fastopt.kernels.config.Variant` walks a table of blocks instead::

    for each block b (prange):            # table row: (array r, lo, hi, start of r)
        g = the gradient array r, from its address, elements lo - start .. hi - start
        serial(param[lo:hi], g, buffer1[lo:hi], ..., scalars...)

``serial`` is the variant's own serial twin, so each element is computed exactly as a
one-array call computes it: the results are bitwise the same, whatever the blocks and the
thread count (elementwise rules only; a per-tensor rule reduces over whole tensors). Every
other array argument is sliced ``[lo:hi]``: the flat state buffers and copy, laid out as
the parameters; an unused buffer (an empty array) stays empty. The gradient arrays must
be C-contiguous and stay alive during the call (the caller holds them).

Low-precision state draws its random bits by the element's index within a call
(:func:`~fastopt.kernels.halves.state_noise`), which is the block-relative index here; so
its drivers (``noise``: the position of the kernel's ``noise_key`` scalar) take the runs'
keys as their first array and call each block with ``block_key(run key, block index in
the run)``: the bits depend on the block, never on the thread (``fastopt.torch``'s
definition of bf16 state's bits).

The drivers are generated per (variant, number of array and scalar arguments, gradient
dtype) and compiled on first use (about a second; Numba cannot cache generated code).
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from . import config
from .halves import block_key

#: Elements per block of the driver's table: small enough to balance the threads over
#: arrays of different sizes, large enough that a block's call costs nothing.
BLOCK = 1 << 14


@intrinsic
def _voidptr_at(typingctx, address):
    """An ``int64`` address as a ``void*`` (an LLVM ``inttoptr``)."""
    if address != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))
    return types.voidptr(types.int64), codegen


def block_table(starts, stops, block=BLOCK):
    """The driver's table for arrays covering ``param[starts[r]:stops[r]]``: one row
    ``(r, lo, hi, starts[r])`` per block of at most ``block`` elements (``int64``)."""
    rows = [(r, lo, min(lo + block, stop), start)
            for r, (start, stop) in enumerate(zip(starts, stops))
            for lo in range(start, stop, block)]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


_SOURCE = """
def driver(param, addresses, table, {arrays}{scalars}):
    for b in prange(table.shape[0]):
        r = table[b, 0]
        lo = table[b, 1]
        hi = table[b, 2]
        grad = carray(_voidptr_at(addresses[r] + (lo - table[b, 3]) * ITEMSIZE),
                      (hi - lo,), dtype=GRAD_DTYPE)
{key}        serial(param[lo:hi], grad, {sliced}{passed})
"""

_KEY = """        key = NOISE_TYPE(block_key(a0[r], (lo - table[b, 3]) // BLOCK))
"""


def _driver(variant, arrays, scalars, grad_dtype, parallel, noise=None, noise_type=None):
    """Compile the driver of ``variant`` for ``arrays`` array arguments after the gradient
    and ``scalars`` scalars (see the module docstring). ``noise``: the index among the
    scalars of a low-precision state's ``noise_key``, replaced per block by
    :func:`~fastopt.kernels.halves.block_key` of the run's key (the first array, one key
    per run, not passed on) and the block's index in its run (as ``noise_type``)."""
    names = [f"a{k}" for k in range(arrays)]
    values = [f"s{k}" for k in range(scalars)]
    passed = list(values)
    if noise is not None:
        passed[noise] = "key"
    source = _SOURCE.format(
        arrays="".join(f"{n}, " for n in names), scalars=", ".join(values),
        key=_KEY if noise is not None else "", passed=", ".join(passed),
        sliced="".join(f"{n}[lo:hi], " for n in names[1 if noise is not None else 0:]))
    namespace = {"prange": prange, "carray": carray, "_voidptr_at": _voidptr_at,
                 "serial": variant.serial, "ITEMSIZE": grad_dtype.itemsize,
                 "GRAD_DTYPE": grad_dtype, "block_key": block_key, "BLOCK": BLOCK,
                 "NOISE_TYPE": noise_type}
    exec(compile(source, f"<fastopt gathered driver of {variant}>", "exec"), namespace)
    return njit(parallel=parallel, fastmath=set(config.FASTMATH),
                error_model=config.ERROR_MODEL)(namespace["driver"])


def drivers(variant, rest, grad_dtype, noise=None):
    """The (parallel, serial) drivers of ``variant`` for the arguments ``rest`` (as
    :func:`run` takes them) and gradients of ``grad_dtype``, compiled on first use.
    ``noise``: the index of the ``noise_key`` scalar when ``rest`` starts with the runs'
    noise keys (low-precision state, :func:`_driver`), else ``None``."""
    arrays = sum(isinstance(a, np.ndarray) for a in rest)
    key = (arrays, len(rest) - arrays, grad_dtype, noise)
    found = variant.drivers.get(key)
    if found is None:
        noise_type = None if noise is None else type(rest[arrays + noise])
        found = variant.drivers[key] = tuple(
            _driver(variant, arrays, key[1], grad_dtype, parallel, noise, noise_type)
            for parallel in (True, False))
    return found


def elements(table):
    """The elements a :func:`block_table` covers (what decides serial or parallel)."""
    return int((table[:, 2] - table[:, 1]).sum()) if table.size else 0


def run(variant, param, grads, table, rest, addresses=None, team=None, count=None,
        noise=None):
    """Run ``variant`` over ``param`` with its gradient read from ``grads`` (1-D
    C-contiguous arrays, one per row index of ``table``: :func:`block_table`) and the
    other arguments ``rest`` (the kernel's arguments after the gradient, without the
    options: buffers as long as ``param``, then scalars). ``addresses``: the gradients'
    data addresses, when the caller has them (else read from ``grads``). The serial or
    the parallel driver, as :meth:`Variant.__call__
    <fastopt.kernels.config.Variant.__call__>` chooses a twin; the parallel one on
    ``team`` (a :class:`~fastopt.kernels.hostpool.Team`, the host's OpenMP threads) when
    given, else on Numba's pool. ``count``: the table's :func:`elements`, when the
    caller has it. ``noise``: as :func:`drivers`
    (then ``rest`` starts with the runs' noise keys, and ``table`` has blocks of
    :data:`BLOCK`)."""
    if addresses is None:
        addresses = [g.__array_interface__["data"][0] for g in grads]
    arrays = [a for a in rest if isinstance(a, np.ndarray)]   # the arrays come first
    scalars = rest[len(arrays):]
    Repeated(variant, param, table, arrays, scalars, grads[0].dtype, team, noise,
             count)(addresses, scalars)


class Repeated:
    """One block-driver call (:func:`run`) prepared to run again and again with new
    gradient addresses and new scalars, the rest the same: the optimizer step of a
    training loop, where the same params get new gradients each step. Calling it costs a
    copy of the addresses and scalars, not :func:`run`'s lookups.

    ``variant``, ``param``, ``table``: as :func:`run`; ``arrays``: the kernel's array
    arguments after the gradient; ``scalars``: one step's scalars (their types fix the
    compiled driver; later calls must pass the same types); ``grad_dtype``: the gradients';
    ``team``, ``noise``, ``count``: as :func:`run` (with ``noise``, ``arrays`` starts with
    an int64 array of the runs' noise keys, which the caller rewrites in place each
    step). The one place that chooses the serial driver, torch's team or Numba's pool."""

    def __init__(self, variant, param, table, arrays, scalars, grad_dtype, team=None,
                 noise=None, count=None):
        rest = (*arrays, *scalars)
        self.found = drivers(variant, rest, np.dtype(grad_dtype), noise)
        self.param, self.table, self.arrays, self.team = param, table, tuple(arrays), team
        self.addresses = np.zeros(int(table[:, 0].max()) + 1 if table.size else 0,
                                  dtype=np.int64)
        # serial below the parallel threshold
        self.count = elements(table) if count is None else count
        self._control = None   # the team's (body, control block, scalars), on first use

    def __call__(self, addresses, scalars, keys=None):
        """Run with ``addresses`` (one per row index of the table), ``scalars`` and, with
        ``noise``, the runs' noise ``keys``."""
        self.addresses[:] = addresses
        if keys is not None:
            self.arrays[0][:] = keys
        param = self.param
        if self.count < config.PARALLEL_THRESHOLD or config.serial_chosen():
            self.found[1](param, self.addresses, self.table, *self.arrays, *scalars)
            return
        team = self.team
        if team is None:
            config.run_parallel(self.found[0], param, self.addresses, self.table,
                                *self.arrays, *scalars)
            return
        threads = team.threads()
        if threads <= 1:
            self.found[1](param, self.addresses, self.table, *self.arrays, *scalars)
            return
        if self._control is None:
            self._control = team.control(self.found[1], param, self.addresses, self.table,
                                         (*self.arrays, *scalars))
        body, control, values = self._control
        values[:len(scalars)] = scalars
        config.run_gated(team.launch, body, control, threads)
