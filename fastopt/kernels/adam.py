"""Adam and AdamW: one kernel body for both."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import (gradient, high_half, narrow_to, state_noise, store_pair, store_state,
                     widen)


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
amsgrad = zero_grad = write_copy = False


@kernel(flags=("amsgrad", "zero_grad", "write_copy"))
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, param_copy,
         step_size, beta1, one_minus_beta1, beta2, one_minus_beta2,
         inv_sqrt_bias_correction2, eps, weight_decay, param_decay, grad_factor, noise_key=0.0):
    """Adam / AdamW step over flat buffers, in place, in one pass.

    For each element ``i``::

        p  = param[i] * param_decay                # AdamW: param_decay = 1 - lr*wd
        g  = widen(grad[i]) * grad_factor + weight_decay * p   # Adam's coupled (L2) decay
        m  = beta1 * m + (1 - beta1) * g
        v  = beta2 * v + ((1 - beta2) * g) * g
        vmax = maximum(vmax, v)                    # only if amsgrad; NaN propagates
        (m, v, vmax stored as they are, or rounded stochastically into bf16 state)
        param[i] = p - (step_size * m) / (sqrt(v or vmax) * inv_sqrt_bias_correction2 + eps)
        param_copy[i] = half(param[i])             # only if write_copy
        grad[i] = 0                                # only if zero_grad

    The order of operations is torch's, so float32 overflows where torch's does and
    nowhere else: ``((1 - beta2) * g) * g`` (``addcmul``; ``(1 - beta2) * (g * g)``
    would make ``v`` Inf for ``|g|`` above ~1.8e19), ``(step_size * m) / denominator``
    (torch's CPU ``addcdiv`` computes ``self + (value * t1) / t2``: bitwise, measured on
    torch 2.13), no ``weight_decay * p`` term when ``weight_decay`` is 0 (an infinite
    ``p`` would make ``g`` NaN), and amsgrad's maximum propagates NaN. The one
    difference: the denominator multiplies by ``1/sqrt(1 - beta2**t)`` where torch
    divides by ``sqrt(1 - beta2**t)`` (a division per element saved; a rounding apart).

    Arguments (all arrays 1-D, C-contiguous, one dtype, float32 or float64, except
    ``grad`` and ``param_copy``; every scalar of the state's dtype, precomputed by the
    caller, so a float32 kernel never promotes to float64):

    * ``param, grad, exp_avg, exp_avg_sq``: same length. ``max_exp_avg_sq``: same
      length when ``amsgrad``, else ``kernels.unused(dtype)`` (untouched). Never pass a
      dummy that shares memory with another argument (``param[:0]``): LLVM's run-time
      overlap check then fails and the scalar loop runs.
    * ``grad`` may also hold half-precision bits over a float32 ``param``: bfloat16 as
      ``uint16``, float16 as ``int16`` (:mod:`fastopt.kernels.halves`), widened exactly.
    * ``param_copy``: when ``write_copy``, the same length, receiving the updated float32
      ``param`` rounded to nearest even (``uint16``: bfloat16 bits, ``int16``: float16
      bits, as torch's ``.to()``); else ``kernels.unused(np.uint16)`` (untouched).
    * ``step_size = lr / (1 - beta1**t)``; ``inv_sqrt_bias_correction2 = 1/sqrt(1 - beta2**t)``.
    * ``one_minus_beta1 = 1 - beta1``, ``one_minus_beta2 = 1 - beta2``.
    * ``weight_decay``: coupled L2 decay (Adam), 0 for none or for AdamW.
    * ``param_decay``: decoupled decay factor ``1 - lr*weight_decay`` (AdamW), 1 for none.
    * ``grad_factor``: multiplies the gradient first (loss-scale unscaling, clipping,
      and ``-1`` for ``maximize``).
    * ``exp_avg, exp_avg_sq, max_exp_avg_sq`` may instead hold bfloat16 bits (``uint16``)
      over a float32 ``param``: low-precision state, loaded exactly and stored with
      stochastic rounding from ``state_noise(noise_key, i)``
      (:mod:`fastopt.kernels.halves`); ``noise_key`` (a whole number below 2**24;
      default 0, so callers of the float kernels may omit it) is unused with float state.
    * Options (booleans, compile-time: from Python, pass them last in this order; from
      ``@njit`` code, call ``adam.variant(amsgrad=..., zero_grad=...).parallel``):
      ``amsgrad, zero_grad, write_copy``.
    """
    for i in prange(param.shape[0]):
        p = param[i] * param_decay
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        m = beta1 * widen(exp_avg[i]) + one_minus_beta1 * g
        v = beta2 * widen(exp_avg_sq[i]) + one_minus_beta2 * g * g
        store_pair(exp_avg, m, exp_avg_sq, v, noise_key, i)
        if amsgrad:   # torch.maximum's: a NaN on either side gives NaN
            vmax = widen(max_exp_avg_sq[i])
            v = v if vmax <= v or v != v else vmax
            # v's bits: a new maximum is stored exactly as the v it equals
            max_exp_avg_sq[i] = store_state(max_exp_avg_sq, v,
                                            high_half(state_noise(noise_key, i)))
        q = p - (step_size * m) / (np.sqrt(v) * inv_sqrt_bias_correction2 + eps)
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
