"""Reductions over gradient buffers: squared L2 norm and finiteness, in one read pass.

The buffer is cut into fixed blocks of ``BLOCK`` elements; each block's partial sum is
computed serially in index order, and the partials are added in block order. The threads
only decide who computes which block, so the result is bitwise identical for any thread
count (and equal between the serial and parallel twins).
"""

import numpy as np
from numba import prange

from .config import kernel

#: Elements per block of the deterministic reduction.
BLOCK = 8192


@kernel
def sum_squares(grad, partials):
    """Write each block's ``sum(float64(grad[i])**2)`` and ``sum(grad[i] * 0)`` into
    ``partials`` (float64, shape ``(ceil(len(grad) / BLOCK), 2)``).

    Summed in order over blocks: column 0 is the squared L2 norm (accumulated in float64,
    so a float32 buffer cannot overflow); column 1 is 0 when every element is finite and
    NaN when any is Inf or NaN (``x * 0`` is NaN exactly for non-finite ``x``).

    Call :func:`fastopt.kernels.reductions.norm_and_finite` rather than this directly.
    """
    n = grad.shape[0]
    for b in prange(partials.shape[0]):
        start = b * BLOCK
        stop = min(start + BLOCK, n)
        squares = 0.0
        bad = 0.0
        for i in range(start, stop):
            x = np.float64(grad[i])
            squares += x * x
            bad += x * 0.0
        partials[b, 0] = squares
        partials[b, 1] = bad


def norm_and_finite(buffers):
    """``(sum of squares over all buffers, all elements finite)``, deterministically.

    ``buffers``: 1-D float32/float64 arrays, in a fixed order; one read pass over each.
    """
    total, bad = 0.0, 0.0
    for grad in buffers:
        partials = np.empty(((grad.shape[0] + BLOCK - 1) // BLOCK, 2))
        sum_squares(grad, partials)
        total += float(partials[:, 0].sum())   # NumPy sums a fixed-size array in a fixed order
        bad += float(partials[:, 1].sum())
    return total, bad == 0.0
