"""Validation of every value a public entry takes, in one place, so that the same bad value
gets the same error everywhere: the optimizers (NumPy and torch), the loop options, the
schedules, ``clip_grad_norm``, ``num_threads``, the command line and the environment.

* A wrong kind of value is a ``TypeError`` naming the argument: ``"lr must be a real
  number, got '0.1'"``.
* A wrong value is a ``ValueError`` in ``torch.optim``'s words: ``"Invalid lr: -1.0
  (must be >= 0.0)"``.
* Numbers are :class:`numbers.Real` (Python and NumPy scalars alike); bools are not
  numbers here. NaN is never valid. A Python int too large for a float (beyond ~1.8e308)
  is a ``ValueError``, not an ``OverflowError``. Integers are :class:`numbers.Integral`.

This module imports only the standard library and NumPy: every layer may use it.
"""

import itertools
import math
import numbers
import operator
import os
import warnings

import numpy as np

__all__ = ["check_real", "check_int", "check_bool", "check_number", "check_flag", "check_lr",
           "check_loop_options", "as_floats", "cast_scalars", "env_int", "short_repr"]


def short_repr(value, limit=60):
    """``repr(value)``, shortened for a message: a forged state dict may hold a
    10,000-digit int (whose repr Python may even refuse)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounds(low, high, low_open, high_open):
    if low is not None and high is not None:
        return (f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def check_real(value, name, low=None, high=None, *, low_open=False, high_open=False,
               finite=False):
    """Return ``value`` as a float after checking it is a real number (not a bool) within
    the bounds (``low_open``/``high_open``: strict), not NaN, finite with ``finite``.
    ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"Invalid {name}: {short_repr(value)} (must be a number a float can "
                         "hold, at most ~1.8e308 in magnitude)") from None
    ok = not math.isnan(number) and (math.isfinite(number) or not finite)
    if low is not None:
        ok = ok and (number > low if low_open else number >= low)
    if high is not None:
        ok = ok and (number < high if high_open else number <= high)
    if not ok:
        needs = ["finite"] if finite else []
        if (low, high) != (None, None):
            needs.append(_bounds(low, high, low_open, high_open))
        raise ValueError(f"Invalid {name}: {short_repr(value)} (must be "
                         f"{' and '.join(needs) or 'a number'})")
    return number


