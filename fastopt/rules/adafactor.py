"""Adafactor, as ``torch.optim.Adafactor``: factored second moments per parameter tensor."""

import math

import numpy as np

from ..kernels.adafactor import adafactor, state_shape
from ..validation import check_lr, check_number, check_real
from .base import Rule, check_flags, lerp_coefficient


class Adafactor(Rule):
    r"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost"), exactly as ``torch.optim.Adafactor`` (its single-tensor
    version). Per parameter tensor ``p`` of ``n`` elements, step ``t`` (from 1), with
    ``g`` the gradient (negated with ``maximize``)::

        beta2_t = 1 - t**beta2_decay ;  rho = min(lr, 1/sqrt(t))
        alpha = max(eps2, ||p|| / sqrt(n)) * rho           # p before the decay
        p = p * (1 - lr * weight_decay)                    # if weight_decay != 0
        p of 2+ dims, shape (*lead, R, C):   (factored over its last two dims)
            row_var = lerp(row_var, mean(g*g, dim=-1), 1 - beta2_t)    # (*lead, R, 1)
            col_var = lerp(col_var, mean(g*g, dim=-2), 1 - beta2_t)    # (*lead, 1, C)
            v = (row_var @ col_var) / max(mean(row_var, dim=-2), eps1)
        p of 0 or 1 dims:
            variance = lerp(variance, g*g, 1 - beta2_t) ;  v = variance
        u = g / sqrt(max(v, eps1**2))
        denom = max(1, ||u|| / (sqrt(n) * d))
        p = p - (alpha / denom) * u

    ``eps = (eps1, eps2)``; ``eps1=None`` is the machine epsilon of the param's dtype
    (float32 or float64; of the float32 master for half-precision params in
    ``fastopt.torch``, where torch would take the half dtype's). State: ``step``,
    ``row_var`` and ``col_var`` (params of 2+ dims, torch's shapes above: ``R + C``
    elements for an ``R x C`` matrix instead of Adam's ``2 R C``), ``variance`` (params
    of at most one dim, their shape). Defaults as torch: lr=1e-2, beta2_decay=-0.8,
    eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False.

    torch's version differs from the paper: no first moment (the paper's optional
    ``beta1`` momentum is absent); the relative step size ``rho`` is ``min(lr, 1/sqrt(t))``
    (the paper fixes 1e-2 in place of ``lr``) scaled by the parameter's RMS; the decay
    rate ``beta2_t = 1 - t**beta2_decay`` (the paper's ``1 - t**-0.8``, with the exponent
    a hyperparameter); ``eps1`` is applied to the row mean and to the variance estimate
    (the paper adds it to ``g*g``); means instead of sums; ``lr`` also scales decoupled
    weight decay (the paper has none).

    Numerics: every norm and row/column mean is a float64 sum over the tensor (or row, or
    column) in a fixed order, rounded once to the dtype where torch's reduction returns a
    tensor of that dtype; ``alpha`` and ``denom`` are float64 as torch's Python floats.
    torch reduces in the dtype in its own order, so results agree to rounding, not bit for
    bit. Kernel: :func:`fastopt.kernels.adafactor` (per tensor, four passes).
    """

    name, class_name, torch_class = "adafactor", "Adafactor", "Adafactor"
    kernel = adafactor
    per_tensor = True
    member_shapes = True
    defaults = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                    maximize=False)
    sources = {"rho": ("lr", "min(lr, 1/sqrt(t))"),
               "param_decay": ("weight_decay", "1 - lr * weight_decay"),
               "eps1": ("eps", "eps[0]"), "eps1_squared": ("eps", "eps[0]**2"),
               "eps2": ("eps", "eps[1]"),
               "beta2_lerp": ("beta2_decay", "t**beta2_decay")}

    def check(self, group):
        check_lr(group)
        check_real(group["beta2_decay"], "beta2_decay", high=0.0)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
        if eps[0] is not None:
            check_real(eps[0], "epsilon1", 0.0)
        check_real(eps[1], "epsilon2", 0.0)
        check_real(group["d"], "d", 1.0)
        check_number(group, "weight_decay", 0.0)
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("row_var", "col_var", "variance")

    def state_shape(self, name, group, shape):
        return state_shape(name, shape)

    def scalars(self, group, t, fresh):
        """``eps1`` and ``eps1_squared`` are ``None`` when ``eps[0]`` is: the dtype's
        machine epsilon, filled by :meth:`dtype_scalars`."""
        lr, eps1 = group["lr"], group["eps"][0]
        weight = float(t) ** group["beta2_decay"]
        return dict(beta2_lerp=lerp_coefficient(weight),
                    eps1=None if eps1 is None else float(eps1),
                    eps1_squared=None if eps1 is None else float(eps1) * float(eps1),
                    eps2=float(group["eps"][1]), rho=min(lr, 1.0 / math.sqrt(t)),
                    d=group["d"], param_decay=1.0 - lr * group["weight_decay"])

    def dtype_scalars(self, named, dtype):
        if named["eps1"] is None:
            eps1 = float(np.finfo(dtype).eps)
            named["eps1"], named["eps1_squared"] = eps1, eps1 * eps1
        return named
