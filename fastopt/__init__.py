"""fastopt: optimizer update rules compiled with Numba, over flat float32/float64 buffers.

    import fastopt
    flat = fastopt.flatten([w1, b1, w2, b2])   # one buffer; use flat.params as the model
    opt = fastopt.Adam(flat, lr=1e-3)
    ...                                       # write gradients into flat.grads
    opt.step()                                # one kernel call for the whole model
"""

from . import kernels, offload, precision, reference, schedules
from .checkpoint import load, save
from .flat import Flat, flatten
from .optim import CLASSES, Optimizer, clip_grad_norm
from .threads import num_threads

__version__ = "0.1.0"

globals().update(CLASSES)   # fastopt.SGD, fastopt.Adam, ...: one class per registered rule

__all__ = ["flatten", "Flat", "Optimizer", *CLASSES, "clip_grad_norm", "num_threads", "save",
           "load", "kernels", "offload", "precision", "reference", "schedules", "__version__"]
