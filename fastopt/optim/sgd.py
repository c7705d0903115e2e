"""SGD: the seed's gradient descent, stochastic and minibatch SGD, momentum, Nesterov."""

import numpy as np

from .. import kernels
from ..kernels.config import unused
from ..validation import cast_scalars, check_flag, check_lr, check_number
from .base import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent, with optional momentum and Nesterov momentum.

    Plain: ``p -= lr * g``. The seed's gradient descent, stochastic and minibatch SGD are
    this one rule; they differ only in which examples make ``g``.

    Momentum (PyTorch's form): ``b = momentum*b + (1 - dampening)*g`` (``b = g`` on the
    first step), ``p -= lr*b``. The seed writes ``v = eps*v - lr*g; w += v``, which is the
    same trajectory with ``v = -lr*b`` while ``lr`` is constant.

    Nesterov: ``p -= lr*(g + momentum*b)``. The seed evaluates ``g`` at the look-ahead
    point ``w + eps*v``; storing the look-ahead point as the parameter gives this form,
    with ``p_t = w_t + momentum*v_t`` (``tests/test_seed_forms.py`` proves it).

    ``weight_decay`` adds ``weight_decay*p`` to the gradient (L2); ``maximize`` ascends.
    Defaults as ``torch.optim.SGD``: lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, maximize=False. Kernel: :func:`fastopt.kernels.sgd`.
    """

    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                    nesterov=False, maximize=False)
    kernel = kernels.sgd
    #: Per scalar of the kernel call, in order: the hyperparameter an overflow of the
    #: buffers' dtype is blamed on, and the scalar's formula (``validation.cast_scalars``).
    scalar_sources = (("lr", "lr"), ("weight_decay", "weight_decay"),
                      ("grad_scale", "1 / grad_scale"), ("momentum", "momentum"),
                      ("momentum", "momentum"), ("dampening", "1 - dampening"))

    def check_group(self, group):
        check_lr(group)
        check_number(group, "momentum", 0.0)
        check_number(group, "dampening")
        check_number(group, "weight_decay", 0.0)
        check_flag(group, "nesterov")
        check_flag(group, "maximize")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def state_names(self, group):
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def kernel_args(self, seg, group, grad, grad_scale, zero_grad):
        momentum = group["momentum"]
        use_momentum = momentum != 0
        if use_momentum and "momentum_buffer" not in seg.fresh:
            decay, gain = momentum, 1.0 - group["dampening"]
        else:  # first step: b = g
            decay, gain = 0.0, 1.0
        buffer = seg.state["momentum_buffer"] if use_momentum else unused(seg.param.dtype)
        scalars = cast_scalars(seg.param.dtype, (
            group["lr"], group["weight_decay"], grad_scale, momentum, decay, gain),
            self.scalar_sources)
        return (seg.param, grad, buffer, unused(np.uint16), *scalars,
                use_momentum, group["nesterov"], zero_grad, False)
