"""Yogi."""


from ..kernels.yogi import yogi
from ..validation import check_lr, check_number
from .adam import bias_corrected
from .base import Rule, check_betas, check_flags


class Yogi(Rule):
    r"""Yogi (Zaheer et al., 2018, "Adaptive Methods for Nonconvex Optimization"), as
    optax's ``yogi``: Adam whose second moment moves additively, by at most
    ``(1-b2)*g*g`` a step, in the direction of ``g*g``::

        m = b1*m + (1-b1)*g
        v = v - (1-b2) * sign(v - g*g) * g*g
        p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    Both ``m`` and ``v`` start at ``initial_accumulator_value`` (optax's; the paper starts
    ``m`` at 0). torch.optim has no Yogi. Beyond optax: ``weight_decay`` (coupled L2, as
    torch's Adam) and ``maximize``; no ``eps_root``. ``sign(NaN)`` is NaN, as jnp.sign.

    Defaults: lr=1e-2, betas=(0.9, 0.999), eps=1e-3 (optax's), initial_accumulator_value=1e-6,
    weight_decay=0, maximize=False. State ``exp_avg``, ``exp_avg_sq``. Kernel:
    :func:`fastopt.kernels.yogi`.
    """

    name, class_name = "yogi", "Yogi"
    kernel = yogi
    defaults = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6,
                    weight_decay=0.0, maximize=False)
    sources = {"step_size": ("lr", "lr / (1 - beta1**t)"), "beta1": ("betas", "beta1"),
               "one_minus_beta1": ("betas", "1 - beta1"),
               "one_minus_beta2": ("betas", "1 - beta2"),
               "inv_sqrt_bias_correction2": ("betas", "1 / sqrt(1 - beta2**t)")}

    def check(self, group):
        check_lr(group)
        check_number(group, "eps", 0.0)
        check_number(group, "initial_accumulator_value", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_betas(group)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("exp_avg", "exp_avg_sq")

    def initial_state(self, name, group):
        return group["initial_accumulator_value"]

    def scalars(self, group, t, fresh):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, one_minus_beta1=1.0 - beta1, one_minus_beta2=1.0 - beta2,
                    **self.step_scalars(group, t), eps=group["eps"],
                    weight_decay=group["weight_decay"])

    def step_scalars(self, group, t):
        return bias_corrected(t, group["lr"], group["betas"])
