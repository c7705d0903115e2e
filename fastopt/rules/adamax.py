"""Adamax: Adam with the infinity norm."""

from ..kernels.adamax import adamax
from ..validation import check_lr, check_number
from .base import Rule, check_betas, check_flags, lerp_coefficient


class Adamax(Rule):
    r"""Adamax (Kingma & Ba, 2015, section 7.1): Adam's second moment replaced by an
    exponentially weighted infinity norm.

    ``m = b1*m + (1-b1)*g``; ``u = max(b2*u, |g| + eps)``; ``p -= (lr/(1 - b1**t)) * m / u``.
    ``eps`` inside the maximum is torch's (the paper has no eps). NaN propagates through
    the maximum, as ``torch.maximum``.

    Defaults as ``torch.optim.Adamax``: lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0 (L2, added to the gradient), maximize=False. State ``exp_avg``,
    ``exp_inf``. Kernel: :func:`fastopt.kernels.adamax`.
    """

    name, class_name, torch_class = "adamax", "Adamax", "Adamax"
    kernel = adamax
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False)
    sources = {"step_size": ("lr", "lr / (1 - beta1**t)"),
               "lerp_weight": ("betas", "1 - beta1"), "beta2": ("betas", "beta2")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("exp_avg", "exp_inf")

    def scalars(self, group, t, fresh):
        beta1, beta2 = group["betas"]
        return dict(lerp_weight=lerp_coefficient(1.0 - beta1), beta2=beta2, eps=group["eps"],
                    **self.step_scalars(group, t), weight_decay=group["weight_decay"])

    def step_scalars(self, group, t):
        return {"step_size": group["lr"] / (1.0 - group["betas"][0] ** t)}
