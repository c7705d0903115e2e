"""The drop-in classes: torch.optim's constructor signatures and defaults, fastopt's rules.

Each class only names its :mod:`fastopt.optim` rule and builds the ``defaults`` dict
torch.optim would (same keys, so ``state_dict`` param groups interchange). The formulas
are in the rule classes' docstrings. ``foreach`` is accepted and ignored: fastopt's kernel
always updates a whole flat buffer in one fused pass. ``fused=True`` changes only how
``torch.amp.GradScaler`` treats the optimizer, as it does for torch's fused classes: it
hands the unscaling to ``step`` (see :mod:`fastopt.torch`).
``differentiable=True`` and ``capturable=True`` raise ``ValueError``. Every class also
takes fastopt's keyword-only loop options ``clip_grad_norm``, ``grad_scale`` and
``skip_if_nonfinite`` (see :mod:`fastopt.torch`).
"""

from .. import optim
from .optimizer import Optimizer


class SGD(Optimizer):
    """``torch.optim.SGD`` on fastopt's SGD kernel (:class:`fastopt.optim.SGD`):
    momentum, dampening, Nesterov, L2 weight decay, maximize. State: ``momentum_buffer``
    (only when momentum != 0; no ``step``), as torch.optim."""

    rule = optim.SGD
    has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, clip_grad_norm=None, grad_scale=1.0, skip_if_nonfinite=False):
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused), clip_grad_norm=clip_grad_norm,
            grad_scale=grad_scale, skip_if_nonfinite=skip_if_nonfinite)


class Adagrad(Optimizer):
    """``torch.optim.Adagrad`` on fastopt's Adagrad kernel (:class:`fastopt.optim.Adagrad`).
    State ``step`` and ``sum``, as torch.optim.Adagrad (2.13) creates it: at construction
    for every param given to the constructor (frozen ones too), at their first step for
    params added by ``add_param_group``; ``sum`` starts at the constructor's
    ``initial_accumulator_value`` in every group (torch reads ``defaults``, never a
    group's own value)."""

    rule = optim.Adagrad
    eager_state = True

    def _hyperparameters(self, group):
        """The group checked as it is, then with the constructor's
        ``initial_accumulator_value`` (the one torch fills ``sum`` with) in place of its
        own."""
        rule, plain = super()._hyperparameters(group)
        value = self.defaults["initial_accumulator_value"]
        if group.get("initial_accumulator_value", value) is value:
            return rule, plain
        return super()._hyperparameters({**group, "initial_accumulator_value": value})

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None, clip_grad_norm=None, grad_scale=1.0,
                 skip_if_nonfinite=False):
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused),
            clip_grad_norm=clip_grad_norm, grad_scale=grad_scale,
            skip_if_nonfinite=skip_if_nonfinite)


class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` on fastopt's RMSprop kernel (:class:`fastopt.optim.RMSprop`),
    plus fastopt's keyword-only extras ``nesterov`` (the seed's RMSprop with Nesterov
    momentum; needs momentum > 0) and ``eps_in_sqrt`` (``sqrt(r + eps)``, the seed's form).
    State ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg``
    (centered)."""

    rule = optim.RMSprop

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, nesterov=False, eps_in_sqrt=False,
                 clip_grad_norm=None, grad_scale=1.0, skip_if_nonfinite=False):
        super().__init__(params, dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable, nesterov=nesterov,
            eps_in_sqrt=eps_in_sqrt), clip_grad_norm=clip_grad_norm,
            grad_scale=grad_scale, skip_if_nonfinite=skip_if_nonfinite)


class Adam(Optimizer):
    """``torch.optim.Adam`` on fastopt's Adam kernel (:class:`fastopt.optim.Adam`);
    with ``decoupled_weight_decay=True`` (torch's keyword) it is AdamW. State ``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad)."""

    rule = optim.Adam

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 clip_grad_norm=None, grad_scale=1.0, skip_if_nonfinite=False):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay), clip_grad_norm=clip_grad_norm,
            grad_scale=grad_scale, skip_if_nonfinite=skip_if_nonfinite)

    def _rule_for(self, group):
        rule = optim.AdamW if group.get("decoupled_weight_decay", False) else optim.Adam
        return rule.__new__(rule)


class AdamW(Adam):
    """``torch.optim.AdamW`` on fastopt's Adam kernel with decoupled weight decay
    (:class:`fastopt.optim.AdamW`); default weight_decay 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, clip_grad_norm=None, grad_scale=1.0,
                 skip_if_nonfinite=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, clip_grad_norm=clip_grad_norm,
                         grad_scale=grad_scale, skip_if_nonfinite=skip_if_nonfinite)

    def _rule_for(self, group):
        """Always AdamW: a group with ``decoupled_weight_decay=False`` (an Adam state
        dict, which torch.optim.AdamW silently makes decoupled) is refused."""
        return optim.AdamW.__new__(optim.AdamW)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True
