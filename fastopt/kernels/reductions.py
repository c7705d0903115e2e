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

import numpy as np
from numba import prange

from .config import kernel
from .halves import widen

#: Elements per block of the deterministic reduction.
BLOCK = 8192
#: Float64 accumulator lanes per block (a power of two; see :func:`sum_squares`).
LANES = 256


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

    Within a block, element ``k`` goes to lane ``k % LANES`` of a float64 accumulator
    array: rows of ``LANES`` consecutive elements are added lane by lane, in row order,
    and the lanes are then folded in a fixed halving tree. The order is fixed by
    construction (so the result does not depend on threads), and it is the form LLVM's
    loop vectorizer can take without reassociation (our flags forbid it, and Numba
    leaves the SLP vectorizer off): the inner loop over a row's lanes is element-wise
    (``acc[j] += x[j]**2``, no reduction), so it compiles to packed ``vcvtps2pd`` and
    packed float64 multiply/add. The eight scalar chains this replaces stayed scalar
    (``vcvtss2sd``/``vaddsd``). ``LANES`` = 256 (2 KiB, in L1) spreads each row's loop
    entry (LLVM's run-time check that ``acc`` and ``grad`` do not overlap) over 32 zmm
    iterations; the fold is 255 adds per 8,192 elements.
    A member's sum adds its blocks' partials in order.

    Call :func:`fastopt.kernels.reductions.norm_and_finite` rather than this directly.
    """
    for b in prange(partials.shape[0]):
        m = np.searchsorted(block_offsets, b, side="right") - 1
        start = offsets[m] + (b - block_offsets[m]) * BLOCK
        block = grad[start:min(start + BLOCK, offsets[m + 1])]
        acc = np.zeros(LANES)
        for row in range(0, block.shape[0], LANES):
            x = block[row:row + LANES]
            for j in range(x.shape[0]):
                v = np.float64(widen(x[j]))
                acc[j] += v * v
        half = LANES // 2
        while half:
            for j in range(half):
                acc[j] += acc[j + half]
            half //= 2
        partials[b] = acc[0]
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
