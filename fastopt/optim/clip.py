"""Standalone gradient clipping by global L2 norm."""

import numpy as np

from ..flat import Flat, check_float_array
from .loop import loop_scale


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; return the
    norm before clipping (a float), as ``torch.nn.utils.clip_grad_norm_`` does.

    ``grads``: a list of float32/float64 arrays or a ``flatten()`` result (its gradient
    buffers). The norm comes from one deterministic read pass (float64 accumulation, the
    same result for any thread count); the scaling is a second pass. Inside an optimizer,
    prefer ``clip_grad_norm=max_norm``: the factor is then folded into the update itself.
    Non-finite gradients give a non-finite norm and are scaled by NaN, as in torch.
    """
    if isinstance(grads, Flat):
        buffers = [b.grad for b in grads.buffers]
    else:
        if isinstance(grads, np.ndarray):
            grads = [grads]
        buffers = []
        for i, grad in enumerate(grads):
            check_float_array(grad, f"grads[{i}]")
            if not grad.flags.c_contiguous:
                raise ValueError(f"grads[{i}] must be C-contiguous")
            if not grad.flags.writeable:
                raise ValueError(f"grads[{i}] is read-only; clipping scales it in place")
            buffers.append(grad.reshape(-1))
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not (
            max_norm > 0):
        raise ValueError(f"Invalid max_norm: {max_norm!r} (must be > 0)")
    coefficient, norm = loop_scale(buffers, max_norm, 1.0, False)
    if coefficient != 1.0:
        for buffer in buffers:
            buffer *= buffer.dtype.type(coefficient)
    return norm
