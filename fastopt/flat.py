"""Flat buffers: one contiguous parameter buffer and one gradient buffer per dtype.

``flatten(arrays)`` copies the arrays into the buffers once and hands back views with the
original shapes. Keep the views as your model's parameters and write gradients into the
matching gradient views (``np.matmul(x.T, delta, out=flat.grads[i])``): an optimizer given
the ``Flat`` then updates a whole model with one kernel call per dtype.
"""

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_numpy(value):
    """A NumPy view of a NumPy array or a CPU torch tensor (without importing torch); a
    bfloat16 tensor, which NumPy cannot hold, widened to float32 (exact, a copy)."""
    if not hasattr(value, "detach"):
        return value
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
        value = value.float()
    return value.numpy()


def is_half(dtype):
    """Whether ``dtype`` is a half-precision float: ``np.float16`` or ``ml_dtypes.bfloat16``
    (recognised by name, without importing ml_dtypes). Cached per dtype: NumPy computes
    ``dtype.name`` in Python (a constructor over 1e5 arrays asks 1e5 times)."""
    found = _HALF.get(dtype)
    if found is None:
        found = _HALF[dtype] = bool(dtype == np.float16 or dtype.name == "bfloat16")
    return found


_HALF = {}


def check_float_array(array, name, half=True):
    """Raise ``TypeError`` unless ``array`` is a NumPy float32/float64 array, or (with
    ``half``) a bfloat16 (``ml_dtypes``) or float16 one."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if isinstance(array, np.ma.MaskedArray):   # its mask cannot be honoured by a kernel
        raise TypeError(f"{name} is a masked array; pass its .filled(0) or .data")
    if array.dtype not in SUPPORTED_DTYPES and not (half and is_half(array.dtype)):
        kinds = "float32, float64, bfloat16 or float16" if half else "float32 or float64"
        raise TypeError(f"{name} must have dtype {kinds}, got {array.dtype}")


def offsets(sizes):
    """Start offsets of consecutive pieces of ``sizes`` elements, and the total at the end."""
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()


class FlatBuffer:
    """One dtype's flat ``param`` and ``grad`` buffers, and the offsets of each array."""

    def __init__(self, dtype, shapes):
        self.offsets = offsets([int(np.prod(shape, dtype=np.int64)) for shape in shapes])
        self.param = np.zeros(self.offsets[-1], dtype=dtype)
        self.grad = np.zeros(self.offsets[-1], dtype=dtype)
        self.shapes = [tuple(shape) for shape in shapes]

    def views(self, buffer):
        """Shaped views of ``buffer``, one per array, in order."""
        return [buffer[a:b].reshape(shape)
                for a, b, shape in zip(self.offsets, self.offsets[1:], self.shapes)]


class Flat:
    """The result of :func:`flatten`.

    * ``params``: list of views with the original shapes, in the order given, into the
      flat parameter buffer of their dtype.
    * ``grads``: matching views into the flat gradient buffer (zero-initialized).
    * ``buffers``: one :class:`FlatBuffer` per dtype, in order of first appearance.
    * ``index``: for each array, ``(buffer number, position within that buffer)``.
    """

    def __init__(self, arrays):
        arrays = list(arrays)
        for i, array in enumerate(arrays):
            check_float_array(array, f"arrays[{i}]")
        dtypes = list(dict.fromkeys(a.dtype for a in arrays))
        self.buffers, self.index = [], [None] * len(arrays)
        self.params, self.grads = [None] * len(arrays), [None] * len(arrays)
        for b, dtype in enumerate(dtypes):
            members = [i for i, a in enumerate(arrays) if a.dtype == dtype]
            buffer = FlatBuffer(dtype, [arrays[i].shape for i in members])
            for j, (i, pview, gview) in enumerate(
                    zip(members, buffer.views(buffer.param), buffer.views(buffer.grad))):
                pview[...] = arrays[i]
                self.params[i], self.grads[i], self.index[i] = pview, gview, (b, j)
            self.buffers.append(buffer)

    def __len__(self):
        return len(self.params)

    def grad_view_of(self, param_view):
        """The 1-D slice of the gradient buffer matching a 1-D slice of a param buffer."""
        if param_view.size == 0:  # holds no memory to match: an empty slice of its dtype
            for buffer in self.buffers:
                if buffer.grad.dtype == param_view.dtype:
                    return buffer.grad[:0]
        for buffer in self.buffers:
            if np.shares_memory(param_view, buffer.param):
                start, skew = divmod(param_view.__array_interface__["data"][0]
                                     - buffer.param.__array_interface__["data"][0],
                                     buffer.param.itemsize)
                if skew or param_view.dtype != buffer.param.dtype:
                    raise ValueError("param view is not an element-aligned slice of "
                                     "this Flat's buffer")
                return buffer.grad[start:start + param_view.size]
        raise ValueError("param view is not in this Flat's buffers")

    def zero_grad(self):
        """Set every gradient buffer to zero, in place."""
        for buffer in self.buffers:
            buffer.grad.fill(0)

    def __repr__(self):
        sizes = ", ".join(f"{b.param.dtype}: {b.param.size}" for b in self.buffers)
        return f"Flat({len(self)} arrays; {sizes})"


def flatten(arrays):
    """Copy ``arrays`` (float32/float64 NumPy arrays, or half precision:
    ``ml_dtypes.bfloat16``, ``np.float16``) into one contiguous parameter buffer and one
    gradient buffer per dtype; return a :class:`Flat` with shaped views. The optimizers
    train half-precision params over a float32 master of their own.

    The arrays you passed are not changed or used afterwards: use ``flat.params``.
    """
    return Flat(arrays)
