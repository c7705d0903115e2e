"""Lion: the sign of an interpolated momentum."""

from ..kernels.lion import lion
from ..validation import check_lr, check_number
from .base import Rule, check_betas, check_flags


class Lion(Rule):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    ``c = b1*m + (1-b1)*g``; ``p = p*(1 - lr*wd) - lr*sign(c)``; ``m = b2*m + (1-b2)*g``.
    One state buffer; every element moves by exactly ``lr`` (sign(0) = 0), so Lion's
    ``lr`` is typically 3-10x smaller than AdamW's and its weight decay 3-10x larger.
    The formula of optax's ``lion`` and of the ``lion-pytorch`` package; torch.optim has
    no Lion. ``sign(NaN)`` is NaN here (``lion-pytorch``, on torch's CPU sign, gives 0 and
    would freeze the parameter silently), so a NaN gradient reaches the parameter and the
    finiteness checks see it.

    Defaults: lr=1e-4, betas=(0.9, 0.99), weight_decay=0 (decoupled), maximize=False.
    State ``exp_avg``. Kernel: :func:`fastopt.kernels.lion`.
    """

    name, class_name = "lion", "Lion"
    kernel = lion
    defaults = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)
    sources = {"param_decay": ("lr", "1 - lr * weight_decay"), "beta1": ("betas", "beta1"),
               "one_minus_beta1": ("betas", "1 - beta1"), "beta2": ("betas", "beta2"),
               "one_minus_beta2": ("betas", "1 - beta2")}

    def check(self, group):
        check_lr(group)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("exp_avg",)

    def step_scalars(self, group, t):
        return {}   # (its scalars read the group only)

    def scalars(self, group, t, fresh):
        lr, (beta1, beta2) = group["lr"], group["betas"]
        return dict(param_decay=1.0 - lr * group["weight_decay"], lr=lr, beta1=beta1,
                    one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2)
