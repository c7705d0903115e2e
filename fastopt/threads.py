"""Thread count for the parallel kernels, changed only where you ask, and restored."""

import contextlib

import numba

from .validation import check_int


@contextlib.contextmanager
def num_threads(n):
    """Run the enclosed code with ``n`` Numba threads; restore the previous count after.

    fastopt never changes the thread count by itself (not at import, not in a step).
    ``n`` must be an integer (``TypeError`` otherwise; NumPy's too, not a bool) between 1
    and ``numba.config.NUMBA_NUM_THREADS`` (``ValueError`` otherwise; set that environment
    variable before the process starts to allow more).
    """
    n = check_int(n, "num_threads", 1, numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)
