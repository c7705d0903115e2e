"""The STREAM triad ``a = b + s*c``: the bandwidth yardstick for the kernels.

Compiled by :func:`fastopt.kernels.config.kernel`, so it has the kernels' flags and
their serial/parallel twins, and calling it picks the twin by size exactly as a rule's
kernel does: its GB/s at a given size and thread count is what a kernel of that size
can hope for. It moves 3 values per element (reads ``b``, ``c``; writes ``a``), counted as
STREAM does (the write-allocate read of ``a`` is not counted).
"""

import numpy as np
from numba import prange

from ..kernels.config import kernel

#: Buffers read and written per element.
READS = ("b", "c")
WRITES = ("a",)


@kernel
def triad(a, b, c, s):
    """``a[i] = b[i] + s * c[i]`` over 1-D C-contiguous arrays of one dtype; ``s`` of
    that dtype."""
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def bytes_per_element(dtype):
    return (len(READS) + len(WRITES)) * np.dtype(dtype).itemsize


def make_call(size, dtype, twin=None, seed=0):
    """A no-argument function running the triad over fresh buffers of ``size`` elements.
    ``twin``: ``"serial"``, ``"parallel"`` or ``None`` (pick by size, as the kernels do)."""
    rng = np.random.default_rng(seed)
    a = np.zeros(size, dtype)
    b, c = (rng.standard_normal(size).astype(dtype) for _ in range(2))
    s = np.dtype(dtype).type(0.5)
    func = triad if twin is None else getattr(triad, twin)

    def call():
        func(a, b, c, s)
    return call


def gbps(dtype, size, seconds):
    """The triad's effective bandwidth, GB/s, from its time at ``size`` elements."""
    return bytes_per_element(dtype) * size / seconds / 1e9


def roofline_ratio(kernel_seconds, kernel_bytes_per_element, triad_seconds, dtype):
    """Kernel time over the time the triad's bandwidth needs for the kernel's bytes
    (same size): 1 means the kernel moves its bytes as fast as the triad; lower is better."""
    floor = triad_seconds * kernel_bytes_per_element / bytes_per_element(dtype)
    return kernel_seconds / floor
