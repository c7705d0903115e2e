"""Thread count for the parallel kernels, changed only where you ask, and restored."""

import contextlib

import numba


@contextlib.contextmanager
def num_threads(n):
    """Run the enclosed code with ``n`` Numba threads; restore the previous count after.

    fastopt never changes the thread count by itself (not at import, not in a step).
    ``n`` must be between 1 and ``numba.config.NUMBA_NUM_THREADS`` (set that environment
    variable before the process starts to allow more).
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"Invalid number of threads: {n!r} (must be an int in [1, {limit}])")
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)
