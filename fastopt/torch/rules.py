"""The drop-in classes: one ``fastopt.torch`` class per rule of the registry.

Each class is made from its :class:`~fastopt.rules.base.Rule` by :func:`torch_class`: the
constructor has ``torch.optim``'s signature for that rule (read from torch itself: the same
names, order, defaults and keyword-only markers), then the rule's own extras that torch
lacks (RMSprop's ``nesterov`` and ``eps_in_sqrt``) and fastopt's loop options
``clip_grad_norm``, ``grad_scale`` and ``skip_if_nonfinite``, all keyword-only. A rule
torch does not have (``torch_class`` None) takes its hyperparameters in the rule's order.
The group dict holds the same keys as torch's (so ``state_dict`` param groups
interchange). The formulas are in the rules' docstrings.

``foreach`` is accepted and ignored: fastopt's kernel always updates a whole flat buffer in
one fused pass. ``fused=True`` changes only how ``torch.amp.GradScaler`` treats the
optimizer, as it does for torch's fused classes: it hands the unscaling to ``step`` (see
:mod:`fastopt.torch`). ``differentiable=True`` and ``capturable=True`` raise ``ValueError``.

Three rules need more than the registry says, and subclass the generated class: Adagrad
(torch creates its state at construction), Adam (``decoupled_weight_decay=True`` makes it
AdamW, as torch's Adam) and AdamW (always decoupled).
"""

import inspect

import torch

from ..rules import RULES
from .optimizer import Optimizer

#: fastopt's loop options: keyword-only in every class, with their defaults.
LOOP_OPTIONS = dict(clip_grad_norm=None, grad_scale=1.0, skip_if_nonfinite=False)


def constructor_signature(rule):
    """The ``__init__`` signature of ``rule``'s class: torch.optim's for the rule (with
    the rule's default where torch's differs in value), then the rule's extras and the
    loop options, keyword-only."""
    Parameter = inspect.Parameter
    params = [Parameter("self", Parameter.POSITIONAL_OR_KEYWORD),
              Parameter("params", Parameter.POSITIONAL_OR_KEYWORD)]
    theirs = getattr(torch.optim, rule.torch_class) if rule.torch_class else None
    if theirs is not None:
        for name, p in list(inspect.signature(theirs.__init__).parameters.items())[2:]:
            default = p.default
            if name in rule.defaults and rule.defaults[name] != default:
                default = rule.defaults[name]
            params.append(p.replace(default=default, annotation=Parameter.empty))
    else:
        params += [Parameter(name, Parameter.POSITIONAL_OR_KEYWORD, default=value)
                   for name, value in rule.defaults.items()]
    known = {p.name for p in params}
    params += [Parameter(name, Parameter.KEYWORD_ONLY, default=value)
               for name, value in {**rule.defaults, **LOOP_OPTIONS}.items()
               if name not in known]
    kinds = sorted(params, key=lambda p: p.kind)   # keyword-only after the positional ones
    return inspect.Signature(kinds)


def torch_class(rule, base=Optimizer):
    """The ``fastopt.torch`` class for ``rule`` (a subclass of ``base``)."""
    signature = constructor_signature(rule)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        params = values.pop("params")
        loop = {name: values.pop(name) for name in LOOP_OPTIONS}
        for key, value in rule.rule_keys().items():   # AdamW's decoupled_weight_decay, as torch
            values.setdefault(key, value)
        Optimizer.__init__(self, params, values, **loop)

    __init__.__signature__ = signature
    torch_name = f"``torch.optim.{rule.torch_class}``" if rule.torch_class else "a torch optimizer"
    doc = (f"{torch_name} on fastopt's {rule.class_name} rule "
           f"(:class:`fastopt.{rule.class_name}`; kernel "
           f":func:`fastopt.kernels.{rule.kernel.__name__}`). State: "
           f"{', '.join(('step',) * rule.counts_steps + rule.state_names(rule.defaults))}"
           " (with the defaults), as torch.optim keeps it.\n\n" + (rule.__doc__ or ""))
    return type(rule.class_name, (base,), {
        "rule": rule, "has_step": rule.counts_steps, "__init__": __init__,
        "__doc__": doc, "__module__": "fastopt.torch", "__qualname__": rule.class_name})


#: class name -> class, for every registered rule.
CLASSES = {rule.class_name: torch_class(rule) for rule in RULES.values()}


class Adagrad(CLASSES["Adagrad"]):
    """``torch.optim.Adagrad`` on fastopt's Adagrad kernel (:class:`fastopt.Adagrad`).
    State ``step`` and ``sum``, as torch.optim.Adagrad (2.13) creates it: at construction
    for every param given to the constructor (frozen ones too), at their first step for
    params added by ``add_param_group``; ``sum`` starts at the constructor's
    ``initial_accumulator_value`` in every group (torch reads ``defaults``, never a
    group's own value)."""

    eager_state = True
    __module__, __qualname__ = "fastopt.torch", "Adagrad"

    def _hyperparameters(self, group):
        """The group checked as it is, then with the constructor's
        ``initial_accumulator_value`` (the one torch fills ``sum`` with) in place of its
        own."""
        rule, plain = super()._hyperparameters(group)
        value = self.defaults["initial_accumulator_value"]
        if group.get("initial_accumulator_value", value) is value:
            return rule, plain
        return super()._hyperparameters({**group, "initial_accumulator_value": value})


class Adam(CLASSES["Adam"]):
    """``torch.optim.Adam`` on fastopt's Adam kernel (:class:`fastopt.Adam`); with
    ``decoupled_weight_decay=True`` (torch's keyword) it is AdamW. State ``step``,
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad)."""

    __module__, __qualname__ = "fastopt.torch", "Adam"

    def _rule_for(self, group):
        return RULES["adamw" if group.get("decoupled_weight_decay", False) else "adam"]


class AdamW(CLASSES["AdamW"]):
    """``torch.optim.AdamW`` on fastopt's Adam kernel with decoupled weight decay
    (:class:`fastopt.AdamW`); default weight_decay 1e-2. A group with
    ``decoupled_weight_decay=False`` (an Adam state dict, which torch.optim.AdamW silently
    makes decoupled) is refused."""

    __module__, __qualname__ = "fastopt.torch", "AdamW"

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True


CLASSES.update(Adagrad=Adagrad, Adam=Adam, AdamW=AdamW)
