"""Rprop (resilient backpropagation, torch.optim.Rprop): one kernel body."""

from numba import prange

from .config import kernel
from .halves import high_half, narrow_to, state_noise, store_state, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def rprop(param, grad, prev, step_size, param_copy,
          etaminus, etaplus, step_size_min, step_size_max, grad_factor, noise_key=0.0):
    """Rprop step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor
        f = etaplus if g * prev > 0 else etaminus if g * prev < 0 else 1
        step_size = clamp(step_size * f, step_size_min, step_size_max)
        g = 0 where g * prev < 0                       # the step after a sign change
        param[i] = p - sign(g) * step_size
        prev = g
        grad[i] = 0                                    # only if zero_grad
        param_copy[i] = half(param[i])                 # only if write_copy

    Torch's semantics (``_single_tensor_rprop``, torch 2.13), kept exactly:

    * ``torch.sign`` of NaN is **0** on the CPU (float32 and float64; NumPy's is NaN).
      So where ``g * prev`` is NaN (a NaN gradient or ``prev``, or ``inf * 0``: an
      infinite gradient on the first step) the factor is 1 and ``step_size`` is kept;
      and where ``g`` itself is NaN, ``sign(g)`` is 0 and ``param`` does not move,
      while ``prev`` stores the NaN (so the next step's factor is 1 again).
    * The sign tensor holds ``etaminus`` where ``g * prev < 0`` and the gradient is
      zeroed where it equals ``etaminus`` (``0 < etaminus < 1 < etaplus``, validated by
      torch, so that is exactly where ``g * prev < 0``).
    * ``clamp`` propagates NaN (``min(max(s, lo), hi)``, NaN-propagating).
    * ``param.addcmul_(grad.sign(), step_size, value=-1)``: ``p - s`` for ``g > 0``,
      ``p + s`` for ``g < 0`` and ``p + (-0 * s)`` otherwise, written here
      ``p - (s - s)``: ``p`` itself for a finite ``s`` (signed zeros included), NaN for an
      infinite one (``step_size_max = inf``), as torch's ``0 * inf``.

    Rprop has no weight decay. The host fills ``step_size`` with ``lr`` and ``prev`` with
    zeros when it creates them (:meth:`fastopt.rules.rprop.Rprop.initial_state`).

    Arguments (1-D C-contiguous arrays of one dtype, float32 or float64, except ``grad``
    and ``param_copy``; every scalar of that dtype, see
    :meth:`fastopt.rules.rprop.Rprop.scalars`):

    * ``param, grad, prev, step_size``: same length; the state buffers are torch's of the
      same names.
    * ``grad`` may hold bfloat16 (``uint16``) or float16 (``int16``) bits over a float32
      ``param`` (:mod:`fastopt.kernels.halves`).
    * ``param_copy``: with ``write_copy``, the same length, receiving the updated float32
      ``param`` as half-precision bits; else ``kernels.unused(np.uint16)`` (untouched).
    * ``etaminus, etaplus``: torch's ``etas``; ``step_size_min, step_size_max``: torch's
      ``step_sizes``.
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
        g = widen(grad[i]) * grad_factor
        if zero_grad:
            grad[i] = 0
        s = widen(step_size[i])
        gp = g * widen(prev[i])
        if gp > 0:
            s = s * etaplus
        elif gp < 0:
            s = s * etaminus
        # else (0 or NaN): torch's factor 1, s * 1 == s
        if s < step_size_min:       # clamp; a NaN s stays NaN
            s = step_size_min
        if s > step_size_max:
            s = step_size_max
        noise = state_noise(noise_key, i)   # used by bf16 state only
        step_size[i] = store_state(step_size, s, noise)
        if gp < 0:                  # torch: grad[sign.eq(etaminus)] = 0
            prev[i] = 0
            q = p - (s - s)
        else:
            prev[i] = store_state(prev, g, high_half(noise))
            if g > 0:
                q = p - s
            elif g < 0:
                q = p + s
            else:               # g is 0 or NaN: torch's sign is 0
                q = p - (s - s)
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
