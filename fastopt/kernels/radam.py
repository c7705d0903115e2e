"""RAdam (rectified Adam, torch.optim.RAdam), with coupled or decoupled weight decay."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import gradient, lerp, narrow_to, store_pair, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def radam(param, grad, exp_avg, exp_avg_sq, param_copy,
          lerp_weight, beta2, one_minus_beta2, eps, weight_decay, param_decay,
          bias_correction1, lr, rectified, sqrt_bias_correction2, rect, grad_factor, noise_key=0.0):
    """RAdam step over flat buffers, in place, in one pass.

    For each element ``i``::

        p = param[i] * param_decay                     # decoupled: 1 - lr*wd, else 1
        g = widen(grad[i]) * grad_factor + weight_decay * p   # coupled (L2) decay
        m = lerp(m, g, 1 - beta1)                      # torch's exp_avg.lerp_
        v = beta2 * v + ((1 - beta2) * g) * g
        u = (m / bias_correction1) * lr
        u = (u * ((1 / (sqrt(v) + eps)) * sqrt(bias_correction2))) * rect
                                                       # only while rho_t > 5
        param[i] = p - u
        grad[i] = 0                                    # only if zero_grad
        param_copy[i] = half(param[i])                 # only if write_copy

    The rectification switch (``rho_t > 5``, true from step 6 with torch's default
    ``beta2``) is chosen by the host per step and passed as the scalar ``rectified``:
    1 on a rectified step, 0 on the others. The kernel compares it with 0 (a condition
    on an argument, the same for every element, which LLVM hoists out of the loop), and
    on a rectified step uses it as the numerator of torch's ``reciprocal``:
    ``sqrt(bc2) / tensor`` in torch is ``tensor.reciprocal() * sqrt(bc2)``
    (``Tensor.__rtruediv__``). On a step that is not rectified ``v`` plays no part in the
    update (a NaN in ``v`` does not reach ``param``), as torch.

    Torch's order of operations (``_single_tensor_radam``, torch 2.13), followed here:
    decoupled decay ``param.mul_(1 - lr*wd)`` first (only when ``weight_decay != 0``;
    ``param_decay = 1`` is exact otherwise); coupled decay ``grad + wd * param``;
    ``exp_avg.lerp_(grad, 1 - beta1)`` (see ``lerp_weight``);
    ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)``;
    ``bias_corrected_exp_avg = exp_avg / bias_correction1`` (a true division);
    ``param.add_(bias_corrected_exp_avg * lr * adaptive_lr * rect, alpha=-1.0)``, left
    to right. Torch's CPU vector loops fuse ``lerp``, ``addcmul`` and ``add(alpha=)``
    into fused multiply-adds; this kernel rounds every product (fastopt compiles without
    ``contract``), a last-bit difference per step.

    Arguments (1-D C-contiguous arrays of one dtype, float32 or float64, except ``grad``
    and ``param_copy``; every scalar of that dtype, precomputed by the host in float64,
    see :meth:`fastopt.rules.radam.RAdam.scalars`):

    * ``param, grad, exp_avg, exp_avg_sq``: same length; the state buffers are torch's of
      the same names (zeros before the first step).
    * ``grad`` may hold bfloat16 (``uint16``) or float16 (``int16``) bits over a float32
      ``param`` (:mod:`fastopt.kernels.halves`).
    * ``param_copy``: with ``write_copy``, the same length, receiving the updated float32
      ``param`` as half-precision bits; else ``kernels.unused(np.uint16)`` (untouched).
    * ``lerp_weight``: ``1 - beta1`` when that is below 0.5, else ``(1 - beta1) - 1``;
      its sign picks the base of torch's two-sided ``lerp``:
      ``(m if lerp_weight > 0 else g) + lerp_weight * (g - m)``.
    * ``beta2``, ``one_minus_beta2 = 1 - beta2``, ``eps``.
    * ``weight_decay``: coupled L2 decay, 0 for none or when decoupled.
    * ``param_decay``: ``1 - lr*weight_decay`` when decoupled, else 1.
    * ``bias_correction1 = 1 - beta1**t``; ``lr``.
    * ``rectified``: 1 when ``rho_t > 5``, else 0.
    * ``sqrt_bias_correction2 = (1 - beta2**t) ** 0.5``; ``rect``: the rectification
      term ``sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``
      (both unused when ``rectified`` is 0; the host passes 0 for ``rect`` then).
    * ``grad_factor``: multiplies the gradient first (1/loss_scale, the clip coefficient,
      and -1 for ``maximize``, folded by the host).
    * Options (booleans, compile-time, passed last from Python in this order):
      ``zero_grad, write_copy``.

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.
    """
    for i in prange(param.shape[0]):
        p = param[i] * param_decay
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        m = widen(exp_avg[i])
        m = lerp(m, g, lerp_weight)
        v = beta2 * widen(exp_avg_sq[i]) + one_minus_beta2 * g * g
        store_pair(exp_avg, m, exp_avg_sq, v, noise_key, i)
        u = m / bias_correction1 * lr
        if rectified > 0:   # the same for every element: a per-step switch from the host
            u = u * (rectified / (np.sqrt(v) + eps) * sqrt_bias_correction2) * rect
        q = p - u
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
