"""Half-precision gradients and parameter copies inside the kernels.

The conversions (:mod:`fastopt.kernels.halves`) are checked against torch's casts, the
definition fastopt promises: widening exhaustively over all 65,536 bit patterns of each
format, narrowing over random float32 bit patterns plus the edge cases (ties, the
largest finite values, subnormals, infinities). NaN payload bits are not compared: torch's
own vector and scalar casts disagree on them (0xFFFF and 0x7FC0 for bf16); NaN must stay
NaN. Then each rule's kernel with a half gradient must equal, bitwise, the same kernel
on the widened float32 gradient, and its copy must equal torch's cast of the master.
"""

import inspect

import ml_dtypes  # noqa: F401  (the test extra installs it: no skip that hides a failure)
import numba
import numpy as np
import pytest
import torch

from fastopt import kernels
from fastopt.bench import cases as bench_cases
from fastopt.kernels.halves import narrow_to, widen
from fastopt.rules import RULES
from fastopt.precision import HALF_FORMATS, KERNEL_DTYPES, decode, encode

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@numba.njit
def widen_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = widen(bits[i])


@numba.njit
def narrow_all(values, out):
    for i in range(values.shape[0]):
        out[i] = narrow_to(out, values[i])


def torch_cast(values, fmt):
    """torch's ``.to(bfloat16 / float16)`` of float32 ``values``, as the kernels' view."""
    cast = torch.from_numpy(np.ascontiguousarray(values)).to(TORCH_DTYPES[fmt])
    return cast.view(torch.int16).numpy().view(KERNEL_DTYPES[fmt])


def assert_same_floats(got, want):
    """Bitwise equal where ``want`` is not NaN; NaN exactly where ``want`` is NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype
    if got.dtype.kind in "iu":   # half bits: compare as floats for NaN-ness
        fmt = "bfloat16" if got.dtype == KERNEL_DTYPES["bfloat16"] else "float16"
        got_f, want_f = decode(got, fmt), decode(want, fmt)
    else:
        got_f, want_f = got, want
    nan = np.isnan(want_f)
    np.testing.assert_array_equal(np.isnan(got_f), nan)
    np.testing.assert_array_equal(got[~nan], want[~nan])


def edge_float32():
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0,
                         np.finfo(np.float32).max, -np.finfo(np.float32).max,
                         np.finfo(np.float32).tiny, 1e-40, -1e-40, 1e-45, 65504.0,
                         65519.0, 65520.0, 6e-8, 3e-8, 2.9e-8], np.float32)
    # bf16 ties: the dropped half is exactly 0x8000, kept bit even or odd; and +-1 around.
    ties = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7F8000,
                     0xFF7FFFFF, 0x7F800001, 0xFFC00001, 0x00008000, 0x00018000],
                    np.uint32).view(np.float32)
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2 ** 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([specials, ties, random_bits.view(np.float32)])


@pytest.mark.parametrize("fmt", HALF_FORMATS)
def test_widen_is_exact_for_every_bit_pattern(fmt):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(KERNEL_DTYPES[fmt])
    got = np.empty(bits.size, np.float32)
    widen_all(bits, got)
    want = torch.from_numpy(bits.view(np.int16).copy()).view(TORCH_DTYPES[fmt]).float()
    assert_same_floats(got, want.numpy())


@pytest.mark.parametrize("fmt", HALF_FORMATS)
def test_narrow_rounds_as_torch_casts(fmt):
    values = edge_float32()
    got = np.empty(values.size, KERNEL_DTYPES[fmt])
    narrow_all(values, got)
    assert_same_floats(got, torch_cast(values, fmt))


def test_bf16_nan_stays_a_quiet_nan_with_its_sign():
    """A NaN whose payload sits in the low 16 bits must not round into an infinity."""
    nans = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7FC00000],
                    np.uint32).view(np.float32)
    got = np.empty(4, np.uint16)
    narrow_all(nans, got)
    assert [hex(b) for b in got] == ["0x7fc0", "0xffc0", "0x7fff", "0x7fc0"]


# --- the kernels ------------------------------------------------------------------------

SIZES = [1000, (1 << 17) + 3]     # serial twin; parallel twin (PARALLEL_THRESHOLD 2^16)


def adam_args(param, grad, copy, state, t=3, amsgrad=False, zero_grad=False):
    """The kernel's full argument tuple (AdamW, weight decay 0.1, gradient scale 0.5)."""
    group = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    scalars = RULES["adamw"].values(group, t, frozenset(), 0.5, np.dtype(np.float32))
    vmax = state["max_exp_avg_sq"] if amsgrad else kernels.unused(np.float32)
    out = copy if copy is not None else kernels.unused(np.uint16)
    return (param, grad, state["exp_avg"], state["exp_avg_sq"], vmax, out, *scalars,
            amsgrad, zero_grad, copy is not None)


def fresh_state(n, seed=1):
    rng = np.random.default_rng(seed)
    return dict(exp_avg=rng.standard_normal(n).astype(np.float32) * 0.1,
                exp_avg_sq=rng.random(n).astype(np.float32) * 0.01,
                max_exp_avg_sq=rng.random(n).astype(np.float32) * 0.02)


