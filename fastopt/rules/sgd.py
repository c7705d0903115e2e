"""SGD: the seed's gradient descent, stochastic and minibatch SGD, momentum, Nesterov."""

from ..kernels.sgd import sgd
from ..validation import check_lr, check_number
from .base import Rule, check_flags


class SGD(Rule):
    r"""Stochastic gradient descent, with optional momentum and Nesterov momentum.

    Plain: ``p -= lr * g``. The seed's gradient descent, stochastic and minibatch SGD are
    this one rule; they differ only in which examples make ``g``.

    Momentum (PyTorch's form): ``b = momentum*b + (1 - dampening)*g`` (``b = g`` on the
    first step), ``p -= lr*b``. The seed writes ``v = eps*v - lr*g; w += v``, which is the
    same trajectory with ``v = -lr*b`` while ``lr`` is constant.

    Nesterov: ``p -= lr*(g + momentum*b)``. The seed evaluates ``g`` at the look-ahead
    point ``w + eps*v``; storing the look-ahead point as the parameter gives this form,
    with ``p_t = w_t + momentum*v_t`` (``tests/test_seed_forms.py`` proves it).

    ``weight_decay`` adds ``weight_decay*p`` to the gradient (L2); ``maximize`` ascends.
    Defaults as ``torch.optim.SGD``: lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, maximize=False. Kernel: :func:`fastopt.kernels.sgd`.
    """

    name, class_name, torch_class = "sgd", "SGD", "SGD"
    kernel = sgd
    counts_steps = False
    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                    nesterov=False, maximize=False)
    sources = {"buffer_decay": ("momentum", "momentum"),
               "buffer_gain": ("dampening", "1 - dampening")}

    def check(self, group):
        check_lr(group)
        check_number(group, "momentum", 0.0)
        check_number(group, "dampening")
        check_number(group, "weight_decay", 0.0)
        check_flags(group, "nesterov", "maximize")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")

    def state_names(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def options(self, group):
        return {"use_momentum": group["momentum"] != 0, "nesterov": group["nesterov"]}

    def step_scalars(self, group, t):
        return {}   # (its scalars read the group only)

    def scalars(self, group, t, fresh):
        momentum = group["momentum"]
        if momentum != 0 and "momentum_buffer" not in fresh:
            decay, gain = momentum, 1.0 - group["dampening"]
        else:  # the first step: b = g
            decay, gain = 0.0, 1.0
        return dict(lr=group["lr"], weight_decay=group["weight_decay"], momentum=momentum,
                    buffer_decay=decay, buffer_gain=gain)
