"""Kernels bound by name: the plan that turns named buffers, scalars and options into a call.

A kernel body's signature is its contract::

    def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, param_copy,   # arrays
             step_size, beta1, ..., grad_factor):                             # scalars

Every argument up to ``param_copy`` is an array: ``param`` and ``grad`` first, then the
rule's state buffers by their state names (torch's keys), then ``param_copy`` (the
half-precision copy a mixed-precision step writes). Every argument after it is a scalar
of the buffers' dtype, one of them ``grad_factor``, the multiplier of the gradient. The
kernel's compile-time options (``Kernel.flags``) end with ``zero_grad`` and
``write_copy``, which every kernel has.

A per-tensor kernel (``Kernel.layout``, LAMB's) ends its signature with the arrays that
describe the buffer's members (``offsets, block_offsets`` of
:func:`~fastopt.kernels.reductions.block_table`, per-block scratch): they are neither
buffers nor scalars, and the caller does not pass them (its ``Kernel.compound`` does);
``Binding.layout`` names them.

:class:`Binding` reads the signature once and keeps the plan: which names are buffers,
which are scalars and in what order, the empty arrays that stand for unused buffers
(one slot per buffer, so no two alias: :func:`~fastopt.kernels.config.unused`), and the
rule's own options. A caller supplies dicts by name, never a positional tuple; a
misspelt, missing or extra name is a ``TypeError`` at its first use, so two swapped
scalars of one dtype cannot happen silently.
"""

import inspect
import operator

import numpy as np

from .config import unused

#: The options every kernel takes last, set by the front ends rather than by a rule.
COMMON_FLAGS = ("zero_grad", "write_copy")


class Binding:
    """The binding plan of one :class:`~fastopt.kernels.config.Kernel` (cached on it).

    * ``buffers``: the state buffer names, in order (between ``grad`` and ``param_copy``).
    * ``scalars``: the scalar names, in order (``grad_factor`` among them).
    * ``options``: the rule's own compile-time options (the flags before ``zero_grad``).
    * ``layout``: ``Kernel.layout``, the trailing layout arrays (empty for most kernels).
    """

    def __init__(self, kernel):
        names = tuple(inspect.signature(kernel.body).parameters)
        where = f"kernel {kernel.__name__}"
        if names[:2] != ("param", "grad") or "param_copy" not in names:
            raise TypeError(f"{where}: arguments must start with param, grad and include "
                            f"param_copy after the state buffers; got {names}")
        end = names.index("param_copy") + 1
        layout = tuple(getattr(kernel, "layout", ()))
        if layout:
            if names[len(names) - len(layout):] != layout:
                raise TypeError(f"{where}: its signature must end with its layout "
                                f"arrays {layout}; got {names}")
            names = names[:len(names) - len(layout)]
        if "grad_factor" not in names[end:]:
            raise TypeError(f"{where}: a scalar must be grad_factor; got {names}")
        if tuple(kernel.flags[-2:]) != COMMON_FLAGS:
            raise TypeError(f"{where}: the last options must be {COMMON_FLAGS}; got "
                            f"{kernel.flags}")
        self.kernel = kernel
        self.buffers = names[2:end - 1]
        self.scalars = names[end:]
        self.options = tuple(kernel.flags[:-2])
        self.layout = layout
        self._buffer_set = frozenset(self.buffers)
        self._pick = (operator.itemgetter(*self.scalars) if len(self.scalars) > 1
                      else lambda named: (named[self.scalars[0]],))
        self._pick_options = (operator.itemgetter(*self.options) if len(self.options) > 1
                              else (lambda named: (named[self.options[0]],)) if self.options
                              else (lambda named: ()))
        self._dummies = {}
        self._no_copy = unused(np.uint16)

    def __repr__(self):
        return (f"<Binding of {self.kernel.__name__}: buffers {self.buffers}, scalars "
                f"{self.scalars}, options {self.options}>")

    # --- the three kinds of argument -------------------------------------------------

    def ordered_scalars(self, named):
        """The values of ``named`` (scalar name -> value) in the kernel's order.
        ``TypeError`` if a name is missing or unknown."""
        if len(named) == len(self.scalars):
            try:
                return self._pick(named)
            except KeyError:
                pass
        self._mismatch("scalar", set(named), set(self.scalars))

    def arrays(self, param, grad, state, copy=None):
        """``(param, grad, *state buffers, param_copy)`` in the kernel's order: the
        buffers of ``state`` (name -> array) by name, an empty array of the right dtype
        (its own slot) for each buffer ``state`` lacks and for an absent ``copy``.
        ``TypeError`` if ``state`` names a buffer the kernel does not take."""
        if not state.keys() <= self._buffer_set:
            unknown = sorted(set(state) - self._buffer_set)
            raise TypeError(f"kernel {self.kernel.__name__} takes no buffer(s) {unknown}; "
                            f"its buffers are {list(self.buffers)}")
        dummies = self._dummies.get(param.dtype)
        if dummies is None:
            dummies = self._dummies[param.dtype] = tuple(
                unused(param.dtype, slot) for slot in range(len(self.buffers)))
        return (param, grad, *map(state.get, self.buffers, dummies),
                self._no_copy if copy is None else copy)

    def variant(self, options, zero_grad=False, write_copy=False):
        """The kernel's :class:`~fastopt.kernels.config.Variant` for the rule's
        ``options`` (name -> bool, exactly the kernel's own options) and the two common
        ones. ``TypeError`` if a name is missing or unknown."""
        if len(options) == len(self.options):
            try:
                key = (*self._pick_options(options), zero_grad, write_copy)
            except KeyError:
                key = None
            if key is not None:
                found = self.kernel._variants.get(key)
                return found if found is not None else self.kernel._variant(
                    tuple(map(bool, key)))
        self._mismatch("option", set(options), set(self.options))

    def _mismatch(self, kind, given, expected):
        missing, unknown = sorted(expected - given), sorted(given - expected)
        raise TypeError(f"kernel {self.kernel.__name__}: {kind} names do not match its "
                        f"signature: missing {missing}, unknown {unknown}")
