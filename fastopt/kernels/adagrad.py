"""Adagrad."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import gradient, narrow_to, state_noise, store_state, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def adagrad(param, grad, sum, param_copy, clr, eps, weight_decay, grad_factor, noise_key=0.0):
    """Adagrad step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * param[i]
        s = s + g * g
        param[i] -= (clr * g) / (sqrt(s) + eps)
        param_copy[i] = half(param[i])                  # only if write_copy
        grad[i] = 0                                     # only if zero_grad

    ``clr = lr / (1 + (t - 1) * lr_decay)`` is computed by the caller. Arguments:
    ``param, grad, sum`` 1-D C-contiguous arrays of one dtype (float32 or
    float64), same length; scalars ``clr, eps, weight_decay, grad_factor`` of that dtype
    (``grad_factor`` multiplies the gradient first: unscaling, clipping, ``-1`` for
    ``maximize``). Option (compile-time; from Python, pass it last; from ``@njit`` code,
    call ``adagrad.variant(zero_grad=...).parallel``): ``zero_grad, write_copy``.

    Mixed precision (:mod:`fastopt.kernels.halves`): ``grad`` may hold bfloat16/float16
    bits over a float32 ``param``; with ``write_copy`` the updated ``param`` is also
    written, rounded, into ``param_copy`` (else ``kernels.unused(np.uint16)``).

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.

    The order of operations is torch's, so float32 overflows where torch's does and
    nowhere else: ``(clr * g) / (sqrt(s) + eps)`` (torch's CPU ``addcdiv`` computes
    ``self + (value * t1) / t2``, bitwise, measured on torch 2.13), and no
    ``weight_decay * p`` term when ``weight_decay`` is 0 (an infinite ``p`` would make
    ``g`` NaN).
    """
    for i in prange(param.shape[0]):
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        s = widen(sum[i]) + g * g
        sum[i] = store_state(sum, s, state_noise(noise_key, i))
        q = p - (clr * g) / (np.sqrt(s) + eps)
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
