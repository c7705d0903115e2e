"""RMSprop, with the seed's variants (delta inside the root, Nesterov momentum)."""

import numpy as np

from .. import kernels
from ..kernels.config import unused
from ..validation import cast_scalars, check_flag, check_lr, check_number
from .base import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e): divide the gradient by a running RMS of its history.

    ``r = alpha*r + (1-alpha)*g*g``; ``d = sqrt(r) + eps``; ``p -= lr * g / d``.

    * ``eps_in_sqrt=True``: ``d = sqrt(r + eps)``, the seed's ``sqrt(delta + r)`` (optax's name).
    * ``centered=True``: ``c = c + (1-alpha)*(g - c)`` and ``r - c*c`` replaces ``r`` in ``d``.
    * ``momentum > 0``: ``b = momentum*b + g/d``; ``p -= lr*b`` (PyTorch).
    * ``nesterov=True`` (needs momentum > 0): ``p -= lr*(g/d + momentum*b)``, the seed's
      "RMSProp with momentum" (Goodfellow alg. 8.6), whose gradient is taken at the
      look-ahead point ``w + momentum*v``; storing the look-ahead point as the parameter
      gives this form (``tests/test_seed_forms.py``). PyTorch has no such option.

    Defaults as ``torch.optim.RMSprop``: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0 (L2),
    momentum=0, centered=False, maximize=False; fastopt's extras nesterov=False,
    eps_in_sqrt=False. The seed's delta is 1e-6. Kernel: :func:`fastopt.kernels.rmsprop`.

    ``alpha`` must be in [0, 1]: stricter than torch, which accepts any ``alpha >= 0``,
    though ``alpha > 1`` makes ``1 - alpha`` negative and the running average of
    squares (the root's argument) negative, so every update NaN.
    """

    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False, maximize=False, nesterov=False, eps_in_sqrt=False)
    kernel = kernels.rmsprop
    #: Per scalar of the kernel call, in order: the hyperparameter an overflow of the
    #: buffers' dtype is blamed on, and the scalar's formula (``validation.cast_scalars``).
    scalar_sources = (("lr", "lr"), ("alpha", "alpha"), ("alpha", "1 - alpha"),
                      ("eps", "eps"), ("weight_decay", "weight_decay"),
                      ("grad_scale", "1 / grad_scale"), ("momentum", "momentum"))

    def check_group(self, group):
        check_lr(group)
        check_number(group, "alpha", 0.0, 1.0)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_number(group, "momentum", 0.0)
        for key in ("centered", "maximize", "nesterov", "eps_in_sqrt"):
            check_flag(group, key)
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("nesterov=True requires momentum > 0")

    def state_names(self, group):
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return names

    def kernel_args(self, seg, group, grad, grad_scale, zero_grad):
        dtype, state = seg.param.dtype, seg.state
        alpha = group["alpha"]
        scalars = cast_scalars(dtype, (
            group["lr"], alpha, 1.0 - alpha, group["eps"], group["weight_decay"], grad_scale,
            group["momentum"]), self.scalar_sources)
        return (
            seg.param, grad, state["square_avg"], state.get("grad_avg", unused(dtype, 0)),
            state.get("momentum_buffer", unused(dtype, 1)), unused(np.uint16), *scalars,
            group["centered"], group["momentum"] > 0, group["nesterov"],
            group["eps_in_sqrt"], zero_grad, False)
