"""Numba's threading layer: which one runs the parallel twins, and what it guarantees.

fastopt promises two things about its parallel kernels (README "Guarantees"):

* **fork-safe**: a process forked after fastopt ran a parallel kernel can run one itself;
* **thread-safe**: two Python threads may step their own optimizers at the same time.

Numba's TBB layer keeps both; GNU OpenMP (``omp`` with libgomp) terminates a forked child
that starts a parallel region, and ``workqueue`` aborts the process on concurrent use from
two threads. Numba already prefers TBB (``NUMBA_THREADING_LAYER_PRIORITY`` starts with
``tbb``), so fastopt does not choose a layer. It does two small things:

1. :func:`make_tbb_findable`, at import: ``pip install tbb`` (a fastopt dependency on the
   platforms with wheels) puts ``libtbb.so.12`` in ``<venv>/lib``, which the dynamic loader
   does not search, so Numba reports "TBB ... Disabled" (numba/numba#6108). If that file
   exists, and Numba's layer is neither started nor pinned by the user to a non-TBB layer,
   fastopt loads it once, so Numba's own choice can find it. Nothing in ``numba.config``
   is changed; ``NUMBA_THREADING_LAYER=omp`` (or ``workqueue``) still wins, and then
   nothing is loaded.
2. :func:`check_once`, after the first parallel kernel call: if Numba fell back (no TBB) to a
   layer that breaks a guarantee, one :class:`ThreadingLayerWarning` says which and how to
   fix it. A layer the user chose (``NUMBA_THREADING_LAYER``, or a priority list that does
   not start with ``tbb``) is taken as a choice: no warning. Silence it with
   ``warnings.filterwarnings("ignore", category=ThreadingLayerWarning)``.
"""

import ctypes
import os
import sys
import warnings

import numba

#: Layers for which fastopt loads a pip-installed TBB (Numba's own values that try TBB).
_TBB_CHOICES = {"default", "safe", "forksafe", "threadsafe", "tbb"}

_checked = False


class ThreadingLayerWarning(RuntimeWarning):
    """Numba runs fastopt's parallel kernels on a layer that is not fork- and thread-safe."""


def _layer_started():
    from numba.np.ufunc import parallel
    return bool(parallel._is_initialized)


def make_tbb_findable():
    """Load ``<sys.prefix>/lib/libtbb.so.12`` (pip's TBB) if present, on Linux, before
    Numba starts its threading layer, unless the user pinned a non-TBB layer. Returns the
    path loaded, or ``None``. Never raises: a failure leaves Numba's usual choice."""
    if not sys.platform.startswith("linux"):
        return None
    if str(numba.config.THREADING_LAYER).lower() not in _TBB_CHOICES:
        return None
    path = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if not os.path.exists(path):
        return None
    try:
        if _layer_started():
            return None
        ctypes.CDLL(path)  # the loader now resolves "libtbb.so.12" (its soname) to this
    except (OSError, ImportError, AttributeError):
        return None
    return path


def guarantees():
    """``{"layer", "fork_safe", "thread_safe"}`` for the layer that runs the parallel
    kernels; ``layer`` is ``None`` (and the flags ``None``) before the first parallel run."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return {"layer": None, "fork_safe": None, "thread_safe": None}
    if layer == "tbb":
        fork_safe, thread_safe = True, True
    elif layer == "omp":
        from numba.np.ufunc import omppool
        # libgomp terminates a forked child that uses it; Intel's OpenMP does not.
        fork_safe, thread_safe = getattr(omppool, "openmp_vendor", "") == "Intel", True
    else:  # workqueue: aborts on concurrent use from two threads
        fork_safe, thread_safe = True, False
    return {"layer": layer, "fork_safe": fork_safe, "thread_safe": thread_safe}


def check_once():
    """After a parallel kernel ran: warn once if the layer breaks a guarantee and the
    user did not choose it (``NUMBA_THREADING_LAYER``, or a
    ``NUMBA_THREADING_LAYER_PRIORITY`` that does not start with ``tbb``)."""
    global _checked
    if _checked:
        return
    report = guarantees()
    if report["layer"] is None:
        return
    _checked = True
    broken = [name for name in ("fork_safe", "thread_safe") if not report[name]]
    chosen = (str(numba.config.THREADING_LAYER).lower() != "default"
              or list(numba.config.THREADING_LAYER_PRIORITY)[:1] != ["tbb"])
    if not broken or chosen:
        return
    warnings.warn(
        f"fastopt: Numba runs the parallel kernels on its {report['layer']!r} threading "
        f"layer, which is not {' or '.join(n.replace('_', '-') for n in broken)} "
        "(TBB was not found). Install TBB (`pip install tbb`) for both guarantees, or set "
        "NUMBA_THREADING_LAYER to keep this layer and silence this warning.",
        ThreadingLayerWarning, stacklevel=5)
