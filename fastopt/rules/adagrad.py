"""Adagrad."""

from ..kernels.adagrad import adagrad
from ..validation import check_lr, check_number
from .base import Rule, check_flags


class Adagrad(Rule):
    r"""Adagrad (Duchi et al., 2011): per-coordinate steps shrinking with the summed
    squared gradients.

    ``s += g*g``; ``p -= clr * g / (sqrt(s) + eps)`` with ``clr = lr / (1 + (t-1)*lr_decay)``
    and ``s`` starting at ``initial_accumulator_value``. The seed writes the same update
    with ``delta = 1e-6``; PyTorch's (and fastopt's) default ``eps`` is 1e-10.

    Defaults as ``torch.optim.Adagrad``: lr=1e-2, lr_decay=0, weight_decay=0 (L2, added to
    the gradient), initial_accumulator_value=0, eps=1e-10, maximize=False.
    Kernel: :func:`fastopt.kernels.adagrad`.
    """

    name, class_name, torch_class = "adagrad", "Adagrad", "Adagrad"
    kernel = adagrad
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10, maximize=False)
    sources = {"clr": ("lr", "lr / (1 + (t - 1) * lr_decay)")}

    def check(self, group):
        check_lr(group)
        check_number(group, "lr_decay", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_number(group, "initial_accumulator_value", 0.0)
        check_number(group, "eps", 0.0)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("sum",)

    def initial_state(self, name, group):
        return group["initial_accumulator_value"]

    def scalars(self, group, t, fresh):
        return {**self.step_scalars(group, t), "eps": group["eps"],
                "weight_decay": group["weight_decay"]}

    def step_scalars(self, group, t):
        return {"clr": group["lr"] / (1 + (t - 1) * group["lr_decay"])}
