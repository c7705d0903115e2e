"""The kernels: one ``@njit`` body per rule, each compiled as a serial and a parallel twin.

Each kernel updates ``param`` and its state in place, in one pass, over 1-D C-contiguous
float32 or float64 buffers, with every scalar of the buffers' dtype. Call a kernel from
Python (it picks the twin by size), or ``kernel.parallel`` / ``kernel.serial`` from your own
``@njit`` code. Signatures and formulas are in each kernel's docstring; they are public API.
"""

from .adagrad import adagrad
from .adam import adam
from .config import PARALLEL_THRESHOLD, Kernel
from .rmsprop import rmsprop
from .sgd import sgd

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "Kernel", "PARALLEL_THRESHOLD"]
