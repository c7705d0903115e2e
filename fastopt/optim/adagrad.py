"""Adagrad."""

import numpy as np

from .. import kernels
from ..kernels.config import unused
from ..validation import cast_scalars, check_flag, check_lr, check_number
from .base import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011): per-coordinate steps shrinking with the summed
    squared gradients.

    ``s += g*g``; ``p -= clr * g / (sqrt(s) + eps)`` with ``clr = lr / (1 + (t-1)*lr_decay)``
    and ``s`` starting at ``initial_accumulator_value``. The seed writes the same update
    with ``delta = 1e-6``; PyTorch's (and fastopt's) default ``eps`` is 1e-10.

    Defaults as ``torch.optim.Adagrad``: lr=1e-2, lr_decay=0, weight_decay=0 (L2, added to
    the gradient), initial_accumulator_value=0, eps=1e-10, maximize=False.
    Kernel: :func:`fastopt.kernels.adagrad`.
    """

    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10, maximize=False)
    kernel = kernels.adagrad
    #: Per scalar of the kernel call, in order: the hyperparameter an overflow of the
    #: buffers' dtype is blamed on, and the scalar's formula (``validation.cast_scalars``).
    scalar_sources = (("lr", "lr / (1 + (t - 1) * lr_decay)"), ("eps", "eps"),
                      ("weight_decay", "weight_decay"), ("grad_scale", "1 / grad_scale"))

    def check_group(self, group):
        check_lr(group)
        check_number(group, "lr_decay", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_number(group, "initial_accumulator_value", 0.0)
        check_number(group, "eps", 0.0)
        check_flag(group, "maximize")

    def state_names(self, group):
        return ["sum"]

    def initial_state(self, name, group):
        return group["initial_accumulator_value"]

    def kernel_args(self, seg, group, grad, grad_scale, zero_grad):
        clr = group["lr"] / (1 + (seg.step - 1) * group["lr_decay"])
        scalars = cast_scalars(seg.param.dtype, (
            clr, group["eps"], group["weight_decay"], grad_scale), self.scalar_sources)
        return (seg.param, grad, seg.state["sum"], unused(np.uint16), *scalars, zero_grad,
                False)
