"""Adadelta."""

from ..kernels.adadelta import adadelta
from ..validation import check_lr, check_number
from .base import Rule, check_flags


class Adadelta(Rule):
    r"""Adadelta (Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method").

    ``r = rho*r + (1-rho)*g*g``; ``d = sqrt(a + eps) / sqrt(r + eps) * g``;
    ``a = rho*a + (1-rho)*d*d``; ``p -= lr*d``. The paper has no ``lr`` (torch's default 1
    is the paper's update).

    Defaults as ``torch.optim.Adadelta``: lr=1.0, rho=0.9, eps=1e-6, weight_decay=0 (L2),
    maximize=False. State ``square_avg``, ``acc_delta``. Kernel:
    :func:`fastopt.kernels.adadelta`.
    """

    name, class_name, torch_class = "adadelta", "Adadelta", "Adadelta"
    kernel = adadelta
    defaults = dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False)
    sources = {"one_minus_rho": ("rho", "1 - rho")}

    def check(self, group):
        check_lr(group)
        check_number(group, "rho", 0.0, 1.0)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("square_avg", "acc_delta")

    def step_scalars(self, group, t):
        return {}   # (its scalars read the group only)

    def scalars(self, group, t, fresh):
        rho = group["rho"]
        return dict(lr=group["lr"], rho=rho, one_minus_rho=1.0 - rho, eps=group["eps"],
                    weight_decay=group["weight_decay"])
