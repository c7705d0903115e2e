"""Adam and AdamW."""

import math

import numpy as np

from .. import kernels
from ..kernels.config import unused
from ..validation import cast_scalars, check_flag, check_lr, check_number
from .base import Optimizer


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015).

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``;
    with ``amsgrad``, ``vmax = max(vmax, v)`` replaces ``v`` in the denominator.

    The seed divides by ``1 - rho1`` where the book's Algorithm 8.7 has ``1 - rho1**t``
    (fastopt follows the book), and writes Adam's gradient at ``w + eps*v``, a copy slip
    (Adam has no velocity). The seed's delta is 1e-6; PyTorch's eps is 1e-8.

    Defaults as ``torch.optim.Adam``: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0 (coupled L2: added to the gradient), amsgrad=False, maximize=False.
    Kernel: :func:`fastopt.kernels.adam`.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    amsgrad=False, maximize=False)
    decoupled = False
    kernel = kernels.adam
    #: Per scalar of the kernel call, in order: the hyperparameter an overflow of the
    #: buffers' dtype is blamed on, and the scalar's formula (``validation.cast_scalars``).
    scalar_sources = (("lr", "lr / (1 - beta1**t)"), ("betas", "beta1"),
                      ("betas", "1 - beta1"), ("betas", "beta2"), ("betas", "1 - beta2"),
                      ("betas", "1 / sqrt(1 - beta2**t)"), ("eps", "eps"),
                      ("weight_decay", "weight_decay"), ("lr", "1 - lr * weight_decay"),
                      ("grad_scale", "1 / grad_scale"))

    def check_group(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        for i, beta in enumerate(betas):
            check_number({f"beta parameter at index {i}": beta},
                         f"beta parameter at index {i}", 0.0, 1.0, high_open=True)
        check_flag(group, "amsgrad")
        check_flag(group, "maximize")

    def rule_keys(self):
        """torch's group key for Adam (False) versus AdamW (True)."""
        return {"decoupled_weight_decay": self.decoupled}

    def state_names(self, group):
        names = ["exp_avg", "exp_avg_sq"]
        if group["amsgrad"]:
            names.append("max_exp_avg_sq")
        return names

    def kernel_args(self, seg, group, grad, grad_scale, zero_grad):
        state = seg.state
        return (
            seg.param, grad, state["exp_avg"], state["exp_avg_sq"],
            state.get("max_exp_avg_sq", unused(seg.param.dtype)), unused(np.uint16),
            *step_scalars(seg.param.dtype, seg.step, lr=group["lr"], betas=group["betas"],
                          eps=group["eps"], weight_decay=group["weight_decay"],
                          decoupled=self.decoupled, grad_scale=grad_scale,
                          sources=self.scalar_sources),
            group["amsgrad"], zero_grad, False)


def step_scalars(dtype, t, *, lr, betas, eps, weight_decay, decoupled, grad_scale,
                 sources=Adam.scalar_sources):
    """The scalar arguments of :func:`fastopt.kernels.adam` for step ``t`` (counted from
    1), in its order, each cast to ``dtype``: ``step_size, beta1, 1 - beta1, beta2,
    1 - beta2, inv_sqrt_bias_correction2, eps, weight_decay, param_decay, grad_scale``.

    Derived in float64, once per step, before the cast (as optax does): the caller passes
    Python floats (the optimizers' groups go through :func:`fastopt.validation.as_floats`;
    :func:`fastopt.offload.adam_step` converts its arguments), since NumPy float32
    scalars would compute in float32:
    ``step_size = lr / (1 - beta1**t)``, ``inv_sqrt_bias_correction2 = 1/sqrt(1 - beta2**t)``;
    Adam's weight decay is coupled (added to the gradient), AdamW's (``decoupled``)
    multiplies the parameter by ``1 - lr*weight_decay``. The cast is
    :func:`fastopt.validation.cast_scalars`: a finite value beyond ``dtype``'s range is a
    ``ValueError`` naming the hyperparameter of ``sources`` (per scalar,
    ``(hyperparameter, formula)``; :attr:`Adam.scalar_sources` by default). The one
    place both :class:`Adam` and :func:`fastopt.offload.adam_step` take these from.
    """
    beta1, beta2 = betas
    step_size = lr / (1.0 - beta1 ** t)
    inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** t)
    coupled, param_decay = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    return cast_scalars(np.dtype(dtype), (
        step_size, beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_sqrt_bc2, eps,
        coupled, param_decay, grad_scale), sources)


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ``p *= 1 - lr*weight_decay``, then the Adam update with no L2 term in the gradient.
    Beyond the seed. Defaults as ``torch.optim.AdamW``: as Adam but weight_decay=1e-2.
    Kernel: :func:`fastopt.kernels.adam` (``param_decay = 1 - lr*weight_decay``).
    """

    defaults = {**Adam.defaults, "weight_decay": 1e-2}
    decoupled = True
