"""Bitwise determinism of the parallel twins: the same inputs give the same bits across
runs and across thread counts 1 and 2, for every rule and option (tests/cases.py), both
dtypes, with buffers large enough for the parallel twin (2e5+3 elements: an odd length,
so the vector loop has a remainder). Also the blocked norm reduction and
``clip_grad_norm=`` steps, whose norm is the one reduction that could depend on threads."""

import numba
import numpy as np
import pytest

import fastopt
from cases import CASES, RULES, case_id
from fastopt.kernels import PARALLEL_THRESHOLD
from fastopt.kernels.reductions import BLOCK, block_table, norm_and_finite, sum_squares

N = 200_003
STEPS = 4

if numba.config.NUMBA_NUM_THREADS < 2:
    pytest.skip("needs 2 Numba threads (NUMBA_NUM_THREADS >= 2) to compare 1 with 2",
                allow_module_level=True)


def problem(dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    sizes = (N, 1000, 7)      # three arrays, one flat buffer: the parallel twin
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[(rng.standard_normal(n) * scale).astype(dtype) for n in sizes]
             for _ in range(STEPS)]
    return params, grads


def train(case, dtype, threads, **loop_options):
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = problem(dtype, scale=10.0 if loop_options else 1.0)
    flat = fastopt.flatten(params)
    opt = cls(flat, lr=lr, **options, **loop_options)
    norms = []
    with fastopt.num_threads(threads):
        for step_grads in grads:
            for view, grad in zip(flat.grads, step_grads):
                view[...] = grad
            opt.step()
            norms.append(opt.last_grad_norm)
    state = opt.state_dict()["state"]
    return flat.params, state, norms


def assert_same(a, b):
    params_a, state_a, norms_a = a
    params_b, state_b, norms_b = b
    for x, y in zip(params_a, params_b):
        assert x.tobytes() == y.tobytes()
    assert norms_a == norms_b
    for i in state_a:
        for name, value in state_a[i].items():
            if isinstance(value, np.ndarray):
                assert value.tobytes() == state_b[i][name].tobytes(), name
            else:   # the step, or a rule's scalar state (NAdam's mu_product)
                assert value == state_b[i][name], name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_kernel_is_bitwise_deterministic_across_runs_and_thread_counts(case, dtype):
    assert N >= PARALLEL_THRESHOLD
    first = train(case, dtype, threads=2)
    assert_same(first, train(case, dtype, threads=2))
    assert_same(first, train(case, dtype, threads=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", list(RULES))
def test_clipped_steps_are_bitwise_deterministic(rule, dtype):
    case = (rule, {})
    first = train(case, dtype, threads=2, clip_grad_norm=1.0, skip_if_nonfinite=True)
    assert all(norm > 1.0 for norm in first[2])       # the clip is active every step
    assert_same(first, train(case, dtype, threads=1, clip_grad_norm=1.0,
                             skip_if_nonfinite=True))
    assert_same(first, train(case, dtype, threads=2, clip_grad_norm=1.0,
                             skip_if_nonfinite=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_and_finite_is_bitwise_deterministic(dtype):
    rng = np.random.default_rng(3)
    buffers = [(rng.standard_normal(n) * 1e3).astype(dtype)
               for n in (N, BLOCK - 1, BLOCK, BLOCK + 1, 1, 0)]
    results = []
    for threads in (2, 1, 2):
        with fastopt.num_threads(threads):
            results.append(norm_and_finite(buffers))
    assert results[0] == results[1] == results[2]
    assert results[0][1] is True
    # the parallel and serial twins write the same partials and member sums, bit for bit
    flat = np.concatenate(buffers)
    offsets, block_offsets = block_table(tuple(b.size for b in buffers))
    outputs = [(np.empty(block_offsets[-1]), np.empty(len(buffers))) for _ in range(2)]
    sum_squares.parallel(flat, offsets, block_offsets, *outputs[0])
    sum_squares.serial(flat, offsets, block_offsets, *outputs[1])
    assert [a.tobytes() for a in outputs[0]] == [a.tobytes() for a in outputs[1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standalone_clip_grad_norm_is_bitwise_deterministic(dtype):
    rng = np.random.default_rng(4)
    source = [(rng.standard_normal(n) * 10).astype(dtype) for n in (N, 33)]
    outputs = []
    for threads in (2, 1):
        grads = [g.copy() for g in source]
        with fastopt.num_threads(threads):
            norm = fastopt.clip_grad_norm(grads, 1.0)
        outputs.append((norm, [g.tobytes() for g in grads]))
    assert outputs[0] == outputs[1]
