"""Adadelta (torch.optim.Adadelta): one kernel body."""

import numpy as np
from numba import prange

from .config import kernel
from .halves import gradient, narrow_to, store_pair, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def adadelta(param, grad, square_avg, acc_delta, param_copy,
             lr, rho, one_minus_rho, eps, weight_decay, grad_factor, noise_key=0.0):
    """Adadelta step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * p    # coupled (L2) decay
        r = rho * r + ((1 - rho) * g) * g                       # square_avg
        d = sqrt(a + eps) / sqrt(r + eps) * g                   # a: acc_delta (old)
        a = rho * a + ((1 - rho) * d) * d
        param[i] = p - lr * d
        grad[i] = 0                                             # only if zero_grad
        param_copy[i] = half(param[i])                          # only if write_copy

    Torch's order of operations (``_single_tensor_adadelta``, torch 2.13):
    ``square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)``;
    ``std = square_avg.add(eps).sqrt_()``; ``delta = acc_delta.add(eps).sqrt_()``,
    ``.div_(std).mul_(grad)`` (divide first, then multiply);
    ``acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)``;
    ``param.add_(delta, alpha=-lr)``. Torch's CPU vector loops fuse ``addcmul`` and
    ``add(alpha=)`` into fused multiply-adds; this kernel rounds every product (fastopt
    compiles without ``contract``), a last-bit difference per step. No
    ``weight_decay * p`` term when ``weight_decay`` is 0, as torch.

    Arguments (1-D C-contiguous arrays of one dtype, float32 or float64, except ``grad``
    and ``param_copy``; every scalar of that dtype, precomputed by the host in float64,
    see :meth:`fastopt.rules.adadelta.Adadelta.scalars`):

    * ``param, grad, square_avg, acc_delta``: same length; the state buffers are torch's
      of the same names (zeros before the first step).
    * ``grad`` may hold bfloat16 (``uint16``) or float16 (``int16``) bits over a float32
      ``param`` (:mod:`fastopt.kernels.halves`).
    * ``param_copy``: with ``write_copy``, the same length, receiving the updated float32
      ``param`` as half-precision bits; else ``kernels.unused(np.uint16)`` (untouched).
    * ``lr, rho, one_minus_rho = 1 - rho, eps``; ``weight_decay`` (coupled, 0 for none).
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
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        r = rho * widen(square_avg[i]) + one_minus_rho * g * g
        a = widen(acc_delta[i])
        d = np.sqrt(a + eps) / np.sqrt(r + eps) * g
        store_pair(square_avg, r, acc_delta, rho * a + one_minus_rho * d * d, noise_key, i)
        q = p - lr * d
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
