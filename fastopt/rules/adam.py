"""Adam and AdamW: one kernel body for both."""

import math

from ..kernels.adam import adam
from ..validation import check_lr, check_number
from .base import Rule, check_betas, check_flags


class Adam(Rule):
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

    name, class_name, torch_class = "adam", "Adam", "Adam"
    kernel = adam
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    amsgrad=False, maximize=False)
    decoupled = False
    sources = {"step_size": ("lr", "lr / (1 - beta1**t)"), "beta1": ("betas", "beta1"),
               "one_minus_beta1": ("betas", "1 - beta1"), "beta2": ("betas", "beta2"),
               "one_minus_beta2": ("betas", "1 - beta2"),
               "inv_sqrt_bias_correction2": ("betas", "1 / sqrt(1 - beta2**t)"),
               "param_decay": ("lr", "1 - lr * weight_decay")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "amsgrad", "maximize")

    def rule_keys(self):
        """torch's group key for Adam (False) versus AdamW (True)."""
        return {"decoupled_weight_decay": self.decoupled}

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else (
            "exp_avg", "exp_avg_sq")

    def options(self, group):
        return {"amsgrad": group["amsgrad"]}

    def scalars(self, group, t, fresh):
        return adam_scalars(t, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                            weight_decay=group["weight_decay"], decoupled=self.decoupled)

    def step_scalars(self, group, t):
        return bias_corrected(t, group["lr"], group["betas"])


def bias_corrected(t, lr, betas):
    """Adam's scalars that move with the step ``t``: ``step_size = lr / (1 - beta1**t)``
    and ``inv_sqrt_bias_correction2 = 1 / sqrt(1 - beta2**t)`` (also Yogi's)."""
    beta1, beta2 = betas
    return {"step_size": lr / (1.0 - beta1 ** t),
            "inv_sqrt_bias_correction2": 1.0 / math.sqrt(1.0 - beta2 ** t)}


def adam_scalars(t, *, lr, betas, eps, weight_decay, decoupled):
    """The scalars of :func:`fastopt.kernels.adam` for step ``t`` (from 1) by name, but
    ``grad_factor``; derived in float64, once per step, before the cast (as optax does):
    :func:`bias_corrected` and the step's constants; Adam's weight decay is coupled (added
    to the gradient), AdamW's (``decoupled``) multiplies the parameter by
    ``param_decay = 1 - lr*weight_decay``. Callers pass Python floats (NumPy float32
    scalars would compute in float32). The one place both the rules and
    :func:`fastopt.offload.adam_step` take these from."""
    beta1, beta2 = betas
    coupled, param_decay = (0.0, 1.0 - lr * weight_decay) if decoupled else (weight_decay, 1.0)
    moving = bias_corrected(t, lr, betas)
    return {"step_size": moving["step_size"], "beta1": beta1, "one_minus_beta1": 1.0 - beta1,
            "beta2": beta2, "one_minus_beta2": 1.0 - beta2,
            "inv_sqrt_bias_correction2": moving["inv_sqrt_bias_correction2"], "eps": eps,
            "weight_decay": coupled, "param_decay": param_decay}


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    ``p *= 1 - lr*weight_decay``, then the Adam update with no L2 term in the gradient.
    Beyond the seed. Defaults as ``torch.optim.AdamW``: as Adam but weight_decay=1e-2.
    Kernel: :func:`fastopt.kernels.adam` (``param_decay = 1 - lr*weight_decay``).
    """

    name, class_name, torch_class = "adamw", "AdamW", "AdamW"
    defaults = {**Adam.defaults, "weight_decay": 1e-2}
    decoupled = True
