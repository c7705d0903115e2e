"""Reductions over gradient buffers: squared L2 norm and finiteness, in one read pass.

A buffer holds one or more members (the parameters laid end to end in it). Each member is
cut into fixed blocks of ``BLOCK`` elements anchored at the member's own first element;
each block's partial sum is computed in a fixed order of its own (float64 lanes folded
in a fixed tree, :func:`sum_squares`), a member's sum is its
blocks' partials added in block order, and the members' sums are added exactly
(``math.fsum``). The threads only decide who computes which block, so the result is
bitwise identical for any thread count (and between the serial and parallel twins), and
it depends only on the members' values: one flat buffer and the same values as separate
arrays give the same bits.
"""

import functools
import math
import types as types_module

import numpy as np
from numba import prange, types
from numba.extending import overload, register_jitable

from .config import kernel
from .halves import widen

#: Elements per block of the deterministic reduction.
BLOCK = 8192
#: Float64 accumulator lanes per block (a power of two; see :func:`sum_squares`).
LANES = 256


def block_squares(block):
    """``sum(float64(widen(x))**2)`` over one block, in a fixed order chosen by the
    block's element type at compile time (Numba dispatches on it, as ``widen`` does):

    * 32- and 16-bit elements (float32, bfloat16/float16 bits): element ``k`` goes to
      lane ``k % LANES`` of a float64 accumulator array; rows of ``LANES`` elements are
      added lane by lane in row order, then the lanes fold in a fixed halving tree. The
      row loop is element-wise (``acc[j] += x[j]**2``, no reduction), the form LLVM's loop
      vectorizer takes without reassociation (our flags forbid it, and Numba leaves the
      SLP vectorizer off): packed ``vcvtps2pd`` and packed float64 multiply/add, where
      scalar chains stayed scalar (``vcvtss2sd``/``vaddsd``). At 1e7 float32 the pass went
      from 1.26 to 0.56 ms (2 threads). ``LANES`` = 256 (2 KiB, in L1) spreads each row's
      loop entry (a run-time overlap check) over 32 zmm iterations.
    * float64: eight scalar chains taking every eighth element, added in a fixed tree.
      No conversion to vectorize, and the lane form measured slower here (1.42 against
      2.27 ms at 1e7, 2 threads), so float64 keeps the chains.
    """


@overload(block_squares, inline="always")
def _block_squares(block):
    if block.dtype == types.float64:
        return _chain_squares
    return _lane_squares


@register_jitable(inline="always")
def _lane_squares(block):
    acc = np.zeros(LANES)
    for row in range(0, block.shape[0], LANES):
        x = block[row:row + LANES]
        for j in range(x.shape[0]):
            v = np.float64(widen(x[j]))
            acc[j] += v * v
    return _fold_lanes_inlined(acc)


@register_jitable
def fold_lanes(acc):
    """The sum of ``acc`` (float64 lane accumulators), folded in a fixed halving tree; the
    order every lane-summed block uses (here and :mod:`fastopt.kernels.segmented`).
    ``acc`` is consumed."""
    half = acc.shape[0] // 2
    while half:
        for j in range(half):
            acc[j] += acc[j + half]
        half //= 2
    return acc[0]


#: :func:`fold_lanes`, the same code, inlined by Numba (IR inlining) where the norm pass
#: calls it, as :func:`block_squares` and its lane loop are: called as a function, the
#: lane array escaping into it made the pass about 12% slower (1e7 float32, 2 threads:
#: 0.47-0.57 against 0.43-0.50 ms). LAMB and Adafactor, which fold two arrays per block,
#: call it as a function (inlined twice there, Numba's SSA pass warns).
_fold_lanes_inlined = register_jitable(inline="always")(types_module.FunctionType(
    fold_lanes.__code__, fold_lanes.__globals__, "fold_lanes_inlined"))


