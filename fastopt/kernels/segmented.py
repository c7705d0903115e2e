"""Per-tensor (per-member) reductions over a flat buffer of several members.

A rule whose update depends on a norm or a sum over each parameter tensor (LAMB's trust
ratio, Adafactor's factored second moments) still runs over one flat buffer per segment
(:mod:`fastopt.optim.segments`) or run (:mod:`fastopt.torch.buckets`). It uses the block
layout of the global norm (:func:`~fastopt.kernels.reductions.block_table`): each member is
cut into blocks of ``BLOCK`` elements anchored at its own first element, so a block never
spans two members; a first pass writes one float64 partial per block (``prange`` over
blocks, each block summed in a fixed order: :func:`~fastopt.kernels.reductions.fold_lanes`), and the per-member sums
add each member's partials in block order (:func:`member_sums`). Threads only decide who
computes which block, so the sums are bitwise identical for any thread count, for the
serial and parallel twins, and for one flat buffer or the same values as separate arrays.

Helpers here are ``@register_jitable``: call them from kernel bodies.
"""

import functools

import numpy as np
from numba import types
from numba.extending import overload, register_jitable

from .reductions import BLOCK, LANES, block_table


@register_jitable
def block_span(b, offsets, block_offsets):
    """``(member, start, stop)`` of block ``b`` of a :func:`block_table` layout: the
    member that owns it and its elements ``start:stop`` in the flat buffer."""
    m = np.searchsorted(block_offsets, b, side="right") - 1
    start = offsets[m] + (b - block_offsets[m]) * BLOCK
    return m, start, min(start + BLOCK, offsets[m + 1])


@register_jitable
def lanes():
    """Fresh float64 lane accumulators for one block: element ``k`` of a block (counted
    from the block's start) adds into lane ``k % LANES``, rows in order."""
    return np.zeros(LANES)


@register_jitable
def member_sums(partials, block_offsets, out):
    """``out[m]`` = the partials of member ``m``'s blocks added in block order (float64);
    0 for a member without elements."""
    for m in range(out.shape[0]):
        s = 0.0
        for b in range(block_offsets[m], block_offsets[m + 1]):
            s += partials[b]
        out[m] = s


def cast_like(like, x):
    """``x`` (a float64) rounded to the type of the scalar ``like``; ``@njit`` only."""
    raise NotImplementedError("cast_like is for @njit code")


@overload(cast_like)
def _cast_like(like, x):
    if like == types.float32:
        return lambda like, x: np.float32(x)
    if like == types.float64:
        return lambda like, x: np.float64(x)
    return None


class Layout:
    """The block layout of members of ``sizes`` elements laid end to end: ``offsets``,
    ``block_offsets`` (read-only int64, :func:`block_table`), ``blocks`` (their count)
    and ``total`` (elements)."""

    __slots__ = ("sizes", "offsets", "block_offsets", "blocks", "total")

    def __init__(self, sizes):
        self.sizes = sizes
        self.offsets, self.block_offsets = block_table(sizes)
        self.blocks = int(self.block_offsets[-1])
        self.total = int(self.offsets[-1])

    def __repr__(self):
        return f"<Layout of {len(self.sizes)} member(s), {self.total} elements>"


@functools.lru_cache(maxsize=1024)
def layout(sizes):
    """The cached :class:`Layout` of ``sizes`` (a tuple of ints)."""
    return Layout(tuple(int(n) for n in sizes))
