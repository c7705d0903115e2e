"""The rules: one stateless :class:`~fastopt.rules.base.Rule` per update rule, the one
registry every front end, the bench, the asv suite, the demo and the tests read.

``RULES`` maps each rule's name to its ``Rule``, in registration order (the seed's rules
first). Every module of this package is imported here, so a new rule is a new module
(with a ``Rule`` subclass that has a ``name``) and nothing else in this package changes.
"""

import importlib
import pkgutil

from .base import REGISTRY as RULES
from .base import Rule, check_betas, check_flags, lerp_coefficient

#: The seed's rules (and AdamW), imported first so the registry lists them first.
_FIRST = ("sgd", "adagrad", "rmsprop", "adam")

for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__)
                               if m.name not in _FIRST and m.name != "base")):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["RULES", "Rule", "check_betas", "check_flags", "lerp_coefficient"]
