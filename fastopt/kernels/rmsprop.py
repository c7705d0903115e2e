"""RMSprop: plain, centered, with momentum, with Nesterov momentum (the seed's form)."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import (gradient, high_half, more_noise, narrow_to, state_noise,
                     store_state, widen)


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
centered = use_momentum = nesterov = eps_in_sqrt = zero_grad = write_copy = False


@kernel(flags=("centered", "use_momentum", "nesterov", "eps_in_sqrt", "zero_grad",
               "write_copy"))
def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, param_copy,
            lr, alpha, one_minus_alpha, eps, weight_decay, grad_factor, momentum, noise_key=0.0):
    """RMSprop step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * param[i]
        r = alpha * r + ((1 - alpha) * g) * g
        c = c + (1 - alpha) * (g - c);  q = r - c * c   # centered (c: grad_avg;
                                                        # q = r where r is Inf)
        q = r                                           # not centered
        d = sqrt(q + eps) if eps_in_sqrt else sqrt(q) + eps
        b = momentum * b + g / d                        # use_momentum
        u = g / d + momentum * b if nesterov else b     # with momentum
        param[i] -= lr * u                              # with momentum
        param[i] -= (lr * g) / d                        # without momentum
        param_copy[i] = half(param[i])                  # only if write_copy
        grad[i] = 0                                     # only if zero_grad

    Arguments: ``param, grad, square_avg`` 1-D C-contiguous arrays of one dtype
    (float32 or float64), same length; ``grad_avg`` (when ``centered``) and
    ``momentum_buffer`` (when ``use_momentum``) the same length, else
    ``kernels.unused(dtype)`` (untouched; never an array sharing memory with another
    argument, such as ``param[:0]``: the loop would run scalar). Scalars ``lr, alpha,
    one_minus_alpha, eps, weight_decay, grad_factor, momentum`` of that dtype
    (``grad_factor`` multiplies the gradient first: unscaling, clipping, ``-1`` for
    ``maximize``). Options (booleans, compile-time: from Python, pass them last in this
    order; from ``@njit`` code, call ``rmsprop.variant(centered=..., ...).parallel``):
    ``centered, use_momentum, nesterov, eps_in_sqrt, zero_grad, write_copy``.

    Mixed precision (:mod:`fastopt.kernels.halves`): ``grad`` may hold bfloat16/float16
    bits over a float32 ``param``; with ``write_copy`` the updated ``param`` is also
    written, rounded, into ``param_copy`` (else ``kernels.unused(np.uint16)``).

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.

    The order of operations is torch's, so float32 overflows where torch's does and
    nowhere else: ``((1 - alpha) * g) * g`` (``addcmul``), ``(lr * g) / d`` without
    momentum (torch's CPU ``addcdiv`` computes ``self + (value * t1) / t2``, bitwise,
    measured on torch 2.13) and ``g / d`` into the momentum buffer,
    no ``weight_decay * p`` term when ``weight_decay`` is 0, and centered ``r - c * c``
    is ``r`` when ``r`` is Inf: torch's ``addcmul`` is one fused multiply-add, whose
    ``c * c`` cannot overflow on its own, so ``Inf - Inf`` (NaN) never happens there.
    """
    for i in prange(param.shape[0]):
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        noise = state_noise(noise_key, i)   # used by bf16 state only
        r = alpha * widen(square_avg[i]) + one_minus_alpha * g * g
        square_avg[i] = store_state(square_avg, r, noise)
        if centered:
            c0 = widen(grad_avg[i])
            c = c0 + one_minus_alpha * (g - c0)
            grad_avg[i] = store_state(grad_avg, c, high_half(noise))
            if r - r == r - r:   # r finite (else keep r: Inf stays Inf, as torch's)
                r = r - c * c
        if eps_in_sqrt:
            d = np.sqrt(r + eps)
        else:
            d = np.sqrt(r) + eps
        if use_momentum:
            u = g / d
            b = momentum * widen(momentum_buffer[i]) + u
            momentum_buffer[i] = store_state(momentum_buffer, b, more_noise(noise))
            if nesterov:
                u = u + momentum * b
            else:
                u = b
            q = p - lr * u
        else:   # torch's addcdiv: (lr * g) / d
            q = p - (lr * g) / d
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
