"""The kernels: one ``@njit`` body per rule, compiled per option combination (serial, parallel).

Each kernel updates ``param`` and its state in place, in one pass, over 1-D C-contiguous
float32 or float64 buffers, with every scalar of the buffers' dtype. Signatures and formulas
are in each kernel's docstring; they are public API.

* From Python: ``fastopt.kernels.adam(...)`` picks the twin by the buffer's size.
* From your own ``@njit`` code: bind a variant's dispatcher to a global name first, e.g.
  ``adam_step = fastopt.kernels.adam.variant(amsgrad=False).parallel``, and call it
  without the options (Numba cannot look attributes up on the ``Kernel`` object itself).
"""

from .adagrad import adagrad
from .adam import adam
from .config import PARALLEL_THRESHOLD, Kernel, unused
from .rmsprop import rmsprop
from .sgd import sgd

RULE_KERNELS = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam}

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "Kernel", "PARALLEL_THRESHOLD", "unused",
           "RULE_KERNELS"]
