"""Rprop: resilient backpropagation."""

from ..kernels.rprop import rprop
from ..validation import check_lr, check_real
from .base import Rule, check_flags


class Rprop(Rule):
    r"""Rprop (Riedmiller & Braun, 1993): per-element step sizes adapted by the sign of
    successive gradients; the gradient's magnitude is ignored.

    ``s = step_size * (etaplus if g*prev > 0 else etaminus if g*prev < 0 else 1)``,
    clamped to ``step_sizes``; where the sign flipped, ``g = 0`` (no move, and the next
    step's factor is 1); ``p -= sign(g) * s``; ``prev = g``. ``step_size`` starts at
    ``lr``. As torch on the CPU: ``sign(NaN)`` is 0 (a NaN gradient does not move the
    parameter; ``prev`` keeps it).

    Defaults as ``torch.optim.Rprop``: lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50),
    maximize=False (no weight decay). ``0 < etaminus < 1 < etaplus`` as torch;
    ``0 <= min <= max``, which torch does not check. State ``prev``, ``step_size``.
    Kernel: :func:`fastopt.kernels.rprop`.
    """

    name, class_name, torch_class = "rprop", "Rprop", "Rprop"
    kernel = rprop
    defaults = dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), maximize=False)
    sources = {"etaminus": ("etas", "etaminus"), "etaplus": ("etas", "etaplus"),
               "step_size_min": ("step_sizes", "min"), "step_size_max": ("step_sizes", "max")}

    def check(self, group):
        check_lr(group)
        for key in ("etas", "step_sizes"):
            if not isinstance(group[key], (tuple, list)) or len(group[key]) != 2:
                raise TypeError(f"{key} must be a pair of numbers, got {group[key]!r}")
        etaminus, etaplus = (check_real(e, "etas") for e in group["etas"])
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"Invalid eta values: {etaminus}, {etaplus} (must be "
                             "0 < etaminus < 1 < etaplus)")
        low, high = (check_real(s, "step_sizes", 0.0) for s in group["step_sizes"])
        if low > high:
            raise ValueError(f"Invalid step_sizes: {low}, {high} (min must be <= max)")
        check_flags(group, "maximize")

    def state_names(self, group):
        return ("prev", "step_size")

    def initial_state(self, name, group):
        return group["lr"] if name == "step_size" else 0.0

    def step_scalars(self, group, t):
        return {}   # (its scalars read the group only)

    def scalars(self, group, t, fresh):
        (etaminus, etaplus), (low, high) = group["etas"], group["step_sizes"]
        return dict(etaminus=etaminus, etaplus=etaplus, step_size_min=low,
                    step_size_max=high)
