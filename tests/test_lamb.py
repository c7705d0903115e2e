"""LAMB's trust ratio is per tensor: its norms follow the members of a flat buffer (not the
buffer), 1 where a norm is 0, and are bitwise the same for the serial and parallel twins,
for 1 and 2 threads, and above the parallel threshold with members spanning many blocks."""

import numba
import numpy as np
import pytest

import fastopt
from fastopt import kernels, reference
from fastopt.kernels.reductions import BLOCK
from fastopt.rules import RULES

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def run_flat(params, grads, threads=None, **options):
    """LAMB over ``fastopt.flatten(params)`` for each step's ``grads``; the params after."""
    flat = fastopt.flatten([p.copy() for p in params])
    opt = fastopt.LAMB(flat, **options)
    context = fastopt.num_threads(threads) if threads else _nothing()
    with context:
        for step_grads in grads:
            for view, grad in zip(flat.grads, step_grads):
                view[...] = grad
            opt.step()
    return [p.copy() for p in flat.params], opt.state_dict()["state"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_reference(params, grads, **options):
    params, states = [p.copy() for p in params], [{} for _ in params]
    for step_grads in grads:
        for i, grad in enumerate(step_grads):
            params[i], states[i] = reference.lamb(params[i], grad, states[i], **options)
    return params, states


def problem(sizes, dtype, steps, scales=None, seed=0):
    rng = np.random.default_rng(seed)
    scales = scales or [1.0] * len(sizes)
    params = [(rng.standard_normal(n) * s).astype(dtype) for n, s in zip(sizes, scales)]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trust_ratio_is_per_tensor(dtype):
    """Two tensors of very different scale in one flat buffer: each moves by its own
    trust ratio (the reference per tensor), not by the buffer's."""
    params, grads = problem((300, 40), dtype, steps=1, scales=[1e3, 1e-2])
    options = dict(lr=0.01, weight_decay=0.1)
    got, _ = run_flat(params, grads, **options)
    want, _ = run_reference(params, grads, **options)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    # the effective ratio |dp| / (lr |u|) differs by orders of magnitude between them
    ratios = []
    for before, after, grad in zip(params, got, grads[0]):
        update = (grad / (np.abs(grad) + 1e-6)) + 0.1 * before   # u at the first step
        ratios.append(np.median(np.abs(after - before) / (0.01 * np.abs(update))))
    assert ratios[0] > 1e3 * ratios[1]
    # and the buffer's one ratio would give something else
    whole, _ = run_reference([np.concatenate(params)], [[np.concatenate(grads[0])]],
                             **options)
    assert not np.allclose(np.concatenate(got), whole[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trust_ratio_is_one_where_a_norm_is_zero(dtype):
    """||p|| = 0: the step is ``lr * u`` (ratio 1, not 0); ||u|| = 0 (zero gradient from a
    fresh state, no decay): the parameter stays as it is, nothing NaN."""
    rng = np.random.default_rng(1)
    zero_param = np.zeros(50, dtype)
    still = rng.standard_normal(30).astype(dtype)
    grads = [[rng.standard_normal(50).astype(dtype), np.zeros(30, dtype)]]
    got, state = run_flat([zero_param, still], grads, lr=0.01)
    g = grads[0][0]
    u = (((1 - 0.9) * g) / (1 - 0.9)) / (np.sqrt(((1 - 0.999) * g * g) / (1 - 0.999))
                                         + 1e-6)
    np.testing.assert_allclose(got[0], -dtype(0.01) * u.astype(dtype), **TOL[dtype])
    assert np.abs(got[0]).max() > 0.009
    np.testing.assert_array_equal(got[1], still)
    want, _ = run_reference([zero_param, still], grads, lr=0.01)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    assert all(np.isfinite(a).all() for a in got)


SIZES = (70_001, 3, BLOCK, BLOCK + 1, 0, 1, 2 * BLOCK - 1)   # 94_210 elements


def kernel_call(sizes, dtype, seed=0):
    """The lamb kernel's arguments over one flat buffer of members ``sizes`` (step 3)."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    param = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    exp_avg = (0.1 * rng.standard_normal(n)).astype(dtype)
    exp_avg_sq = (0.1 * rng.random(n)).astype(dtype)
    rule = RULES["lamb"]
    group = {**rule.defaults, "lr": 0.01, "weight_decay": 0.05}
    values = rule.values(group, 3, frozenset(), 0.5, np.dtype(dtype))
    state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    return rule.call(param, grad, state, values, group, sizes=sizes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_twins_are_bitwise_equal(dtype):
    assert sum(SIZES) >= kernels.PARALLEL_THRESHOLD
    results = []
    for twin in ("serial", "parallel", None):
        variant, args = kernel_call(SIZES, dtype)
        (variant if twin is None else getattr(variant, twin))(*args)
        results.append([a.tobytes() for a in args if isinstance(a, np.ndarray)])
    assert results[0] == results[1] == results[2]


def test_layout_must_cover_the_buffer():
    variant, args = kernel_call((10, 20), np.float64)
    wrong = variant.over((10, 21))
    with pytest.raises(ValueError, match="add up to 31"):
        wrong(*args)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_one_and_two_threads(dtype):
    sizes = [n for n in SIZES if n]
    params, grads = problem(sizes, dtype, steps=3)
    one = run_flat(params, grads, threads=1, lr=0.01, weight_decay=0.1)
    two = run_flat(params, grads, threads=2, lr=0.01, weight_decay=0.1)
    for a, b in zip(one[0], two[0]):
        assert a.tobytes() == b.tobytes()
    for i, entry in one[1].items():
        for name, value in entry.items():
            if isinstance(value, np.ndarray):
                assert value.tobytes() == two[1][i][name].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_buffer_of_several_members_matches_reference_per_tensor(dtype):
    """Above PARALLEL_THRESHOLD, members spanning several blocks (and a block
    boundary at a member's end) each take their own ratio; the flat buffer and the
    same values as separate arrays give the same bits."""
    sizes = [n for n in SIZES if n]
    params, grads = problem(sizes, dtype, steps=3, scales=[1, 10, 0.1, 1, 5, 0.01])
    options = dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)
    got, _ = run_flat(params, grads, **options)
    want, _ = run_reference(params, grads, **options)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=f"member {i}")
    separate = [p.copy() for p in params]
    opt = fastopt.LAMB(separate, **options)
    for step_grads in grads:
        opt.step(step_grads)
    for a, b in zip(got, separate):
        assert a.tobytes() == b.tobytes()


def test_torch_front_end_takes_norms_per_parameter():
    """``fastopt.torch.LAMB``: one bucket, its params' own ratios (the reference per
    tensor), whether the step runs over the flat gradient (one run) or per param."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as fastopt_torch

    params, grads = problem((300, 40, 7), np.float64, steps=2, scales=[1e3, 1e-2, 1])
    want, _ = run_reference(params, grads, lr=0.01, weight_decay=0.1)
    tensors = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
    opt = fastopt_torch.LAMB(tensors, lr=0.01, weight_decay=0.1)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            if tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
            tensor.grad.copy_(torch.from_numpy(grad))
        opt.step()
    for tensor, b in zip(tensors, want):
        np.testing.assert_allclose(tensor.detach().numpy(), b, **TOL[np.float64])


def test_both_passes_vectorize_on_x86():
    """The float32 passes use packed SIMD (``vsqrtps``/``vdivps`` on ymm/zmm, and the
    first pass's float64 squares packed ``vcvtps2pd``), serial and parallel twins: each
    block's loops index slices from 0 (an index from ``block_span`` kept LLVM scalar)."""
    import platform
    import re

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-only: checks AVX2/AVX-512 instructions")
    from llvmlite import binding
    if not binding.get_host_cpu_features().get("avx2"):
        pytest.skip("host CPU has no AVX2")
    from fastopt.kernels.segmented import layout

    variant, args = kernel_call((64,), np.float32)
    where = layout((64,))
    scratch = (where.offsets, where.block_offsets, np.empty(1), np.empty(1))
    first = (*args, *scratch)
    second = (args[0], args[2], args[3], args[4], *args[9:14], *scratch)
    packed = r"[^\n]*%[yz]mm"
    for twin in ("serial", "parallel"):
        for stage, stage_args, needed in ((variant.first, first, ("vsqrtps", "vdivps",
                                                                    "vcvtps2pd")),
                                          (variant.second, second, ("vsqrtps", "vdivps"))):
            dispatcher = getattr(stage, twin)
            options = {k: v for k, v in dispatcher.targetoptions.items()
                       if k not in ("cache", "nopython")}
            fresh = numba.njit(**options)(dispatcher.py_func)
            fresh(*(a.copy() if isinstance(a, np.ndarray) else a for a in stage_args))
            (signature,) = fresh.signatures
            asm = fresh.inspect_asm(signature)
            for instruction in needed:
                assert re.search(rf"\b{instruction}\b{packed}", asm), (twin, instruction)
