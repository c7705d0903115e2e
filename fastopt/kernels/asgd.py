"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky 1992), as torch.optim.ASGD."""

from numba import prange

from .config import kernel
from .halves import gradient, narrow_to, state_noise, store_state, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
zero_grad = write_copy = False


@kernel(flags=("zero_grad", "write_copy"))
def asgd(param, grad, ax, param_copy, weight_decay, param_decay, eta, mu, grad_factor, noise_key=0.0):
    """ASGD step over flat buffers, in place, in one pass (torch.optim.ASGD, foreach=False).

    For each element ``i``::

        p  = param[i]
        g  = widen(grad[i]) * grad_factor + weight_decay * p   # coupled (L2) decay
        grad[i] = 0                                  # only if zero_grad
        q  = p * param_decay - eta * g               # param_decay = 1 - lambd*eta
        param[i] = q
        ax[i] = q if mu == 1 else ax[i] + (q - ax[i]) * mu
        param_copy[i] = half(q)                      # only if write_copy

    ``eta`` and ``mu`` are the ones torch holds in its state *before* step ``t`` (those
    written by step ``t - 1``; initially ``eta = lr``, ``mu = 1``)::

        eta = lr / (1 + lambd*lr*(t-1))**alpha       # = lr at t = 1
        mu  = 1 / max(1, (t-1) - t0)                 # = 1 at t = 1

    (:meth:`fastopt.rules.asgd.ASGD.scalars`). ``mu == 1`` (no averaging yet, ``t - 1 <=
    t0 + 1``) copies ``q`` into ``ax`` as torch's ``ax.copy_(param)`` does, bitwise (``ax +
    (q - ax)*1`` would round, and turn an infinite ``ax`` into NaN); the test reads the
    scalar, which is the same for every element, so the loop has no per-element branch.

    The order of operations is torch's single-tensor one: ``g = grad + wd*param`` (on the
    parameter before its decay), ``param *= 1 - lambd*eta``, ``param += -eta*g``,
    ``ax += (param - ax)*mu``. Torch's CPU ``add(alpha=)`` rounds once through a fused
    multiply-add, this kernel twice (``FASTMATH`` is empty): float32 results differ from
    torch's by an ulp or so per step. No ``weight_decay * p`` term when ``weight_decay`` is
    0, as in torch.

    Arguments (all arrays 1-D, C-contiguous, one dtype, float32 or float64, except
    ``grad`` and ``param_copy``; every scalar of the state's dtype, precomputed by the
    caller, so a float32 kernel never promotes to float64):

    * ``param, grad, ax``: same length; ``ax`` (torch's state key) is the running average
      of the parameter. ``grad`` may also hold half-precision bits over a float32
      ``param`` (bfloat16 as ``uint16``, float16 as ``int16``; :mod:`fastopt.kernels.halves`).
    * ``param_copy``: when ``write_copy``, the same length, receiving the updated float32
      ``param`` rounded to nearest even (``uint16``: bfloat16 bits, ``int16``: float16
      bits); else ``kernels.unused(np.uint16)`` (untouched).
    * ``weight_decay``: coupled L2 decay, 0 for none.
    * ``param_decay = 1 - lambd*eta``: the decay term.
    * ``eta``: the step size; ``mu``: the averaging weight (1: copy).
    * ``grad_factor``: multiplies the gradient first (loss-scale unscaling, clipping, and
      ``-1`` for ``maximize``).
    * Options (booleans, compile-time: from Python, pass them last in this order; from
      ``@njit`` code, call ``asgd.variant(zero_grad=...).parallel``): ``zero_grad,
      write_copy``.

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.
    """
    copy_to_average = mu == 1
    for i in prange(param.shape[0]):
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        q = p * param_decay - eta * g
        param[i] = q
        a = widen(ax[i])
        ax[i] = store_state(ax, q if copy_to_average else a + (q - a) * mu,
                            state_noise(noise_key, i))
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
