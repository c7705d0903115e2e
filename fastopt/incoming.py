"""Values that come from outside: state dicts and checkpoints, converted and checked.

Both front ends' ``load_state_dict`` and :func:`fastopt.load` pass every incoming value
through these functions before they write anything, so a refused load changes nothing and
the same bad value gets the same error everywhere:

* :func:`state_array`: a state buffer (``exp_avg``, ...) as a real NumPy array;
* :func:`step_count`: a step count as a Python int;
* :func:`plain_value`: a hyperparameter with tensors and NumPy scalars made Python numbers.

Only NumPy is imported; torch tensors are recognised by their methods (torch is imported
only when a tensor is seen, so it is already loaded).
"""

import math
import numbers

import numpy as np

from .validation import check_real, short_repr   # short_repr: re-exported for its users

#: The largest step count accepted: every whole number up to it is exact in a float64.
MAX_STEP = 2 ** 53

#: NumPy dtype kinds a state buffer may have: float, signed and unsigned integer.
_REAL_KINDS = "fiu"


def state_array(value, what):
    """``value`` as a NumPy array of a real float or integer dtype (a view where possible).

    Accepts NumPy arrays and scalars (``ml_dtypes.bfloat16`` too: low-precision state)
    and dense (strided) CPU torch tensors of a real dtype (a bfloat16 tensor is widened
    to float32, exactly). Raises ``TypeError``
    naming ``what`` for anything else: Python numbers and lists (arrays come from arrays
    or tensors only), object, string, bool or complex arrays, sparse, quantized or
    non-CPU tensors. The caller checks the shape and casts to the parameter's dtype."""
    if hasattr(value, "detach") and hasattr(value, "layout"):
        value = _tensor_to_numpy(value, what)
    elif isinstance(value, np.generic):
        value = np.asarray(value)
    elif not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be an array (numpy.ndarray or torch tensor), got "
                        f"{type(value).__name__} {short_repr(value)}")
    array = np.asarray(value)  # an ndarray subclass (np.matrix, ...) as a plain view
    if array.dtype.kind not in _REAL_KINDS and array.dtype.name != "bfloat16":
        raise TypeError(f"{what} has dtype {array.dtype}; state must be a real float or "
                        "integer array (not object, str, bool or complex)")
    return array


def _tensor_to_numpy(tensor, what):
    import torch

    if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.is_quantized:
        layout = str(tensor.layout).replace("torch.", "")
        raise TypeError(f"{what} is a {layout} {str(tensor.dtype).replace('torch.', '')} "
                        f"tensor on {tensor.device}; state must be a dense (strided) CPU "
                        "tensor of a real dtype")
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{what} has dtype {tensor.dtype}; state must be a real float or "
                        "integer tensor (not bool or complex)")
    tensor = tensor.detach().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as error:  # a dtype NumPy has no counterpart for
        raise TypeError(f"{what} has dtype {tensor.dtype}, which NumPy cannot hold "
                        f"({error})") from None


def step_count(value, what, low):
    """``value`` (a number, or a one-element array or tensor) as an int in
    ``[low, MAX_STEP]``; ``ValueError`` naming ``what`` for anything else: bools, strings,
    NaN, infinities, fractions, numbers out of range (huge ints included)."""
    number = value
    if hasattr(value, "detach") or isinstance(value, (np.ndarray, np.generic)):
        try:
            array = state_array(value, what)
        except TypeError as error:
            raise ValueError(f"{what} is not a step count: {error}") from None
        number = array.item() if array.size == 1 else None
    ok = not isinstance(number, bool) and isinstance(number, numbers.Real)
    if ok and not isinstance(number, numbers.Integral):
        number = float(number)
        ok = math.isfinite(number) and number.is_integer()
    if ok:
        number = int(number)
        ok = low <= number <= MAX_STEP
    if not ok:
        raise ValueError(f"{what} is {short_repr(value)}; a step count is a whole number in "
                         f"[{low}, 2**53]")
    return number


def plain_value(value, what):
    """``value`` with one-element tensors and NumPy scalars or arrays as Python numbers,
    and tuples and lists converted item by item (keeping their type); anything else as it
    is (the rule's ``check_group`` judges it). Raises ``ValueError`` naming ``what`` for an
    integer too large for a float (instead of the ``OverflowError`` a float conversion
    gives later) and, as torch.optim does, for a tensor of other than one element."""
    if isinstance(value, (tuple, list)):
        return type(value)(plain_value(item, f"{what}[{i}]") for i, item in enumerate(value))
    if hasattr(value, "detach") and hasattr(value, "numel"):
        if value.numel() != 1:   # torch.optim's error for a tensor hyperparameter
            raise ValueError(f"Tensor {what} must be 1-element, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, (np.ndarray, np.generic)) and value.size == 1:
        value = value.item()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        check_real(value, what)   # too large for a float: every entry's ValueError
    return value
