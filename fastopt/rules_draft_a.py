"""Host-side scalars for the Adamax, RAdam, Adadelta and Rprop kernels (a draft, to be
moved into the rule registry).

Each ``<rule>_scalars(group, t, fresh)`` returns ``{kernel scalar name: float}`` for step
``t`` (counted from 1), computed in float64 from ``group``, a dict of torch.optim's
hyperparameter names for that rule (``lr``, ``betas``, ``eps``, ``weight_decay``,
``maximize``, ...; missing names take torch's defaults). ``fresh`` is the set of state
names created this step; none of these four rules has a first step that differs (their
state starts as zeros, except Rprop's ``step_size``, which starts at ``lr``: see
:func:`rprop_initial`), so they ignore it. The host casts every value to the buffers'
dtype and adds ``grad_factor`` itself (1/loss_scale times the clip coefficient, negated
for ``maximize``). The names and formulas follow the kernels' docstrings in
``fastopt/kernels/{adamax,radam,adadelta,rprop}.py``.
"""

import math

DEFAULTS = {
    "adamax": {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
               "maximize": False},
    "radam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
              "decoupled_weight_decay": False, "maximize": False},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0,
                 "maximize": False},
    "rprop": {"lr": 1e-2, "etas": (0.5, 1.2), "step_sizes": (1e-6, 50.0),
              "maximize": False},
}


def _group(rule, group):
    return {**DEFAULTS[rule], **group}


def _lerp_weight(beta1):
    """Torch's ``lerp(m, g, w)`` with ``w = 1 - beta1`` is ``m + w*(g - m)`` for
    ``w < 0.5`` and ``g + (w - 1)*(g - m)`` otherwise; the kernels take the coefficient
    and read the branch from its sign (positive: base ``m``)."""
    w = 1 - beta1
    return w if w < 0.5 else w - 1


def adamax_scalars(group, t, fresh=frozenset()):
    g = _group("adamax", group)
    beta1, beta2 = g["betas"]
    return {
        "lerp_weight": _lerp_weight(beta1),
        "beta2": beta2,
        "eps": g["eps"],
        "step_size": g["lr"] / (1 - beta1 ** t),       # torch's clr
        "weight_decay": g["weight_decay"],
    }


def radam_rho(beta2, t):
    """``(rho_inf, rho_t)`` as torch 2.13 computes them (float64, this order)."""
    rho_inf = 2 / (1 - beta2) - 1
    bias_correction2 = 1 - beta2 ** t
    return rho_inf, rho_inf - 2 * t * (beta2 ** t) / bias_correction2


def radam_scalars(group, t, fresh=frozenset()):
    g = _group("radam", group)
    beta1, beta2 = g["betas"]
    lr, wd = g["lr"], g["weight_decay"]
    decoupled = g["decoupled_weight_decay"]
    bias_correction2 = 1 - beta2 ** t
    rho_inf, rho_t = radam_rho(beta2, t)
    rectified = rho_t > 5.0
    if rectified:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return {
        "lerp_weight": _lerp_weight(beta1),
        "beta2": beta2,
        "one_minus_beta2": 1 - beta2,
        "eps": g["eps"],
        "weight_decay": 0.0 if decoupled else wd,
        "param_decay": 1 - lr * wd if decoupled and wd != 0 else 1.0,
        "bias_correction1": 1 - beta1 ** t,
        "lr": lr,
        "rectified": 1.0 if rectified else 0.0,
        "sqrt_bias_correction2": bias_correction2 ** 0.5 if rectified else 0.0,
        "rect": rect if rectified else 0.0,
    }


def adadelta_scalars(group, t, fresh=frozenset()):
    g = _group("adadelta", group)
    rho = g["rho"]
    return {
        "lr": g["lr"],
        "rho": rho,
        "one_minus_rho": 1 - rho,
        "eps": g["eps"],
        "weight_decay": g["weight_decay"],
    }


def rprop_scalars(group, t, fresh=frozenset()):
    g = _group("rprop", group)
    etaminus, etaplus = g["etas"]
    step_size_min, step_size_max = g["step_sizes"]
    return {
        "etaminus": etaminus,
        "etaplus": etaplus,
        "step_size_min": step_size_min,
        "step_size_max": step_size_max,
    }


def rprop_initial(group):
    """The values Rprop's state buffers are filled with when created (torch: ``prev``
    zeros, ``step_size`` full of ``lr``); the other three rules start from zeros."""
    return {"prev": 0.0, "step_size": float(_group("rprop", group)["lr"])}


SCALARS = {"adamax": adamax_scalars, "radam": radam_scalars,
           "adadelta": adadelta_scalars, "rprop": rprop_scalars}
