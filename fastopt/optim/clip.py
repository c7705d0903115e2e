"""Standalone gradient clipping by global L2 norm."""

import numpy as np

from ..flat import Flat, check_float_array
from ..kernels.reductions import block_table
from ..precision import kernel_array
from ..validation import check_real
from .loop import loop_scale
from .segments import plain


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; return the
    norm before clipping (a float), as ``torch.nn.utils.clip_grad_norm_`` does.

    ``grads``: a list of float32/float64 (or bfloat16/float16) arrays or a ``flatten()``
    result (its gradient buffers). ``max_norm``: a real number > 0 (NumPy scalars too). The norm comes from one
    deterministic read pass (float64 accumulation, the same bits for any thread count and
    for one flat buffer or the same values as separate arrays); the scaling is a second
    pass. Everything is checked before anything is scaled. Inside an optimizer, prefer
    ``clip_grad_norm=max_norm``: the factor is then folded into the update itself.
    Non-finite gradients give a non-finite norm and are scaled by NaN, as in torch.
    """
    max_norm = check_real(max_norm, "max_norm", 0.0, low_open=True)
    if isinstance(grads, Flat):
        buffers = [b.grad for b in grads.buffers]
        pieces = [(kernel_array(b.grad), block_table(tuple(np.diff(b.offsets).tolist())))
                  for b in grads.buffers]
        names = [f"the flatten() gradient buffer of {b.grad.dtype}" for b in grads.buffers]
    else:
        if isinstance(grads, np.ndarray):
            grads = [grads]
        buffers, names = [], []
        for i, grad in enumerate(grads):
            check_float_array(grad, f"grads[{i}]")
            if not grad.flags.c_contiguous:
                raise ValueError(f"grads[{i}] must be C-contiguous")
            buffers.append(plain(grad).reshape(-1))
            names.append(f"grads[{i}]")
        pieces = [kernel_array(buffer) for buffer in buffers]   # half: read as bits
    for buffer, name in zip(buffers, names):
        if not buffer.flags.writeable:
            raise ValueError(f"{name} is read-only; clipping scales it in place")
    coefficient, norm = loop_scale(pieces, max_norm, 1.0, False)
    if coefficient != 1.0:
        for buffer in buffers:
            buffer *= buffer.dtype.type(coefficient)
    return norm
