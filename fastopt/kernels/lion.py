"""Lion: evolved sign momentum (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms"), as the ``lion-pytorch`` package and optax's ``lion``."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import narrow_to, state_noise, store_state, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def lion(param, grad, exp_avg, param_copy, param_decay, lr, beta1, one_minus_beta1,
         beta2, one_minus_beta2, grad_factor, noise_key=0.0):
    """Lion step over flat buffers, in place, in one pass.

    For each element ``i``::

        p  = param[i] * param_decay                  # decoupled: 1 - lr*weight_decay
        g  = widen(grad[i]) * grad_factor
        grad[i] = 0                                  # only if zero_grad
        c  = beta1 * m + (1 - beta1) * g             # the interpolation that is signed
        q  = p - lr * sign(c)                        # sign(0) = 0, sign(NaN) = NaN
        m  = beta2 * m + (1 - beta2) * g             # the momentum kept
        param[i] = q
        param_copy[i] = half(q)                      # only if write_copy

    The order is ``lion-pytorch``'s ``update_fn`` (``p.mul_(1 - lr*wd)``, ``m*beta1 +
    (1-beta1)*g``, ``sgn_``, ``p.add_(update, alpha=-lr)``, ``m*beta2 + (1-beta2)*g``);
    torch's CPU ``add(alpha=)`` fuses its multiply-add and this kernel does not, which
    can only flip the sign of a ``c`` within an ulp of 0. A NaN ``c`` (a NaN gradient or
    momentum) makes the parameter NaN, as ``np.sign`` does, so finiteness checks see it;
    torch 2.13's CPU ``sign``/``sgn`` map NaN to 0 instead, which would freeze the
    parameter silently while the momentum stays NaN forever.

    Arguments (all arrays 1-D, C-contiguous, one dtype, float32 or float64, except
    ``grad`` and ``param_copy``; every scalar of the state's dtype, precomputed by the
    caller, so a float32 kernel never promotes to float64):

    * ``param, grad, exp_avg``: same length; ``exp_avg`` is the momentum (the state key
      of ``lion-pytorch``). ``grad`` may also hold half-precision bits over a float32
      ``param`` (bfloat16 as ``uint16``, float16 as ``int16``; :mod:`fastopt.kernels.halves`).
    * ``param_copy``: when ``write_copy``, the same length, receiving the updated float32
      ``param`` rounded to nearest even (``uint16``: bfloat16 bits, ``int16``: float16
      bits); else ``kernels.unused(np.uint16)`` (untouched).
    * ``param_decay = 1 - lr*weight_decay`` (1 for none); ``lr``: the step size.
    * ``beta1, one_minus_beta1 = 1 - beta1``: the interpolation for the update;
      ``beta2, one_minus_beta2 = 1 - beta2``: the momentum's decay.
    * ``grad_factor``: multiplies the gradient first (loss-scale unscaling, clipping, and
      ``-1`` for ``maximize``).
    * ``exp_avg`` may instead hold bfloat16 bits (``uint16``) over a float32 ``param``:
      low-precision state, loaded exactly and stored with stochastic rounding from
      ``state_noise(noise_key, i)`` (:mod:`fastopt.kernels.halves`); ``noise_key`` (a
      whole number below 2**24; default 0, so callers of the float kernels may omit it)
      is unused with float state.
    * Options (booleans, compile-time: from Python, pass them last in this order; from
      ``@njit`` code, call ``lion.variant(zero_grad=...).parallel``): ``zero_grad,
      write_copy``.
    """
    for i in prange(param.shape[0]):
        p = param[i] * param_decay
        g = widen(grad[i]) * grad_factor
        if zero_grad:
            grad[i] = 0
        m = widen(exp_avg[i])
        c = beta1 * m + one_minus_beta1 * g
        q = p - lr * np.sign(c)
        exp_avg[i] = store_state(exp_avg, beta2 * m + one_minus_beta2 * g,
                                 state_noise(noise_key, i))
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
