"""Learning-rate schedules: small callables ``schedule(step) -> float``.

``step`` is the number of optimizer steps already taken (0 for the first step); the result is
a plain Python float. An optimizer given ``lr=schedule`` calls ``schedule(t - 1)`` once per
step ``t``. Each schedule is a frozen dataclass: its settings are validated when it is built
(``TypeError`` for a wrong type, ``ValueError`` for a bad value, naming the argument), and
its ``repr`` shows them::

    >>> from fastopt import schedules
    >>> s = schedules.cosine(1e-3, total_steps=1000, warmup_steps=100)
    >>> s(0), s(100), s(1000)
    (0.0003333333333333333, 0.001, 0.0)

Every schedule is a closed form of the step, equal to the ``torch.optim.lr_scheduler``
named in its docstring for the steps that scheduler defines (torch's chainable forms update
the rate recursively, so they agree to rounding: about 1e-13 relative). The classes are
named like functions because at the call site they read as ``lr=cosine(...)``.

Differences from torch, all past the end of a schedule or where torch divides by zero:
``cosine`` and ``warmup_linear_decay`` hold their final rate after ``total_steps`` (torch's
``CosineAnnealingLR`` climbs back up; ``SequentialLR`` of ``LinearLR`` holds too);
``one_cycle`` holds its final rate from step ``total_steps - 1`` on (torch raises past
``total_steps`` and extrapolates at ``total_steps``). ``warmup_start_factor=0`` is allowed
(torch's ``LinearLR`` needs ``start_factor > 0``), and so is ``warmup_steps == total_steps``.
"""

import dataclasses
import math
from dataclasses import dataclass

from .incoming import short_repr
from .validation import check_bool, check_int, check_real

__all__ = ["constant", "step_decay", "exponential", "cosine", "warmup_linear_decay",
           "one_cycle"]

#: The schedule classes by name (``__all__`` lists exactly them): the only ones
#: :func:`from_data` builds.
_NAMES = tuple(__all__)


#: The largest step count a schedule takes: integers up to 2**53 are exact as floats, so
#: the closed forms (which mix steps with floats) stay exact.
MAX_STEPS = 2 ** 53


def _check_real(schedule, name, bound, ok):
    """Validate ``schedule.<name>`` as a finite real number with ``ok(value)``
    (:func:`fastopt.validation.check_real`); store it as a Python float."""
    value = check_real(getattr(schedule, name), name, finite=True)
    if not ok(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be finite and {bound})")
    object.__setattr__(schedule, name, value)


def _check_int(schedule, name, low):
    """Validate ``schedule.<name>`` as an integer in ``[low, MAX_STEPS]``
    (:func:`fastopt.validation.check_int`); store it as a Python int."""
    object.__setattr__(schedule, name, check_int(getattr(schedule, name), name, low,
                                                 MAX_STEPS))


def _check_warmup(schedule):
    """The warmup settings shared by ``cosine`` and ``warmup_linear_decay``."""
    _check_int(schedule, "total_steps", 1)
    _check_int(schedule, "warmup_steps", 0)
    if schedule.warmup_steps > schedule.total_steps:
        raise ValueError(f"Invalid warmup_steps: {schedule.warmup_steps!r} (must be <= "
                         f"total_steps = {schedule.total_steps})")
    _check_real(schedule, "warmup_start_factor", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)


class _Schedule:
    """Base: ``__call__`` validates the step, ``_at(step)`` computes the rate."""

    def __call__(self, step):
        step = check_int(step, "step", 0, MAX_STEPS)
        try:
            return float(self._at(step))
        except OverflowError:   # gamma ** step beyond float64, for gamma > 1
            return math.inf

    def _warmup(self, step):
        """Linear warmup from ``warmup_start_factor * lr`` at step 0 toward ``lr`` at step
        ``warmup_steps`` (``LinearLR``'s closed form)."""
        f = self.warmup_start_factor
        return self.lr * (f + (1.0 - f) * step / self.warmup_steps)


@dataclass(frozen=True)
class constant(_Schedule):
    """``lr`` at every step. torch: no scheduler (or ``ConstantLR(factor=1.0)``)."""

    lr: float

    def __post_init__(self):
        _check_real(self, "lr", ">= 0", lambda v: v >= 0.0)

    def _at(self, step):
        return self.lr