def check_int(value, name, low=None, high=None):
    """Return ``value`` as an int after checking it is an integer (``numbers.Integral``,
    NumPy's included, not a bool) in ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {short_repr(value)}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"Invalid {name}: {short_repr(value)} (must be "
                         f"{_bounds(low, high, False, False)})")
    return number


def check_bool(value, name):
    """Return ``value`` as a bool after checking it is one (Python's or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {short_repr(value)}")
    return bool(value)


# --- param groups: the rules' hyperparameters ---------------------------------------

def check_number(group, key, low=None, high=None, *, low_open=False, high_open=False):
    """Validate ``group[key]`` as a real number in the given bounds (:func:`check_real`)."""
    check_real(group[key], key, low, high, low_open=low_open, high_open=high_open)


def check_flag(group, key):
    """Validate ``group[key]`` as a bool (:func:`check_bool`)."""
    check_bool(group[key], key)


def check_lr(group):
    """``lr`` is a number >= 0, or a schedule: a callable of the step count (0 for the
    first step) returning one, evaluated once per step (``fastopt.schedules``)."""
    if not callable(group["lr"]):
        check_number(group, "lr", 0.0)


# --- loop options -----------------------------------------------------------------

def check_loop_options(clip_grad_norm, grad_scale, skip_if_nonfinite):
    """Raise ``TypeError``/``ValueError`` naming the option unless ``clip_grad_norm`` is
    None or a number > 0, ``grad_scale`` a finite number > 0 and ``skip_if_nonfinite`` a
    bool."""
    if clip_grad_norm is not None:
        check_real(clip_grad_norm, "clip_grad_norm", 0.0, low_open=True)
    check_real(grad_scale, "grad_scale", 0.0, low_open=True, finite=True)
    check_bool(skip_if_nonfinite, "skip_if_nonfinite")


# --- the scalars of one kernel call -------------------------------------------------

def as_floats(group):
    """A copy of ``group`` (already validated) with every number a Python float, and every
    tuple or list of numbers a tuple of floats; bools and everything else as they are.
    A step's arithmetic (bias corrections, ``lr / (1 - beta1**t)``) then runs in float64
    whatever the caller passed: NumPy float32 scalars would compute it in float32."""
    return {key: _as_float(value) for key, value in group.items()}


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_float(value):
    if _is_number(value):
        return float(value)
    if isinstance(value, (tuple, list)) and value and all(map(_is_number, value)):
        return tuple(map(float, value))
    return value


#: Finite float64 values at least this large in magnitude round to Inf in float32.
_FLOAT32_OVERFLOW = 3.4028235677973366e38


def cast_scalars(dtype, values, sources):
    """``values`` (numbers a step computed in float64) as a tuple of the scalars a kernel
    over ``dtype`` buffers takes: NumPy float32 scalars for float32, Python floats (which
    Numba types as float64) for float64.

    Raises ``ValueError`` when a finite value does not fit in ``dtype`` (float32 beyond
    ~3.4e38): the kernel would compute with Inf. ``sources`` gives, per value,
    ``(hyperparameter, formula)``: the message names the hyperparameter and shows the
    formula, e.g. ``"Invalid lr: lr / (1 - beta1**t) = 1e+39 (must be at most
    3.4028235e+38 in magnitude: the parameters are float32)"``. Writes nothing and never
    warns (also not under ``-W error``).
    """
    try:
        if dtype.itemsize == 4:
            if not math.hypot(*values) < _FLOAT32_OVERFLOW:   # NaN, Inf or large: look
                _check_range(dtype, values, sources)          # at each value
            items = _ITEMS.get(len(values)) or _items(len(values))
            return items(np.array(values, np.float32))        # one cast for all
        return tuple(map(float, values))
    except (ArithmeticError, RuntimeWarning):   # a huge int; or -W error
        _check_range(dtype, values, sources)
        raise


_ITEMS = {}


def cast_columns(dtype, columns, count):
    """The rows of :func:`cast_scalars` for ``count`` steps, from ``columns``: per scalar,
    in the kernel's order, a list of its values (numbers computed in float64, one per
    step) or one value already cast (the same at every step). Each list is cast as
    :func:`cast_scalars` casts it (the same float32 rounding; Python floats for float64);
    the rows end before the first step :func:`cast_scalars` would refuse (that step
    computes its own and raises), or where a list ends. Never raises.

    By column: a list equal at every step is cast once, its one scalar repeated (a
    1e3-element step's scalars cost a tenth of the step when cast row by row)."""
    lists = [column for column in columns if isinstance(column, list)]
    count = min([count, *map(len, lists)])
    if not count:
        return []
    lists = [column[:count] for column in lists]
    if not lists:
        cast = []
    elif dtype.itemsize != 4:
        try:
            cast = [list(map(float, column)) for column in lists]
        except (ArithmeticError, TypeError):   # a huge int: step by step
            return []
    else:
        same = [column.count(column[0]) == count for column in lists]
        values = [column[:1] if equal else column for column, equal in zip(lists, same)]
        try:   # every value small and finite (hypot >= each one): nothing refused
            fits = math.hypot(*itertools.chain.from_iterable(values)) < _FLOAT32_OVERFLOW
        except (ArithmeticError, TypeError):   # a huge int: step by step
            return []
        if not fits:   # NaN, Inf or large somewhere: the first refused step
            with np.errstate(invalid="ignore"):
                array = np.array(lists, dtype=np.float64)
                refused = (np.isfinite(array) & ~(np.abs(array) < _FLOAT32_OVERFLOW)).any(0)
            if refused.any():
                count = int(np.argmax(refused))
                if not count:
                    return []
                values = [column[:1] if equal else column[:count]
                          for column, equal in zip(values, same)]
        cast = [itertools.repeat(np.float32(column[0]), count) if equal
                else list(np.array(column, dtype=np.float32))
                for column, equal in zip(values, same)]
    cast = iter(cast)
    return list(zip(*[next(cast) if isinstance(column, list)
                      else itertools.repeat(column, count) for column in columns]))


def _items(count):
    """A function returning the ``count`` elements of an array as a tuple of scalars."""
    _ITEMS[count] = (operator.itemgetter(*range(count)) if count > 1 else
                     (lambda array: tuple(array[:count])))
    return _ITEMS[count]


def _check_range(dtype, values, sources):
    limit = _FLOAT32_OVERFLOW if dtype.itemsize == 4 else math.inf
    for value, (name, formula) in zip(values, sources):
        try:
            number = float(value)
            fits = not math.isfinite(number) or abs(number) < limit
        except OverflowError:   # an int beyond float64
            number, fits = value, False
        if not fits:
            shown = short_repr(number)
            if formula != name:
                shown = f"{formula} = {shown}"
            raise ValueError(f"Invalid {name}: {shown} (must be at most "
                             f"{np.finfo(dtype).max:.8g} in magnitude: the parameters are "
                             f"{np.dtype(dtype).name})")


# --- the environment ---------------------------------------------------------------

def env_int(variable, default, low=None):
    """The integer in environment variable ``variable``, or ``default`` when it is unset
    (or empty).
    A value that is not an integer >= ``low`` does not break the import that reads it:
    a ``RuntimeWarning`` names the variable and the value, and ``default`` is used."""
    text = os.environ.get(variable, "")
    if not text.strip():
        return default
    try:
        return check_int(int(text.strip()), variable, low)
    except ValueError as exc:
        reason = str(exc) if str(exc).startswith("Invalid") else (
            f"Invalid {variable}: {text!r} (must be an integer)")
        warnings.warn(f"fastopt: {reason}; using the default, {default}", RuntimeWarning,
                      stacklevel=2)
        return default
