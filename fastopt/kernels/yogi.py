"""Yogi: Adam with an additive, sign-controlled second moment."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import gradient, narrow_to, store_pair, widen

# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def yogi(param, grad, exp_avg, exp_avg_sq, param_copy, beta1, one_minus_beta1,
         one_minus_beta2, step_size, inv_sqrt_bias_correction2, eps, weight_decay,
         grad_factor, noise_key=0.0):
    """Yogi step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * p    # coupled (L2) decay
        m = beta1 * m + (1 - beta1) * g
        v = v - (1 - beta2) * sign(v - g*g) * (g*g)            # sign(NaN) is NaN
        param[i] = p - step_size * (m / (sqrt(v) * inv_sqrt_bias_correction2 + eps))
        param_copy[i] = half(param[i])                         # only if write_copy
        grad[i] = 0                                            # only if zero_grad

    ``step_size = lr / (1 - beta1**t)``, ``inv_sqrt_bias_correction2 = 1/sqrt(1 - beta2**t)``
    (host-derived, as Adam's). Arrays: ``param, grad, exp_avg, exp_avg_sq`` (same length;
    the state starts at ``initial_accumulator_value``, both buffers, as optax's), ``grad``
    possibly bfloat16/float16 bits, ``param_copy`` as the other kernels'. Scalars of the
    buffers' dtype; ``grad_factor`` multiplies the gradient first. Options:
    ``zero_grad, write_copy``.

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.
    """
    for i in prange(param.shape[0]):
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        m = beta1 * widen(exp_avg[i]) + one_minus_beta1 * g
        g2 = g * g
        v = widen(exp_avg_sq[i])
        v = v - one_minus_beta2 * np.sign(v - g2) * g2
        store_pair(exp_avg, m, exp_avg_sq, v, noise_key, i)
        q = p - step_size * (m / (np.sqrt(v) * inv_sqrt_bias_correction2 + eps))
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