@dataclass(frozen=True)
class step_decay(_Schedule):
    """``lr * gamma ** (step // step_size)``: multiply by ``gamma`` every ``step_size`` steps.

    torch: ``StepLR(optimizer, step_size, gamma)``.
    """

    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        _check_real(self, "lr", ">= 0", lambda v: v >= 0.0)
        _check_int(self, "step_size", 1)
        _check_real(self, "gamma", "> 0", lambda v: v > 0.0)

    def _at(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class exponential(_Schedule):
    """``lr * gamma ** step``. torch: ``ExponentialLR(optimizer, gamma)``."""

    lr: float
    gamma: float

    def __post_init__(self):
        _check_real(self, "lr", ">= 0", lambda v: v >= 0.0)
        _check_real(self, "gamma", "> 0", lambda v: v > 0.0)

    def _at(self, step):
        return self.lr * self.gamma ** step


@dataclass(frozen=True)
class cosine(_Schedule):
    """Linear warmup, then cosine annealing from ``lr`` to ``min_lr`` at ``total_steps``.

    With ``W = warmup_steps``, ``T = total_steps``, ``f = warmup_start_factor``::

        step < W:       lr * (f + (1 - f) * step / W)
        W <= step < T:  min_lr + (lr - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2
        step >= T:      min_lr

    The rate is ``lr`` exactly at step ``W`` and ``min_lr`` from step ``T`` on. Defaults:
    ``warmup_steps=0`` (no warmup: plain cosine from ``lr`` at step 0),
    ``warmup_start_factor=1/3`` (``LinearLR``'s default), ``min_lr=0``.

    torch: ``CosineAnnealingLR(optimizer, T_max=T, eta_min=min_lr)`` when ``W = 0``;
    otherwise ``SequentialLR(optimizer, [LinearLR(optimizer, start_factor=f,
    end_factor=1.0, total_iters=W), CosineAnnealingLR(optimizer, T_max=T - W,
    eta_min=min_lr)], milestones=[W])``. Differs after step ``T``: torch's cosine climbs
    back toward ``lr`` (period ``2 * (T - W)``); this one stays at ``min_lr``.
    ``warmup_steps == total_steps`` (torch: division by zero) gives the warmup, then
    ``min_lr`` from step ``T``; ``f = 0`` (torch: rejected) starts from a rate of 0.
    """

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    warmup_start_factor: float = 1.0 / 3.0

    def __post_init__(self):
        _check_real(self, "lr", ">= 0", lambda v: v >= 0.0)
        _check_warmup(self)
        _check_real(self, "min_lr", f"in [0, lr = {self.lr!r}]",
                    lambda v: 0.0 <= v <= self.lr)

    def _at(self, step):
        if step >= self.total_steps:
            return self.min_lr
        if step < self.warmup_steps:
            return self._warmup(step)
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


@dataclass(frozen=True)
class warmup_linear_decay(_Schedule):
    """Linear warmup to ``lr``, then linear decay to ``end_factor * lr`` at ``total_steps``.

    With ``W = warmup_steps``, ``T = total_steps``, ``f = warmup_start_factor``,
    ``e = end_factor``::

        step < W:       lr * (f + (1 - f) * step / W)
        W <= step < T:  lr * (1 + (e - 1) * (step - W) / (T - W))
        step >= T:      lr * e

    Defaults: ``end_factor=0``, ``warmup_start_factor=1/3`` (``LinearLR``'s default).

    torch: ``SequentialLR(optimizer, [LinearLR(optimizer, start_factor=f, end_factor=1.0,
    total_iters=W), LinearLR(optimizer, start_factor=1.0, end_factor=e, total_iters=T - W)],
    milestones=[W])`` (plain ``LinearLR(optimizer, 1.0, e, total_iters=T)`` when
    ``W = 0``). Also holds ``lr * e`` after ``T``, as torch does. ``warmup_steps ==
    total_steps`` (torch: division by zero) gives the warmup, then ``lr * e`` from step
    ``T``; ``f = 0`` (torch: rejected) starts from a rate of 0.
    """

    lr: float
    warmup_steps: int
    total_steps: int
    end_factor: float = 0.0
    warmup_start_factor: float = 1.0 / 3.0

    def __post_init__(self):
        _check_real(self, "lr", ">= 0", lambda v: v >= 0.0)
        _check_warmup(self)
        _check_real(self, "end_factor", "in [0, 1]", lambda v: 0.0 <= v <= 1.0)

    def _at(self, step):
        if step >= self.total_steps:
            return self.lr * self.end_factor
        if step < self.warmup_steps:
            return self._warmup(step)
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.lr * (1.0 + (self.end_factor - 1.0) * progress)


@dataclass(frozen=True)
class one_cycle(_Schedule):
    """The 1cycle policy (Smith & Topin, 2017, arXiv:1708.07120): up from
    ``max_lr / div_factor`` to ``max_lr``, then down to ``max_lr / div_factor /
    final_div_factor`` at step ``total_steps - 1``.

    Phases, each annealed by ``anneal_strategy`` (``"cos"``: ``end + (start - end) *
    (1 + cos(pi * pct)) / 2``; ``"linear"``: ``start + (end - start) * pct``, with ``pct``
    the fraction of the phase done), ``initial = max_lr / div_factor``, ``final = initial /
    final_div_factor``, ``p = pct_start``, ``T = total_steps``::

        two phases:   initial -> max_lr over steps [0, p*T - 1];  max_lr -> final up to T - 1
        three_phase:  initial -> max_lr over [0, p*T - 1];  max_lr -> initial up to 2*p*T - 2;
                      initial -> final up to T - 1

    Steps past ``T - 1`` hold the rate of step ``T - 1`` (``final`` for ``pct_start < 1``
    two-phase, and for ``pct_start <= 1/2`` three-phase).

    torch: ``OneCycleLR(optimizer, max_lr, total_steps, pct_start, anneal_strategy,
    div_factor=div_factor, final_div_factor=final_div_factor, three_phase=three_phase,
    cycle_momentum=False)``, with the same phase boundaries and arithmetic. The learning
    rate only: no momentum cycling (torch's default ``cycle_momentum=True`` also moves
    ``momentum`` or ``beta1`` between 0.95 and 0.85 inversely to the rate; set those on
    the optimizer yourself). Differs where torch fails: a zero-length phase (``p*T == 1``)
    gives that phase's end rate (torch: division by zero); past ``T - 1`` torch
    extrapolates one step, then raises.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self):
        _check_real(self, "max_lr", ">= 0", lambda v: v >= 0.0)
        _check_int(self, "total_steps", 1)
        _check_real(self, "pct_start", "in (0, 1)", lambda v: 0.0 < v < 1.0)
        if not isinstance(self.anneal_strategy, str):
            raise TypeError(f"anneal_strategy must be a str, got {self.anneal_strategy!r}")
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"Invalid anneal_strategy: {self.anneal_strategy!r} (must be "
                             "'cos' or 'linear')")
        _check_real(self, "div_factor", "> 0", lambda v: v > 0.0)
        _check_real(self, "final_div_factor", "> 0", lambda v: v > 0.0)
        object.__setattr__(self, "three_phase", check_bool(self.three_phase, "three_phase"))

    def _phases(self):
        """``(end_step, start_lr, end_lr)`` per phase, as ``OneCycleLR`` builds them."""
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        warm_end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            return ((warm_end, initial, self.max_lr),
                    (float(2 * self.pct_start * self.total_steps) - 2, self.max_lr, initial),
                    (self.total_steps - 1, initial, final))
        return ((warm_end, initial, self.max_lr), (self.total_steps - 1, self.max_lr, final))

    def _at(self, step):
        step = min(step, self.total_steps - 1)
        phases = self._phases()
        start_step = 0.0
        for i, (end_step, start_lr, end_lr) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                span = end_step - start_step
                pct = (step - start_step) / span if span else 1.0
                if self.anneal_strategy == "cos":
                    return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (end_lr - start_lr) * pct + start_lr
            start_step = end_step
        raise AssertionError("unreachable")  # the last phase always returns


def to_data(schedule):
    """``{"schedule": class name, "fields": {field: value}}``: a schedule as plain data
    (numbers, strings, bools) that JSON holds exactly and :func:`from_data` turns back
    into an equal schedule. Checkpoints store schedules this way: no pickle, no code.

    Raises ``TypeError`` for anything but an instance of one of this module's classes
    (a subclass, a lambda, any other callable)."""
    name = type(schedule).__name__
    if name not in _NAMES or type(schedule) is not globals()[name]:
        raise TypeError(f"cannot store {name} {schedule!r}: only fastopt.schedules "
                        f"({', '.join(_NAMES)}) can be stored")
    return {"schedule": name, "fields": {field.name: getattr(schedule, field.name)
                                         for field in dataclasses.fields(schedule)}}


def from_data(data):
    """The schedule :func:`to_data` described, built (and so validated) by its class.

    Raises ``ValueError`` for anything else: not ``{"schedule": name, "fields": {...}}``,
    a name that is not one of this module's classes, unknown or missing fields, or
    values the class refuses (of any type: this is data from a file, not a call)."""
    if not isinstance(data, dict) or set(data) != {"schedule", "fields"} \
            or not isinstance(data["fields"], dict):
        raise ValueError(f"a stored schedule is {{'schedule': name, 'fields': {{...}}}}, "
                         f"got {short_repr(data)}")
    name, fields = data["schedule"], data["fields"]
    if name not in _NAMES:
        raise ValueError(f"unknown schedule {short_repr(name)}; fastopt.schedules has "
                         f"{', '.join(_NAMES)}")
    cls = globals()[name]
    known = {field.name for field in dataclasses.fields(cls)}
    required = {field.name for field in dataclasses.fields(cls)
                if field.default is dataclasses.MISSING}
    if set(fields) - known or required - set(fields):
        raise ValueError(f"schedule {name} takes fields {sorted(known)} (required: "
                         f"{sorted(required)}), got {sorted(fields, key=str)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"schedule {name}: {error}") from None

