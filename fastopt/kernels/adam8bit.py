"""Adam with 8-bit blockwise state (Dettmers et al. 2021, "8-bit Optimizers via
Block-wise Quantization"; bitsandbytes' ``Adam8bit``): an experiment (issue 13, part 3).

State per element: one signed byte for ``m`` and one unsigned byte for ``sqrt(v)``; per
block of :data:`BLOCK` elements one float32 scale for each, the block's largest
magnitude. The codes are *companded* (square-law) rather than bitsandbytes' dynamic
tree, which needs a table and a search per element::

    m       = sign(c) * c**2 * (exp_avg_absmax[b] / 127**2)        c: int8 in [-127, 127]
    sqrt(v) = u**2 * (exp_avg_sq_absmax[b] / 255**2)                u: uint8 in [0, 255]

so ``m``'s code is ``127 * sqrt(|m| / absmax)`` rounded to nearest, and ``sqrt(v)``'s
is ``255 * sqrt(sqrt(v) / absmax)`` rounded *stochastically*: ``floor(x + r)`` with ``r``
uniform in [0, 1) from 24 bits of :func:`~fastopt.kernels.halves.state_noise` (the
counter hash of the bf16 state: ``noise_key``, element index), unbiased in the code and
the same for any thread count. Rounded to nearest, ``v`` stalls: an update of
``(1 - beta2) * g**2`` is below half a code step, so the stored ``v`` lags behind the
true one, and the noisy-quadratic test's final loss came out 5 % above float32 Adam's
(stochastic: within 0.1 %; ``m`` to nearest costs nothing there). The square law puts resolution near zero (the
smallest non-zero ``sqrt(v)`` is ``absmax / 65025``, so ``v`` spans ``2.4e-10`` of the
block's largest: a tiny ``v`` is never flushed to 0 under a non-zero ``m``) and keeps
1.6 % steps in ``v`` near the block's maximum. Storing ``sqrt(v)`` reuses the square
root the update takes anyway.

For each block (blocks are independent: ``prange`` over chunks of blocks, so the result
is bitwise the same for any thread count)::

    pass 1, each element:
        p  = param[i] * param_decay
        g  = widen(grad[i]) * grad_factor + weight_decay * p
        m  = beta1 * decode(exp_avg[i]) + (1 - beta1) * g
        v  = beta2 * decode(exp_avg_sq[i])**2 + ((1 - beta2) * g) * g
        s  = sqrt(v)
        param[i] = p - (step_size * m) / (s * inv_sqrt_bias_correction2 + eps)
        keep m, s; track max |m| and max s           (float bits: an integer max)
    the block's new scales: exp_avg_absmax[b] = max |m|, exp_avg_sq_absmax[b] = max s
    pass 2, each element: exp_avg[i], exp_avg_sq[i] = encode(m), encode(s, noise)

The arithmetic of the update is :func:`fastopt.kernels.adam.adam`'s, in the same order;
only the state's storage differs. The first pass keeps ``m`` and ``s`` of one block in
a 2 KB scratch allocated once per chunk of :data:`CHUNK` blocks.

Arguments (float32 ``param`` only; every scalar a ``np.float32``):

* ``param`` (float32), ``grad`` (float32, or bf16/fp16 bits as in
  :mod:`fastopt.kernels.halves`): length ``n``.
* ``exp_avg`` (int8), ``exp_avg_sq`` (uint8): length ``n``, codes as above; all zero
  with zero scales is the zero state.
* ``exp_avg_absmax``, ``exp_avg_sq_absmax`` (float32): length ``ceil(n / BLOCK)``.
* ``param_copy``: as in ``adam`` (``write_copy``), else ``kernels.unused(np.uint16)``.
* the scalars: as in :func:`fastopt.kernels.adam.adam`; ``noise_key`` (a whole number
  below 2**24, a new one each step: :func:`fastopt.kernels.halves.noise_key`) keys the
  stochastic rounding.
* options ``zero_grad, write_copy``: as in ``adam``; no ``amsgrad``.

A non-finite ``m`` or ``v`` makes its block's scale NaN or Inf, and every element of that
block decodes to NaN from then on (the scale carries it; the codes of such a block are
unspecified).

Not wired into the optimizers (no ``Rule``): the kernel, its NumPy transcription and its
benchmark are :mod:`fastopt.bench.eight_bit`, whose docstring has the measurements
against the float32 and bf16 state kernels and what limits this one.
"""

import numpy as np
from numba import prange

