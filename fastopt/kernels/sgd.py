"""SGD: gradient descent, stochastic and minibatch SGD, momentum, Nesterov."""

from numba import prange

from .config import kernel
from .halves import gradient, narrow_to, state_noise, store_state, widen


# Compile-time options: the body reads these module-level names, and each variant of the
# kernel binds them to constants (``Kernel.variant``). These defaults are never compiled.
use_momentum = nesterov = zero_grad = write_copy = False


@kernel(flags=("use_momentum", "nesterov", "zero_grad", "write_copy"))
def sgd(param, grad, momentum_buffer, param_copy, lr, weight_decay, grad_factor,
        momentum, buffer_decay, buffer_gain, noise_key=0.0):
    """SGD step over flat buffers, in place, in one pass.

    For each element ``i``::

        g = widen(grad[i]) * grad_factor + weight_decay * param[i]
        b = buffer_decay * b + buffer_gain * g          # only if use_momentum
        d = g + momentum * b if nesterov else b         # d = g without momentum
        param[i] -= lr * d
        param_copy[i] = half(param[i])                  # only if write_copy
        grad[i] = 0                                     # only if zero_grad

    PyTorch's momentum is ``b = momentum*b + (1 - dampening)*g`` with ``b = g`` on the
    first step: the caller passes ``buffer_decay = momentum, buffer_gain = 1 - dampening``
    and, on the first step, ``buffer_decay = 0, buffer_gain = 1`` (the buffer is zero).

    Arguments: ``param, grad`` 1-D C-contiguous arrays of one dtype (float32 or float64);
    ``momentum_buffer`` the same length when ``use_momentum``, else
    ``kernels.unused(dtype)`` (untouched; never an array sharing memory with another
    argument, such as ``param[:0]``: the loop would run scalar). Scalars ``lr,
    weight_decay, grad_factor, momentum, buffer_decay, buffer_gain`` of the arrays'
    dtype; ``grad_factor`` multiplies the gradient first (loss-scale unscaling,
    clipping, ``-1`` for ``maximize``). Options (booleans, compile-time: from Python,
    pass them last in this order; from ``@njit`` code, call
    ``sgd.variant(use_momentum=..., ...).parallel``): ``use_momentum, nesterov, zero_grad,
    write_copy``.

    Mixed precision (:mod:`fastopt.kernels.halves`): ``grad`` may hold bfloat16/float16
    bits over a float32 ``param``; with ``write_copy`` the updated ``param`` is also
    written, rounded, into ``param_copy`` (else ``kernels.unused(np.uint16)``).

    Low-precision state (:mod:`fastopt.kernels.halves`): the state buffers may instead
    hold bfloat16 bits (``uint16``) over a float32 ``param``, loaded exactly and stored
    with stochastic rounding from ``state_noise(noise_key, i)``; ``noise_key`` (a whole
    number below 2**24; default 0, so callers of the float kernels may omit it) is
    unused with float state.

    The order of operations is torch's; in particular there is no ``weight_decay * p``
    term when ``weight_decay`` is 0 (an infinite ``p`` would make ``g`` NaN).
    """
    for i in prange(param.shape[0]):
        p = param[i]
        g = gradient(grad[i], grad_factor, weight_decay, p)
        if zero_grad:
            grad[i] = 0
        if use_momentum:
            b = buffer_decay * widen(momentum_buffer[i]) + buffer_gain * g
            momentum_buffer[i] = store_state(momentum_buffer, b, state_noise(noise_key, i))
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        q = p - lr * g
        param[i] = q
        if write_copy:
            param_copy[i] = narrow_to(param_copy, q)
