"""Fixtures shared by several test files."""

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
