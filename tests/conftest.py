"""Fixtures shared by several test files."""

import pytest

import fastopt


@pytest.fixture
def adam_kernel_sizes(monkeypatch):
    """The parameter size of every kernel call ``fastopt.optim.Adam``'s rule makes (the
    NumPy and the torch front end both call ``rule.kernel``), in order."""
    sizes = []
    original = fastopt.optim.Adam.kernel

    def counting_kernel(param, *args):
        sizes.append(param.size)
        return original(param, *args)

    monkeypatch.setattr(fastopt.optim.Adam, "kernel", staticmethod(counting_kernel))
    return sizes
