"""Fixtures shared by several test files."""

import numpy as np
import pytest

import fastopt
from fastopt.kernels.config import Variant


@pytest.fixture
def adam_kernel_sizes(monkeypatch):
    """The parameter size of every call of the Adam kernel (which the NumPy and the torch
    front end both make through a :class:`~fastopt.kernels.config.Variant`), in order."""
    sizes = []
    original = Variant.__call__

    def counting_call(variant, param, *args):
        if variant in fastopt.kernels.adam._variants.values():
            sizes.append(param.size)
        return original(variant, param, *args)

    monkeypatch.setattr(Variant, "__call__", counting_call)
    return sizes


@pytest.fixture
def torch_default_dtype():
    """Set torch's default dtype for one test (a torch dtype, or NumPy's float32/float64),
    restored after. torch keeps NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` in it
    (float32 unless changed); fastopt derives them in float64, as torch does with a
    float64 default, which the float64 comparisons with torch use."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    by_numpy = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

    def set_to(dtype):
        torch.set_default_dtype(dtype if isinstance(dtype, torch.dtype)
                                else by_numpy[np.dtype(dtype)])

    yield set_to
    torch.set_default_dtype(previous)