@register_jitable(inline="always")
def _chain_squares(block):
    stop = block.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    i = 0
    while i + 8 <= stop:
        s0 += block[i] * block[i]
        s1 += block[i + 1] * block[i + 1]
        s2 += block[i + 2] * block[i + 2]
        s3 += block[i + 3] * block[i + 3]
        s4 += block[i + 4] * block[i + 4]
        s5 += block[i + 5] * block[i + 5]
        s6 += block[i + 6] * block[i + 6]
        s7 += block[i + 7] * block[i + 7]
        i += 8
    while i < stop:
        s0 += block[i] * block[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@kernel
def sum_squares(grad, offsets, block_offsets, partials, member_sums):
    """Write each member's ``sum(float64(widen(x))**2)`` into ``member_sums``, accumulated
    in float64 so a float32 buffer cannot overflow. An Inf or NaN element makes its
    member's sum Inf or NaN.

    ``grad``: 1-D float32/float64 buffer, or bfloat16/float16 bits (``uint16``/``int16``,
    :mod:`fastopt.kernels.halves`), each element widened exactly (``widen``). Member
    ``m`` is ``grad[offsets[m]:offsets[m+1]]`` and owns blocks ``block_offsets[m]`` to
    ``block_offsets[m+1]`` (``ceil(size / BLOCK)`` of them, the first at its first
    element). ``offsets``, ``block_offsets``: int64, length members + 1, from
    :func:`block_table`. ``partials``: float64 scratch, one per block; ``member_sums``:
    float64 output, one per member.

    A block's sum of squares is :func:`block_squares` (a fixed order per input type).
    A member's sum adds its blocks' partials in order.

    Call :func:`fastopt.kernels.reductions.norm_and_finite` rather than this directly.
    """
    for b in prange(partials.shape[0]):
        m = np.searchsorted(block_offsets, b, side="right") - 1
        start = offsets[m] + (b - block_offsets[m]) * BLOCK
        block = grad[start:min(start + BLOCK, offsets[m + 1])]
        partials[b] = block_squares(block)
    for m in range(member_sums.shape[0]):
        s = 0.0
        for b in range(block_offsets[m], block_offsets[m + 1]):
            s += partials[b]
        member_sums[m] = s


@functools.lru_cache(maxsize=1024)
def block_table(sizes):
    """``(offsets, block_offsets)`` for members of ``sizes`` (a tuple of ints) elements
    laid end to end in one buffer: read-only int64 arrays of length ``len(sizes) + 1``
    (see :func:`sum_squares`). Cached: a model's layouts repeat every step."""
    sizes = np.array(sizes, dtype=np.int64).reshape(-1)
    offsets = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    block_offsets = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    np.cumsum((sizes + BLOCK - 1) // BLOCK, out=block_offsets[1:])
    offsets.flags.writeable = block_offsets.flags.writeable = False
    return offsets, block_offsets


def norm_and_finite(pieces):
    """``(sum of squares over all pieces, all elements finite)``, deterministically and
    independently of how the members are laid out.

    ``pieces``: 1-D float32/float64 arrays (each one member), or ``(buffer, table)`` pairs
    whose ``table`` is :func:`block_table` of the members laid end to end in ``buffer``;
    an array or buffer may also hold bfloat16/float16 bits as the kernels take them
    (``uint16``/``int16``, :mod:`fastopt.kernels.halves`), read in their own format.
    One read pass over each. The members' sums are added exactly (``math.fsum``), so
    neither their order nor how they are grouped into buffers changes a bit. A
    non-finite sum means an Inf/NaN element or (float64 elements beyond ~1e154) an
    overflow; only then does a second pass (``np.isfinite``) tell the two apart.
    Half-precision squares (at most ~1.2e77) cannot overflow the float64 sum, so there a
    non-finite sum is a non-finite element.
    """
    sums, buffers = [], []
    for piece in pieces:
        grad, (offsets, block_offsets) = piece if isinstance(piece, tuple) else (
            piece, block_table((piece.shape[0],)))
        member_sums = np.empty(offsets.shape[0] - 1)
        sum_squares(grad, offsets, block_offsets, np.empty(int(block_offsets[-1])),
                    member_sums)
        sums.append(member_sums)
        buffers.append(grad)
    try:
        total = math.fsum(np.concatenate(sums).tolist()) if sums else 0.0
    except OverflowError:   # finite sums whose exact total is beyond float64
        total = math.inf
    if math.isfinite(total):
        return total, True
    return total, all(grad.dtype.kind == "f" and bool(np.isfinite(grad).all())
                      for grad in buffers)
