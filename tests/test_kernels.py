"""The kernels as public API: called from user @njit code, serial and parallel twins,
fused gradient scale and zeroing, and the cache fallback."""

import warnings

import numba
import numpy as np
import pytest

import fastopt
from fastopt import kernels, reference
from fastopt.kernels import config

N = 100_003  # odd, above the parallel threshold, not a multiple of any SIMD width


def adam_args(dtype, n=N, seed=0, amsgrad=True):
    rng = np.random.default_rng(seed)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m = rng.standard_normal(n).astype(dtype)
    v, vmax = rng.random(n).astype(dtype), rng.random(n).astype(dtype) + 0.5
    return [p, g, m, v, vmax]


def adam_scalars(dtype, t=3, lr=0.01, b1=0.9, b2=0.999, grad_factor=1.0):
    dt = np.dtype(dtype).type
    return [dt(lr / (1 - b1 ** t)), dt(b1), dt(1 - b1), dt(b2), dt(1 - b2),
            dt(1 / np.sqrt(1 - b2 ** t)), dt(1e-8), dt(0.0), dt(1.0), dt(grad_factor)]


amsgrad_serial = kernels.adam.variant(amsgrad=True).serial
amsgrad_parallel = kernels.adam.variant(amsgrad=True).parallel


@numba.njit
def users_training_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars,
                        no_copy):
    """A library's own jitted code calling fastopt's kernels directly."""
    for _ in range(2):
        amsgrad_serial(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, no_copy,
                       scalars[0], scalars[1], scalars[2], scalars[3], scalars[4],
                       scalars[5], scalars[6], scalars[7], scalars[8], scalars[9])
        amsgrad_parallel(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, no_copy,
                         scalars[0], scalars[1], scalars[2], scalars[3], scalars[4],
                         scalars[5], scalars[6], scalars[7], scalars[8], scalars[9])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_callable_from_user_njit_code(dtype):
    arrays = adam_args(dtype, n=1000)
    scalars = np.array(adam_scalars(dtype), dtype=dtype)
    expected = [a.copy() for a in arrays]
    for _ in range(4):
        kernels.adam(*expected, kernels.unused(np.uint16), *scalars, True, False, False)
    users_training_step(*arrays, scalars, kernels.unused(np.uint16))
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", ["sgd", "adagrad", "rmsprop", "adam"])
def test_serial_and_parallel_twins_agree_bitwise(rule, dtype):
    rng = np.random.default_rng(1)
    dt = np.dtype(dtype).type
    base = [rng.standard_normal(N).astype(dtype) for _ in range(5)]
    base[3] = np.abs(base[3])  # square averages are non-negative
    no_copy = kernels.unused(np.uint16)
    calls = {
        "sgd": lambda a: (a[0], a[1], a[2], no_copy, dt(0.1), dt(0.01), dt(1.0), dt(0.9),
                          dt(0.9), dt(1.0), True, True, False, False),
        "adagrad": lambda a: (a[0], a[1], np.abs(a[2]), no_copy, dt(0.1), dt(1e-10),
                              dt(0.01), dt(1.0), False, False),
        "rmsprop": lambda a: (a[0], a[1], a[3], a[2] * 0.01, a[4], no_copy, dt(0.01),
                              dt(0.99), dt(0.01), dt(1e-8), dt(0.0), dt(1.0), dt(0.9),
                              True, True, True, False, False, False),
        "adam": lambda a: (a[0], a[1], a[2], a[3], a[4], kernels.unused(np.uint16),
                           *adam_scalars(dtype), True, False, False),
    }
    kernel = getattr(kernels, rule)
    variant, serial_args = kernel.resolve(calls[rule]([b.copy() for b in base]))
    _, parallel_args = kernel.resolve(calls[rule]([b.copy() for b in base]))
    variant.serial(*serial_args)
    variant.parallel(*parallel_args)
    for s, p in zip(serial_args, parallel_args):
        if isinstance(s, np.ndarray):
            np.testing.assert_array_equal(s, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_factor_and_zero_grad_are_fused(dtype):
    """grad_factor multiplies the gradient first; zero_grad zeroes it after reading; the
    update equals the reference's with the same scale."""
    p, g, m, v, _ = adam_args(dtype, n=1001)
    m[:], v[:] = 0, 0
    want, _ = reference.adam(p, g, {}, lr=0.01, grad_factor=0.25)
    kernels.adam(p, g, m, v, kernels.unused(dtype), kernels.unused(np.uint16),
                 *adam_scalars(dtype, t=1, grad_factor=0.25), False, True, False)
    np.testing.assert_allclose(p, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert not g.any()


def test_kernel_picks_twin_by_size(monkeypatch):
    calls = []
    variant = kernels.sgd.variant(use_momentum=True)
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 100)
    monkeypatch.setattr(variant, "serial", lambda *a: calls.append(("serial", a[1:])))
    monkeypatch.setattr(variant, "parallel", lambda *a: calls.append(("parallel", a[1:])))
    kernels.sgd(np.ones(99), "rest", True, False, False, False)
    kernels.sgd(np.ones(100), "rest", True, False, False, False)
    assert calls == [("serial", ("rest",)), ("parallel", ("rest",))]


def test_variants_bind_options_at_compile_time():
    """Each option combination is its own compiled function with the option as a
    constant: no branch on it in the loop, no access to a buffer it leaves unused."""
    plain, amsgrad = kernels.adam.variant(), kernels.adam.variant(amsgrad=True)
    assert plain is kernels.adam.variant(amsgrad=False, zero_grad=False)
    assert plain is not amsgrad
    assert amsgrad.parallel.py_func.__globals__["amsgrad"] is True
    assert plain.parallel.py_func.__globals__["amsgrad"] is False
    assert plain.serial.py_func.__qualname__ != amsgrad.serial.py_func.__qualname__
    with pytest.raises(TypeError, match="no option"):
        kernels.adam.variant(nesterov=True)
    with pytest.raises(TypeError, match="options"):
        kernels.adam.parallel


def test_no_writable_cache_falls_back_with_a_warning(monkeypatch):
    real_njit = numba.njit

    def njit_without_cache(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function 'body': no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(config.numba, "njit", njit_without_cache)
    monkeypatch.setattr(config, "_cache_ok", None)

    def body(x):
        for i in numba.prange(x.shape[0]):
            x[i] += 1

    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        kernel = config.Kernel(body)
        kernel.variant()   # variants compile lazily: the first one meets the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.Kernel(body).variant()  # warned once per process, not per kernel
    x = np.zeros(5)
    kernel(x)
    np.testing.assert_array_equal(x, 1)


def test_kernels_are_documented():
    for name in ("sgd", "adagrad", "rmsprop", "adam"):
        kernel = getattr(kernels, name)
        assert "Arguments" in kernel.__doc__ and "for each element" in kernel.__doc__.lower()


def test_flatten_views_share_one_buffer_per_dtype():
    arrays = [np.ones((2, 3)), np.full(4, 2.0, np.float32), np.arange(3.0),
              np.zeros((), np.float32)]
    flat = fastopt.flatten(arrays)
    assert len(flat.buffers) == 2
    assert [p.shape for p in flat.params] == [a.shape for a in arrays]
    assert [p.dtype for p in flat.params] == [a.dtype for a in arrays]
    for view, array in zip(flat.params, arrays):
        np.testing.assert_array_equal(view, array)
    flat.buffers[0].param[:] = 7.0
    assert flat.params[0][1, 2] == 7.0 and flat.params[2][0] == 7.0
    assert np.shares_memory(flat.grads[1], flat.buffers[1].grad)
    arrays[0][0, 0] = -1.0
    assert flat.params[0][0, 0] == 7.0  # flatten copied; the originals are not used


def test_optimizer_over_flat_views_list_uses_one_segment():
    """The list flat.params (not the Flat itself) is recognised as one buffer: no copy,
    one kernel call."""
    flat = fastopt.flatten([np.ones(3), np.ones((2, 2)), np.ones(5)])
    opt = fastopt.SGD(flat.params, lr=0.5)
    assert len(opt._segments[0]) == 1
    opt.step([np.ones(3), np.ones((2, 2)), np.ones(5)])
    np.testing.assert_array_equal(flat.buffers[0].param, 0.5)


@pytest.mark.parametrize("name", ["adam", "sgd", "lamb"])
def test_a_step_runs_the_serial_twin_directly_with_the_same_result(name, monkeypatch):
    """Below the parallel threshold a NumPy-front-end step calls the serial twin's
    compiled entry point (no type dispatch) once its arguments are bound: the same
    results as the dispatcher's call, step by step; a per-tensor rule (LAMB) keeps its
    own call."""
    rng = np.random.default_rng(5)
    shapes = [(30, 20), (20,), (7,)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]
    cls = getattr(fastopt, {"adam": "Adam", "sgd": "SGD", "lamb": "LAMB"}[name])
    options = {"momentum": 0.9} if name == "sgd" else {}

    def train(direct):
        used = []
        with monkeypatch.context() as patch:
            original = config.Variant.serial_entry

            def entry(self, args):
                found = original(self, args) if direct else None
                if found is None:
                    return None

                def run(*call_args):
                    used.append(1)
                    return found(*call_args)
                return run

            patch.setattr(config.Variant, "serial_entry", entry)
            params = [p.copy() for p in start]
            buffers = [np.empty(s) for s in shapes]   # written in place, as a loop does
            opt = cls(params, lr=1e-2, **options)
            for step_grads in grads:
                for buffer, grad in zip(buffers, step_grads):
                    buffer[...] = grad
                opt.step(buffers)
        return params, opt.state_dict(), len(used)

    want, want_state, _ = train(False)
    got, got_state, used = train(True)
    assert (used > 0) == (name != "lamb"), used
    for p, q in zip(got, want):
        np.testing.assert_array_equal(p, q)
    for key, entry in want_state["state"].items():
        for k, v in entry.items():
            np.testing.assert_array_equal(got_state["state"][key][k], v)
