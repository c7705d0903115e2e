"""Segments: the flat runs of parameters that one kernel call updates.

An optimizer splits each param group into segments. Arrays that are consecutive views of
one contiguous buffer (the views ``flatten`` hands out, in order) form one segment and are
updated in place with one kernel call; any other array is a segment of its own. Nothing
is copied: a segment's ``param`` is a 1-D view of the user's memory.
"""

import numpy as np

from .. import precision
from ..flat import check_float_array, is_half
from ..kernels.reductions import block_table


def _owner(array):
    """The array that owns ``array``'s memory (walking ``.base``)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _address(array):
    return array.__array_interface__["data"][0]


def plain(array):
    """``array`` as a base-class ``np.ndarray`` over the same memory (``np.matrix`` and
    other subclasses reshape and slice in their own ways; the kernels need plain arrays)."""
    return array if type(array) is np.ndarray else array.view(np.ndarray)


def _flat_view(arrays):
    """A 1-D view spanning ``arrays`` if they are consecutive, gap-free views of one
    C-contiguous owner of their dtype, in this order, starting a whole number of
    elements into it; else ``None``. (A view at another byte offset, e.g. a float32 view
    one byte into the owner, is not any slice of the owner: it stays an array of its own.)"""
    first, owner = arrays[0], _owner(arrays[0])
    if not owner.flags.c_contiguous or owner.dtype != first.dtype:
        return None
    skipped = _address(first) - _address(owner)
    if skipped % first.itemsize:
        return None
    address = _address(first)
    for array in arrays:
        if _owner(array) is not owner or _address(array) != address:
            return None
        address += array.nbytes
    start = skipped // first.itemsize
    stop = start + (address - _address(first)) // first.itemsize
    return plain(owner).reshape(-1)[start:stop]


class Segment:
    """A 1-D parameter view, the params it covers, its state buffers and step count.

    ``members``: ``(param index, offset, size, shape)`` per array in the segment.
    ``sizes``, ``shapes``: the members' sizes and shapes, in order (what a per-tensor
    rule's ``bind`` reads).
    ``state``: state name -> 1-D buffer (PyTorch's names): of the segment's length, laid
    out as the params, unless the rule's state has shapes of its own
    (:meth:`~fastopt.rules.base.Rule.state_shape`): then as :meth:`state_members` says.
    """

    def __init__(self, param, members):
        self.param = param
        #: Half-precision params (bfloat16, float16): the float32 ``master`` the kernel
        #: updates (1-D, the optimizer's own), the params' ``copy`` as the kernel writes it
        #: (their bits, a view of the user's memory) and ``bits``, the dtype of the
        #: kernels' view of half gradients. ``None`` for float32/float64 params.
        self.master = self.copy = self.bits = None
        if is_half(param.dtype):
            self.bits = precision.KERNEL_DTYPES[
                "float16" if param.dtype == np.float16 else "bfloat16"]
            self.copy = param.view(self.bits)
            self.master = param.astype(np.float32)
        #: The buffer the kernel updates: the master for half params, else ``param``.
        self.target = param if self.master is None else self.master
        self.members = members
        self.sizes = tuple(m[2] for m in members)
        self.shapes = tuple(tuple(int(n) for n in m[3]) for m in members)
        self._layouts = {}   # state name -> (state members, total), for shaped state
        self.state = {}
        self.step = 0
        self.own_grad = None   # 1-D gradient view when the params came from flatten()
        self._gather = None
        self._blocks = None
        self._grad_in = self._grad_out = None   # a one-member segment's last gradient
        #: ``(bound, entry)``: the serial twin's entry point for the arguments of ``bound``.
        self.entry = None
        #: ``(group, state, grad, zero_grad, variant, arrays)`` of the last step: reused
        #: while the very same objects come back (the steady state of a flatten() loop).
        self.bound = None
        #: Its number among the optimizer's segments: which random bits its
        #: low-precision state rounds with (:func:`~fastopt.kernels.halves.noise_key`).
        self.stream = 0
        #: The rule's scalar state after the last step (NAdam's ``mu_product``), or None.
        self.held = None

    @property
    def indices(self):
        return [m[0] for m in self.members]

    @property
    def blocks(self):
        """The members' :func:`~fastopt.kernels.reductions.block_table`, for the norm."""
        if self._blocks is None:
            self._blocks = block_table(self.sizes)
        return self._blocks

    def grad_view(self, grads):
        """The segment's gradient as one 1-D buffer: a view when ``grads`` of its members
        tile one buffer in order (no copy), else gathered once into scratch memory."""
        if len(self.members) == 1:
            grad = grads[self.members[0][0]]
            if grad is self._grad_in:   # the same array as last step: the same view, so
                return self._grad_out   # the kernel call bound to it is reused
            view = plain(grad).reshape(-1)
            view = view if self.bits is None else view.view(self.bits)
            self._grad_in, self._grad_out = grad, view
            return view
        members = [grads[i] for i in self.indices]
        view = _flat_view(members)
        if view is None:
            if self._gather is None:
                self._gather = np.empty_like(self.param)
            for (_, offset, size, _), grad in zip(self.members, members):
                self._gather[offset:offset + size] = plain(grad).reshape(-1)
            view = self._gather
        return view if self.bits is None else view.view(self.bits)

    def state_members(self, rule, name, group):
        """``(members, total)`` of the flat state buffer ``name``: per member ``(param
        index, offset, size, shape)`` of its view in the buffer (``None`` where the
        param has no such state), and the buffer's length. :attr:`members` and the
        segment's length for a rule whose state is shaped as the params; else from
        :meth:`~fastopt.rules.base.Rule.state_layout`, computed once per name."""
        if not rule.shaped_state:
            return self.members, self.param.shape[0]
        found = self._layouts.get(name)
        if found is None:
            shapes, offsets = rule.state_layout(name, group, self.shapes)
            members = [None if shape is None else (m[0], a, b - a, shape)
                       for m, shape, a, b in zip(self.members, shapes, offsets, offsets[1:])]
            found = self._layouts[name] = (members, offsets[-1])
        return found

    def member_view(self, buffer, member):
        _, offset, size, shape = member
        return buffer[offset:offset + size].reshape(shape)


class SegmentStep:
    """What one step over a segment (or a run of a torch bucket) will use, computed before
    anything is written: the 1-D ``param`` view, the ``state`` buffers by name (the
    segment's own, plus any allocated for this step and not yet attached), the ``step``
    number being taken (1 for the first) and the names of the ``fresh`` (just allocated)
    buffers. A rule's ``kernel_args`` reads these four attributes."""

    __slots__ = ("param", "state", "step", "fresh")

    def __init__(self, param, state, step, fresh):
        self.param, self.state, self.step, self.fresh = param, state, step, fresh


def check_param(array, name):
    check_float_array(array, name)
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray copies it, "
                         "but the optimizer must update the array you train)")
    if not array.flags.writeable:
        raise ValueError(f"{name} is read-only; the optimizer updates it in place")


def build_segments(params, first_index):
    """Split ``params`` (already checked) into segments; indices start at ``first_index``."""
    segments, run = [], []

    def close():
        if run:
            arrays = [params[i] for i in run]
            view = _flat_view(arrays) if len(run) > 1 else plain(arrays[0]).reshape(-1)
            if view is None:  # not one buffer after all: one segment each
                for i in run:
                    segments.append(_single(params[i], first_index + i))
            else:
                members, offset = [], 0
                for i in run:
                    members.append((first_index + i, offset, params[i].size, params[i].shape))
                    offset += params[i].size
                segments.append(Segment(view, members))
            run.clear()

    for i, array in enumerate(params):
        if run:
            last = params[run[-1]]
            if not (_owner(last) is _owner(array) and last.dtype == array.dtype
                    and _address(last) + last.nbytes == _address(array)):
                close()
        run.append(i)
    close()
    return segments


def _single(array, index):
    return Segment(plain(array).reshape(-1), [(index, 0, array.size, array.shape)])
