"""NAdam (Dozat 2016, as torch.optim.NAdam): Adam with Nesterov momentum and a warming
momentum schedule; one kernel body for coupled and decoupled weight decay."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import gradient, lerp, narrow_to, store_pair, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def nadam(param, grad, exp_avg, exp_avg_sq, param_copy,
          param_decay, weight_decay, beta1, one_minus_beta1, beta2, one_minus_beta2,
          bias_correction2, eps, grad_coefficient, exp_avg_coefficient, grad_factor, noise_key=0.0):
    """NAdam step over flat buffers, in place, in one pass (torch.optim.NAdam, foreach=False).

    For each element ``i``::

        p  = param[i] * param_decay                  # decoupled: param_decay = 1 - lr*wd
        g  = widen(grad[i]) * grad_factor + weight_decay * p   # coupled (L2) decay
        grad[i] = 0                                  # only if zero_grad
        m  = lerp(m, g, 1 - beta1)                   # torch's lerp_: m + (1-beta1)*(g - m)
                                                     # (g - (g - m)*beta1 if 1-beta1 >= 0.5)
        v  = beta2 * v + ((1 - beta2) * g) * g
        d  = sqrt(v / bias_correction2) + eps
        q  = p + (grad_coefficient * g) / d          # torch's first addcdiv_
        q  = q + (exp_avg_coefficient * m) / d       # torch's second addcdiv_
        param[i] = q
        param_copy[i] = half(q)                      # only if write_copy

    The momentum schedule is torch's: ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``,
    ``mu_product_t = mu_1*...*mu_t``, and the host passes (in float64, then cast)::

        grad_coefficient    = -lr * (1 - mu_t) / (1 - mu_product_t)
        exp_avg_coefficient = (-lr * mu_{t+1}) / (1 - mu_product_t * mu_{t+1})
        bias_correction2    = 1 - beta2**t

    (:meth:`fastopt.rules.nadam.NAdam.scalars`). The order of operations is torch's
    single-tensor one as far as an unfused kernel can follow it: torch's CPU ``lerp_``,
    ``add(alpha=)`` and ``addcmul_`` round once through a fused multiply-add, this kernel
    twice (``FASTMATH`` is empty), so float32 results differ from torch's by an ulp or so
    per step; ``addcdiv_`` is ``self + (value * t1) / t2`` in both. There is no
    ``weight_decay * p`` term when ``weight_decay`` is 0 (an infinite ``p`` would make
    ``g`` NaN), as in torch.

    Arguments (all arrays 1-D, C-contiguous, one dtype, float32 or float64, except
    ``grad`` and ``param_copy``; every scalar of the state's dtype, precomputed by the
    caller, so a float32 kernel never promotes to float64):

    * ``param, grad, exp_avg, exp_avg_sq``: same length; the state buffers are named as
      torch's state keys. ``grad`` may also hold half-precision bits over a float32
      ``param``: bfloat16 as ``uint16``, float16 as ``int16`` (:mod:`fastopt.kernels.halves`).
    * ``param_copy``: when ``write_copy``, the same length, receiving the updated float32
      ``param`` rounded to nearest even (``uint16``: bfloat16 bits, ``int16``: float16
      bits); else ``kernels.unused(np.uint16)`` (untouched).
    * ``param_decay``: ``1 - lr*weight_decay`` with ``decoupled_weight_decay``, else 1.
    * ``weight_decay``: coupled L2 decay; 0 for none or with ``decoupled_weight_decay``.
    * ``beta1, one_minus_beta1 = 1 - beta1, beta2, one_minus_beta2 = 1 - beta2``.
    * ``bias_correction2 = 1 - beta2**t``; ``eps``.
    * ``grad_coefficient, exp_avg_coefficient``: as above (both negative, ``lr`` included).
    * ``grad_factor``: multiplies the gradient first (loss-scale unscaling, clipping, and
      ``-1`` for ``maximize``).
    * Options (booleans, compile-time: from Python, pass them last in this order; from
      ``@njit`` code, call ``nadam.variant(zero_grad=...).parallel``): ``zero_grad,
      write_copy``.

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.
    """
    # torch's lerp weight 1 - beta1 and its formula (halves.lerp): w, or w - 1 = -beta1
    weight = one_minus_beta1 if abs(one_minus_beta1) < 0.5 else -beta1
    for i in prange(param.shape[0]):
        p = param[i] * param_decay
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        m = widen(exp_avg[i])
        m = lerp(m, g, weight)
        v = beta2 * widen(exp_avg_sq[i]) + one_minus_beta2 * g * g
        store_pair(exp_avg, m, exp_avg_sq, v, noise_key, i)
        d = np.sqrt(v / bias_correction2) + eps
        q = p + grad_coefficient * g / d
        q = q + exp_avg_coefficient * m / d
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
