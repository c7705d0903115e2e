"""Adamax (Adam's infinity-norm variant, torch.optim.Adamax): one kernel body."""

from numba import prange

from .config import kernel
from .halves import gradient, lerp, narrow_to, store_pair, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def adamax(param, grad, exp_avg, exp_inf, param_copy,
           lerp_weight, beta2, eps, step_size, weight_decay, grad_factor, noise_key=0.0):
    """Adamax step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * p     # coupled (L2) decay
        m = lerp(m, g, 1 - beta1)                                # torch's exp_avg.lerp_
        u = maximum(beta2 * u, abs(g) + eps)                     # NaN propagates
        param[i] = p - (step_size * m) / u                       # torch's addcdiv
        grad[i] = 0                                              # only if zero_grad
        param_copy[i] = half(param[i])                           # only if write_copy

    Torch's order of operations (``_single_tensor_adamax``, torch 2.13):

    * ``lerp``: torch computes ``m + w * (g - m)`` for a weight ``w = 1 - beta1`` below
      0.5 and ``g + (w - 1) * (g - m)`` from 0.5 on (``beta1 <= 0.5``); the two differ
      in rounding and for an infinite ``g`` (the second gives NaN). The host passes
      ``lerp_weight`` as ``w`` or ``w - 1`` and its sign picks the base (``m`` when
      positive, ``g`` otherwise), one formula: ``base + lerp_weight * (g - m)``.
    * ``exp_inf.mul_(beta2)`` then ``torch.maximum(.., grad.abs().add_(eps))``:
      ``torch.maximum`` returns NaN when either side is NaN, and so does this kernel.
    * ``param.addcdiv_(exp_avg, exp_inf, value=-clr)`` is ``p + ((-clr) * m) / u``
      (the product first, then the division: measured on torch 2.13's CPU kernel),
      equal to ``p - (step_size * m) / u``.
    * No ``weight_decay * p`` term when ``weight_decay`` is 0 (an infinite ``p`` would
      make ``g`` NaN), as torch.
    * Torch's CPU kernels fuse ``lerp``, ``add(alpha=)`` (the decay) and ``addcmul`` into
      fused multiply-adds in their vector loops; this kernel rounds every product
      (fastopt compiles without ``contract``), a last-bit difference per step.

    Arguments (1-D C-contiguous arrays of one dtype, float32 or float64, except ``grad``
    and ``param_copy``; every scalar of that dtype, precomputed by the host in float64,
    see :meth:`fastopt.rules.adamax.Adamax.scalars`):

    * ``param, grad, exp_avg, exp_inf``: same length; ``exp_avg`` and ``exp_inf`` are
      torch's state of the same names (zeros before the first step).
    * ``grad`` may hold bfloat16 (``uint16``) or float16 (``int16``) bits over a float32
      ``param`` (:mod:`fastopt.kernels.halves`).
    * ``param_copy``: with ``write_copy``, the same length, receiving the updated float32
      ``param`` rounded to bfloat16 (``uint16``) or float16 (``int16``) bits; else
      ``kernels.unused(np.uint16)`` (untouched).
    * ``lerp_weight``: ``1 - beta1`` when that is below 0.5, else ``(1 - beta1) - 1``.
    * ``beta2``; ``eps``; ``step_size = lr / (1 - beta1**t)``;
      ``weight_decay`` (coupled, 0 for none).
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
        m = widen(exp_avg[i])
        m = lerp(m, g, lerp_weight)
        a = beta2 * widen(exp_inf[i])
        b = abs(g) + eps
        u = a if a >= b or a != a else b    # torch.maximum: NaN on either side gives NaN
        store_pair(exp_avg, m, exp_inf, u, noise_key, i)
        q = p - step_size * m / u
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
