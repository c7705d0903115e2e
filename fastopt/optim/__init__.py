"""The NumPy front end: one :class:`Optimizer` class per rule of the registry
(:mod:`fastopt.rules`), named by the rule's ``class_name`` (``fastopt.optim.Adam``, ...).

Each class is :class:`Optimizer` bound to its rule: the rule's defaults, its docstring
(the formula, the defaults, the references), and its validation, state and kernel.
"""

from ..rules import RULES
from .base import Optimizer
from .clip import clip_grad_norm


def optimizer_class(rule):
    """The :class:`Optimizer` subclass for ``rule`` (a :class:`~fastopt.rules.base.Rule`)."""
    doc = (rule.__doc__ or "") + (
        "\n    Takes the params (arrays, a ``fastopt.flatten`` result, or param groups), the "
        "hyperparameters above by keyword, and the loop options ``clip_grad_norm``, "
        "``grad_scale`` and ``skip_if_nonfinite`` (see :class:`fastopt.optim.Optimizer`).\n")
    return type(rule.class_name, (Optimizer,), {
        "rule": rule, "defaults": dict(rule.defaults), "__doc__": doc,
        "__module__": __name__, "__qualname__": rule.class_name})


#: class name -> the NumPy optimizer class, for every registered rule.
CLASSES = {rule.class_name: optimizer_class(rule) for rule in RULES.values()}
globals().update(CLASSES)

__all__ = ["clip_grad_norm", "Optimizer", "CLASSES", *CLASSES]
