"""RMSprop, with the seed's variants (delta inside the root, Nesterov momentum)."""

from ..kernels.rmsprop import rmsprop
from ..validation import check_lr, check_number
from .base import Rule, check_flags


class RMSprop(Rule):
    r"""RMSprop (Hinton's lecture 6e): divide the gradient by a running RMS of its history.

    ``r = alpha*r + (1-alpha)*g*g``; ``d = sqrt(r) + eps``; ``p -= lr * g / d``.

    * ``eps_in_sqrt=True``: ``d = sqrt(r + eps)``, the seed's ``sqrt(delta + r)`` (optax's name).
    * ``centered=True``: ``c = c + (1-alpha)*(g - c)`` and ``r - c*c`` replaces ``r`` in ``d``.
    * ``momentum > 0``: ``b = momentum*b + g/d``; ``p -= lr*b`` (PyTorch).
    * ``nesterov=True`` (needs momentum > 0): ``p -= lr*(g/d + momentum*b)``, the seed's
      "RMSProp with momentum" (Goodfellow alg. 8.6), whose gradient is taken at the
      look-ahead point ``w + momentum*v``; storing the look-ahead point as the parameter
      gives this form (``tests/test_seed_forms.py``). PyTorch has no such option.

    Defaults as ``torch.optim.RMSprop``: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0 (L2),
    momentum=0, centered=False, maximize=False; fastopt's extras nesterov=False,
    eps_in_sqrt=False. The seed's delta is 1e-6. Kernel: :func:`fastopt.kernels.rmsprop`.
    ``alpha`` must be in [0, 1]: stricter than torch, which accepts any ``alpha >= 0``,
    though ``alpha > 1`` makes ``1 - alpha`` negative and the running average of
    squares (the root's argument) negative, so every update NaN.
    """

    name, class_name, torch_class = "rmsprop", "RMSprop", "RMSprop"
    kernel = rmsprop
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False, maximize=False, nesterov=False, eps_in_sqrt=False)
    sources = {"one_minus_alpha": ("alpha", "1 - alpha")}

    def check(self, group):
        check_lr(group)
        check_number(group, "alpha", 0.0, 1.0)
        check_number(group, "eps", 0.0)
        check_number(group, "weight_decay", 0.0)
        check_number(group, "momentum", 0.0)
        check_flags(group, "centered", "maximize", "nesterov", "eps_in_sqrt")
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("nesterov=True requires momentum > 0")

    def state_names(self, group):
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return tuple(names)

    def options(self, group):
        return {"centered": group["centered"], "use_momentum": group["momentum"] > 0,
                "nesterov": group["nesterov"], "eps_in_sqrt": group["eps_in_sqrt"]}

    def step_scalars(self, group, t):
        return {}   # (its scalars read the group only)

    def scalars(self, group, t, fresh):
        alpha = group["alpha"]
        return dict(lr=group["lr"], alpha=alpha, one_minus_alpha=1.0 - alpha,
                    eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"])
