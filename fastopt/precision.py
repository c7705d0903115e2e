"""Half-precision arrays and tensors as the kernels see them: 16-bit integer views.

The kernels take bfloat16 as ``uint16`` bits and float16 as ``int16`` bits
(:mod:`fastopt.kernels.halves`: Numba's CPU target has neither type). This module makes
those views without copying, from NumPy arrays (``ml_dtypes.bfloat16``, ``np.float16``)
and torch tensors (``torch.bfloat16``, ``torch.float16``), and names the formats:
``"float32"``, ``"bfloat16"``, ``"float16"``. ``ml_dtypes`` (NumPy's bfloat16) is an
optional dependency, imported only when a bfloat16 array is encoded or decoded.
"""

import numpy as np

from .kernels.halves import BF16_BITS, FP16_BITS

#: Format name -> the dtype of the view the kernels take.
KERNEL_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BF16_BITS,
                 "float16": FP16_BITS, "float64": np.dtype(np.float64)}
HALF_FORMATS = ("bfloat16", "float16")


def _ml_dtypes():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - the test extra installs it
        raise ImportError("bfloat16 NumPy arrays need ml_dtypes "
                          "(pip install 'fastopt[mixed]')") from None
    return ml_dtypes


def _numpy_format(dtype):
    if dtype == np.float32:
        return "float32"
    if dtype == np.float64:
        return "float64"
    if dtype == np.float16:
        return "float16"
    if dtype.name == "bfloat16":          # ml_dtypes.bfloat16, without importing it
        return "bfloat16"
    return None


_TORCH_FORMATS = {"torch.float32": "float32", "torch.bfloat16": "bfloat16",
                  "torch.float16": "float16", "torch.float64": "float64"}


def is_tensor(x):
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "untyped_storage")


def tensor_view(x, fmt=None):
    """A CPU tensor (not requiring grad) as the kernels take it, sharing its memory, with
    no checks: float32/float64 as themselves, bfloat16/float16 as their ``uint16``/``int16``
    bits. ``fmt``: its format name, when the caller already has it."""
    fmt = fmt or _TORCH_FORMATS[str(x.dtype)]
    if fmt in HALF_FORMATS:
        import torch
        return x.view(torch.int16).numpy().view(KERNEL_DTYPES[fmt])   # zero copy
    return x.numpy()


def kernel_array(array):
    """A NumPy float array as the kernels take it, sharing its memory: half precision
    (``ml_dtypes.bfloat16``, ``np.float16``) as its bits, float32/float64 as itself."""
    fmt = _numpy_format(array.dtype)
    return array.view(KERNEL_DTYPES[fmt]) if fmt in HALF_FORMATS else array


def kernel_view(x, name, formats):
    """``(view, format)``: ``x`` (a NumPy array or a CPU torch tensor, 1-D) as the array the
    kernels take, sharing its memory, and its format name. Raises ``TypeError`` naming
    ``name`` when ``x`` is neither, or its dtype is not one of ``formats``."""
    if is_tensor(x):
        fmt = _TORCH_FORMATS.get(str(x.dtype))
        if fmt not in formats:
            raise TypeError(f"{name}: dtype {x.dtype} is not one of {list(formats)}")
        if x.device.type != "cpu":
            raise TypeError(f"{name}: a tensor on {x.device}; fastopt needs CPU tensors")
        if x.requires_grad:
            x = x.detach()
        return tensor_view(x, fmt), fmt
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array or a torch tensor, "
                        f"got {type(x).__name__}")
    fmt = _numpy_format(x.dtype)
    if fmt not in formats:
        raise TypeError(f"{name}: dtype {x.dtype} is not one of {list(formats)}")
    return x.view(KERNEL_DTYPES[fmt]), fmt


def bf16_bits(values):
    """Float32 ``values`` rounded to bfloat16, nearest even, as ``uint16`` bits (NumPy
    only, no ml_dtypes: the same integer rounding as the kernels' ``narrow_to``; a NaN
    stays a quiet NaN with its sign)."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    high = bits >> np.uint32(16)
    rounded = (bits + np.uint32(0x7FFF) + (high & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(np.asarray(values, np.float32))
    return np.where(nan, high | np.uint32(0x40), rounded).astype(BF16_BITS)


def bf16_values(bits):
    """The float32 values of bfloat16 ``bits`` (``uint16``), exactly (NumPy only)."""
    return (np.asarray(bits, BF16_BITS).astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode(values, fmt):
    """Float32 ``values`` rounded to ``fmt`` (nearest even), as the kernels' view: for
    tests, benchmarks, and feeding the kernels directly."""
    values = np.asarray(values, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):    # Inf and NaN are meant
        if fmt == "float32":
            return values.copy()
        if fmt == "float16":
            return values.astype(np.float16).view(FP16_BITS)
        if fmt == "bfloat16":
            return bf16_bits(values)
    raise ValueError(f"fmt: {fmt!r} is not one of {list(KERNEL_DTYPES)}")


def decode(bits, fmt):
    """The float32 values of a kernel view in format ``fmt`` (exact)."""
    if fmt == "float32":
        return np.asarray(bits, np.float32).copy()
    if fmt == "float16":
        return bits.view(np.float16).astype(np.float32)
    if fmt == "bfloat16":
        return bf16_values(bits)
    raise ValueError(f"fmt: {fmt!r} is not one of {list(KERNEL_DTYPES)}")
