"""ASGD: averaged stochastic gradient descent."""

from ..kernels.asgd import asgd
from ..validation import check_lr, check_number
from .base import Rule, check_flags


class ASGD(Rule):
    r"""ASGD (Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging"), as torch.optim: SGD with a decaying step and a running average of the
    iterates.

    With ``eta`` and ``mu`` as they stood before step ``t`` (``eta = lr``, ``mu = 1`` at
    first): ``p = p*(1 - lambd*eta) - eta*g``; ``ax = p`` while ``mu == 1``, else
    ``ax += mu*(p - ax)``; then ``eta = lr / (1 + lambd*lr*t)**alpha`` and
    ``mu = 1/max(1, t - t0)``. The averaged parameters ``ax`` are state (``opt.state``);
    the parameters themselves follow SGD.

    torch keeps ``eta`` and ``mu`` as per-parameter state; fastopt derives them from the
    step count (float64) and writes them into state dicts as torch does; a state dict's
    values are accepted and recomputed from its ``step``.

    Defaults as ``torch.optim.ASGD``: lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6,
    weight_decay=0 (L2), maximize=False. State ``ax``, ``eta``, ``mu``. Kernel:
    :func:`fastopt.kernels.asgd`.
    """

    name, class_name, torch_class = "asgd", "ASGD", "ASGD"
    kernel = asgd
    defaults = dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
                    maximize=False)
    scalar_state_names = ("eta", "mu")
    sources = {"param_decay": ("lambd", "1 - lambd * eta"),
               "eta": ("lr", "lr / (1 + lambd * lr * (t - 1))**alpha"),
               "mu": ("t0", "1 / max(1, t - 1 - t0)")}

    def check(self, group):
        check_lr(group)
        check_number(group, "lambd", 0.0)
        check_number(group, "alpha", 0.0)
        check_number(group, "t0", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("ax",)

    def scalar_state(self, group, t):
        lr = group["lr"]
        if t == 0:
            return {"eta": lr, "mu": 1.0}
        return {"eta": lr / ((1.0 + group["lambd"] * lr * t) ** group["alpha"]),
                "mu": 1.0 / max(1.0, t - group["t0"])}

    def scalars(self, group, t, fresh):
        return {"weight_decay": group["weight_decay"], **self.step_scalars(group, t)}

    def step_scalars(self, group, t):
        held = self.scalar_state(group, t - 1)   # step t uses what step t - 1 left
        return {"param_decay": 1.0 - group["lambd"] * held["eta"], "eta": held["eta"],
                "mu": held["mu"]}
