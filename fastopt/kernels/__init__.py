"""The kernels: one ``@njit`` body per rule, compiled per option combination (serial, parallel).

Each kernel updates ``param`` and its state in place, in one pass, over 1-D C-contiguous
float32 or float64 buffers, with every scalar of the buffers' dtype. Signatures and formulas
are in each kernel's docstring; they are public API. The arguments are bound by name
(:mod:`fastopt.kernels.binding`): ``param, grad``, the state buffers by torch's names,
``param_copy``, then the scalars (``grad_factor`` multiplies the gradient).

* From Python: ``fastopt.kernels.adam(...)`` picks the twin by the buffer's size.
* From your own ``@njit`` code: bind a variant's dispatcher to a global name first, e.g.
  ``adam_step = fastopt.kernels.adam.variant(amsgrad=False).parallel``, and call it
  without the options (Numba cannot look attributes up on the ``Kernel`` object itself).

Every module here whose name is also the name of a :class:`Kernel` it defines is a rule's
kernel and is exported under that name (a new kernel module needs no line here).
"""

import importlib
import pkgutil

from .config import PARALLEL_THRESHOLD, Kernel, unused

#: name -> Kernel, for every kernel module of this package.
KERNELS = {}
for _module in pkgutil.iter_modules(__path__):
    _found = getattr(importlib.import_module(f"{__name__}.{_module.name}"), _module.name, None)
    if isinstance(_found, Kernel):
        KERNELS[_module.name] = globals()[_module.name] = _found

__all__ = [*KERNELS, "KERNELS", "Kernel", "PARALLEL_THRESHOLD", "unused"]
