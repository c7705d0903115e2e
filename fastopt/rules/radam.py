"""RAdam: Adam with the variance of the adaptive step rectified."""

import math

from ..kernels.radam import radam
from ..validation import check_lr, check_number
from .base import Rule, check_betas, check_flags, lerp_coefficient


class RAdam(Rule):
    r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and
    Beyond").

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``; ``m_hat = m / (1 - b1**t)``;
    ``rho_inf = 2/(1-b2) - 1``, ``rho_t = rho_inf - 2*t*b2**t/(1 - b2**t)``. While
    ``rho_t <= 5`` (the first five steps with b2 = 0.999) ``p -= lr*m_hat`` (SGD with
    momentum); after, ``p -= lr * m_hat * r_t * sqrt(1 - b2**t) / (sqrt(v) + eps)`` with
    ``r_t = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))``. The switch
    is decided per step on the host (the kernel reads it as a scalar). With
    ``decoupled_weight_decay`` (AdamW-style) ``p *= 1 - lr*weight_decay`` first and no L2 term.

    Defaults as ``torch.optim.RAdam``: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, decoupled_weight_decay=False, maximize=False. State ``exp_avg``,
    ``exp_avg_sq``. Kernel: :func:`fastopt.kernels.radam`.
    """

    name, class_name, torch_class = "radam", "RAdam", "RAdam"
    kernel = radam
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False)
    sources = {"lerp_weight": ("betas", "1 - beta1"), "beta2": ("betas", "beta2"),
               "one_minus_beta2": ("betas", "1 - beta2"),
               "param_decay": ("lr", "1 - lr * weight_decay"),
               "bias_correction1": ("betas", "1 - beta1**t"),
               "sqrt_bias_correction2": ("betas", "sqrt(1 - beta2**t)"),
               "rect": ("betas", "the rectification term r_t")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "decoupled_weight_decay", "maximize")

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def scalars(self, group, t, fresh):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        decoupled = group["decoupled_weight_decay"]
        moving = self.step_scalars(group, t)
        return dict(lerp_weight=lerp_coefficient(1.0 - beta1), beta2=beta2, one_minus_beta2=1.0 - beta2,
                    eps=group["eps"], weight_decay=0.0 if decoupled else wd,
                    param_decay=1.0 - lr * wd if decoupled and wd != 0 else 1.0,
                    bias_correction1=moving["bias_correction1"], lr=lr,
                    rectified=moving["rectified"],
                    sqrt_bias_correction2=moving["sqrt_bias_correction2"], rect=moving["rect"])

    def step_scalars(self, group, t):
        beta1, beta2 = group["betas"]
        bias_correction2 = 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0          # torch's order, in float64
        rho_t = rho_inf - 2.0 * t * (beta2 ** t) / bias_correction2
        rectified = rho_t > 5.0
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                         / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) if rectified else 0.0
        return {"bias_correction1": 1.0 - beta1 ** t, "rectified": 1.0 if rectified else 0.0,
                "sqrt_bias_correction2": math.sqrt(bias_correction2) if rectified else 0.0,
                "rect": rect}