def run_twin(kernel, twin, args):
    variant, args = kernel.resolve(args)
    getattr(variant, twin)(*args)


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("copy_fmt", [None, *HALF_FORMATS])
@pytest.mark.parametrize("grad_fmt", ["float32", *HALF_FORMATS])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_half_gradient_equals_fp32_kernel_on_widened_gradient(grad_fmt, copy_fmt,
                                                                   twin, amsgrad):
    n = SIZES[twin == "parallel"]
    rng = np.random.default_rng(0)
    param = rng.standard_normal(n).astype(np.float32)
    grad = encode(rng.standard_normal(n) * 0.1, grad_fmt)
    grad[:3] = encode([np.inf, -np.nan, 1e30], grad_fmt)   # Inf and NaN propagate
    want_param, want_state = param.copy(), fresh_state(n)
    run_twin(kernels.adam, twin, adam_args(want_param, decode(grad, grad_fmt), None,
                                           want_state, amsgrad=amsgrad))

    copy = None if copy_fmt is None else np.zeros(n, KERNEL_DTYPES[copy_fmt])
    grad_before, state = grad.copy(), fresh_state(n)
    run_twin(kernels.adam, twin, adam_args(param, grad, copy, state, amsgrad=amsgrad))

    assert_same_floats(param, want_param)
    for key in state:
        assert_same_floats(state[key], want_state[key])
    np.testing.assert_array_equal(grad, grad_before)          # read, not written
    if copy is not None:
        assert np.isnan(decode(copy[:2], copy_fmt)).all()
        assert_same_floats(copy, torch_cast(param, copy_fmt))


@pytest.mark.parametrize("grad_fmt", HALF_FORMATS)
def test_zero_grad_clears_half_gradient_bits(grad_fmt):
    n = 1000
    rng = np.random.default_rng(2)
    param = rng.standard_normal(n).astype(np.float32)
    grad = encode(rng.standard_normal(n), grad_fmt)
    kernels.adam(*adam_args(param, grad, None, fresh_state(n), zero_grad=True))
    assert not grad.any()


def test_copy_left_untouched_without_write_copy():
    """Without the option the copy buffer is not written (an unused argument)."""
    n = 1000
    copy = np.full(n, 7, np.uint16)
    args = list(adam_args(np.ones(n, np.float32), np.ones(n, np.float32), copy,
                          fresh_state(n)))
    args[-1] = False
    kernels.adam(*args)
    assert (copy == 7).all()


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("formats", [("bfloat16", "bfloat16"), ("float16", "float16"),
                                     ("float32", "bfloat16"), ("bfloat16", None)])
@pytest.mark.parametrize("rule", bench_cases.MIXED_RULES)
def test_every_rule_reads_half_gradients_and_writes_the_copy(rule, formats, twin):
    """Each rule's mixed variant equals its float32 kernel on the widened gradient, and
    its copy equals torch's cast of the updated master, serial and parallel twin."""
    grad_fmt, copy_fmt = formats
    case, n = bench_cases.CASES[rule], SIZES[twin == "parallel"]
    grad_at = list(inspect.signature(case.kernel.body).parameters).index("grad")
    mixed = bench_cases.mixed_kernel_args(case, n, grad_fmt, copy_fmt)
    plain = list(bench_cases.mixed_kernel_args(case, n, "float32", None))
    plain[grad_at] = decode(mixed[grad_at], grad_fmt)
    run_twin(case.kernel, twin, mixed)
    run_twin(case.kernel, twin, tuple(plain))
    for got, want in zip(mixed, plain):
        if isinstance(got, np.ndarray) and got.dtype == np.float32 and got.size:
            assert_same_floats(got, want)
    assert_same_floats(decode(mixed[grad_at], grad_fmt), plain[grad_at])
    if copy_fmt is not None:
        copy = mixed[list(inspect.signature(case.kernel.body).parameters).index("param_copy")]
        assert_same_floats(copy, torch_cast(mixed[0], copy_fmt))
        assert copy.any()


@pytest.mark.parametrize("fmt", HALF_FORMATS)
def test_norm_and_finiteness_read_half_gradients_directly(fmt):
    """The clipping / skip reduction over half bits equals, bitwise, the one over the
    widened float32 gradient; an Inf or NaN element is reported as non-finite."""
    from fastopt.kernels.reductions import norm_and_finite
    rng = np.random.default_rng(5)
    halves = [encode(rng.standard_normal(n) * 3, fmt) for n in (1000, (1 << 17) + 3)]
    widened = [decode(h, fmt) for h in halves]
    assert norm_and_finite(halves) == norm_and_finite(widened)
    assert norm_and_finite(halves)[1]
    for bad in (np.inf, np.nan):
        spoiled = [h.copy() for h in halves]
        spoiled[1][77] = encode([bad], fmt)[0]
        total, finite = norm_and_finite(spoiled)
        assert not finite and not np.isfinite(total)