from .config import kernel
from .halves import bits_from_float32, float32_from_bits, gradient, narrow_to, state_noise

#: Elements per quantization block (one scale per block and state), as bitsandbytes.
BLOCK = 256
#: Blocks per ``prange`` iteration (one scratch allocation each).
CHUNK = 64

#: The codes' largest magnitudes and their squares (the decode divisors).
M_LEVELS, S_LEVELS = 127, 255

# Compile-time options, bound per variant (see ``Kernel.variant``); never compiled as is.
zero_grad = write_copy = False


def blocks(size):
    """The number of scales per state buffer for ``size`` elements."""
    return -(-size // BLOCK)


@kernel(flags=("zero_grad", "write_copy"))
def adam8bit(param, grad, exp_avg, exp_avg_sq, exp_avg_absmax, exp_avg_sq_absmax,
             param_copy, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2,
             inv_sqrt_bias_correction2, eps, weight_decay, param_decay, grad_factor,
             noise_key=0.0):
    """Adam / AdamW step over flat float32 buffers with 8-bit blockwise state, in place
    (see the module docstring for the formula, the code and the arguments)."""
    n = param.shape[0]
    block_count = (n + 255) // 256
    chunk_count = (block_count + 63) // 64
    m_squares = np.float32(16129.0)     # 127**2
    s_squares = np.float32(65025.0)     # 255**2
    zero = np.float32(0.0)
    half = np.float32(0.5)
    noise_unit = np.float32(2.0 ** -24)
    for chunk in prange(chunk_count):
        kept_m = np.empty(256, np.float32)
        kept_s = np.empty(256, np.float32)
        last = min(chunk * 64 + 64, block_count)
        for b in range(chunk * 64, last):
            base = np.uint64(b * 256)
            count = min(256, n - b * 256)
            m_unit = exp_avg_absmax[b] / m_squares
            s_unit = exp_avg_sq_absmax[b] / s_squares
            m_max = np.uint32(0)
            s_max = np.uint32(0)
            for j in range(count):
                i = base + np.uint64(j)
                p = param[i] * param_decay
                g = gradient(grad[i], grad_factor, weight_decay, p)
                if zero_grad:
                    grad[i] = 0
                c = np.float32(exp_avg[i])
                u = np.float32(exp_avg_sq[i])
                s_old = (u * u) * s_unit
                m = beta1 * ((c * abs(c)) * m_unit) + one_minus_beta1 * g
                v = beta2 * (s_old * s_old) + one_minus_beta2 * g * g
                s = np.sqrt(v)
                q = p - (step_size * m) / (s * inv_sqrt_bias_correction2 + eps)
                param[i] = q
                if write_copy:
                    param_copy[i] = narrow_to(param_copy, q)
                kept_m[j] = m
                kept_s[j] = s
                m_bits = np.uint32(bits_from_float32(m) & np.uint32(0x7FFFFFFF))
                s_bits = bits_from_float32(s)
                m_max = max(m_max, m_bits)      # non-negative floats order as their bits;
                s_max = max(s_max, s_bits)      # a NaN's bits exceed Inf's: NaN wins
            m_absmax = float32_from_bits(m_max)
            s_absmax = float32_from_bits(s_max)
            exp_avg_absmax[b] = m_absmax
            exp_avg_sq_absmax[b] = s_absmax
            # code = round(sqrt(x * levels**2 / absmax)); a zero or non-finite scale
            # stores zero codes (the scale itself keeps the NaN or Inf)
            finite_m = m_absmax > zero and m_absmax < np.float32(np.inf)
            finite_s = s_absmax > zero and s_absmax < np.float32(np.inf)
            m_gain = m_squares / m_absmax if finite_m else zero
            s_gain = s_squares / s_absmax if finite_s else zero
            noise_base = np.uint32(b * 256)     # the hash's index in 32-bit lanes
            for j in range(count):
                i = base + np.uint64(j)
                m = kept_m[j]
                c = np.int32(min(np.sqrt(abs(m) * m_gain) + half, np.float32(127.0)))
                exp_avg[i] = np.int8(-c if m < zero else c)
                noise = state_noise(noise_key, np.uint32(noise_base + np.uint32(j)))
                r = np.float32(np.uint32(noise >> np.uint32(8))) * noise_unit
                u = np.int32(min(np.sqrt(kept_s[j] * s_gain) + r, np.float32(255.0)))
                exp_avg_sq[i] = np.uint8(u)
