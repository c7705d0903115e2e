"""Training-loop options shared by :class:`fastopt.optim.Optimizer` and ``fastopt.torch``:
global-norm clipping, loss-scale unscaling and the non-finite skip, as one factor.

Both front ends validate with :func:`fastopt.validation.check_loop_options` (re-exported
here) and compute the factor the kernel multiplies every gradient by with
:func:`loop_scale`, so the semantics are defined once:
``g = grad / grad_scale * min(1, clip_grad_norm / (norm + 1e-6))``.
"""

import math

from ..kernels.reductions import norm_and_finite
from ..validation import check_loop_options

__all__ = ["check_loop_options", "loop_scale"]


def loop_scale(buffers, clip_grad_norm, grad_scale, skip_if_nonfinite):
    """``(factor, norm)`` for one step: ``factor`` is what the kernel multiplies each
    gradient by (before the sign for ``maximize``), or ``None`` when the step is to be
    skipped (``skip_if_nonfinite`` and an Inf/NaN gradient); ``norm`` is the global L2
    norm of the unscaled gradients, or ``None`` when it was not needed.

    ``buffers``: the gradients the step will read, as
    :func:`~fastopt.kernels.reductions.norm_and_finite` takes them (1-D arrays, or
    ``(buffer, block table)`` pairs; a callable returning them is accepted, to defer
    building them). They are read once
    (:func:`fastopt.kernels.reductions.norm_and_finite`), and only when
    ``clip_grad_norm`` is set or ``skip_if_nonfinite`` is true. The options are assumed
    valid (:func:`check_loop_options`).
    """
    scale = 1.0 / grad_scale
    if clip_grad_norm is None and not skip_if_nonfinite:
        return scale, None
    squares, finite = norm_and_finite(buffers() if callable(buffers) else buffers)
    norm = math.sqrt(squares) * scale
    if skip_if_nonfinite and not finite:
        return None, norm
    if clip_grad_norm is not None:
        coefficient = clip_grad_norm / (norm + 1e-6)
        if not coefficient >= 1.0:   # as torch's clamp(max=1): a NaN norm gives NaN
            scale *= coefficient
    return scale, norm
