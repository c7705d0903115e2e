"""Adafactor beyond the matrix: factored state by dimension with torch's shapes, the
memory it saves, bitwise determinism (twins, thread counts, flat vs separate arrays) on
members above the parallel threshold, and the state-shape checks of every loader."""

import math

import numba
import numpy as np
import pytest
import torch

import fastopt
import fastopt.torch as ft
from fastopt import kernels, reference
from fastopt.kernels.adafactor import CHUNK
from fastopt.kernels.reductions import BLOCK
from fastopt.rules import RULES

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
RULE = RULES["adafactor"]

#: Factored (2+ dims) and unfactored (0-d, 1-d) params, one of each kind of edge.
SHAPES = [(4, 6), (6,), (), (2, 3, 5), (1, 7), (5, 1), (2, 1, 3, 4)]


def torch_state_shapes(shapes, dtype=torch.float64):
    params = [torch.nn.Parameter(torch.ones(s, dtype=dtype)) for s in shapes]
    opt = torch.optim.Adafactor(params, foreach=False)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return [{k: tuple(v.shape) for k, v in opt.state[p].items() if k != "step"}
            for p in params]


def test_state_shapes_are_torchs_for_every_dimension():
    want = torch_state_shapes(SHAPES)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    opt = fastopt.Adafactor(fastopt.flatten(params))
    opt.step([rng.standard_normal(s) for s in SHAPES])
    got = [{k: v.shape for k, v in entry.items() if k != "step"}
           for _, entry in sorted(opt.state_dict()["state"].items())]
    assert got == want
    for shape, entry in zip(SHAPES, want):
        assert set(entry) == ({"row_var", "col_var"} if len(shape) >= 2 else {"variance"})
        for name, state_shape in entry.items():
            assert RULE.state_shape(name, RULE.defaults, shape) == state_shape
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    topt = ft.Adafactor(tparams)
    for p in tparams:
        p.grad = torch.ones_like(p)
    topt.step()
    assert [{k: tuple(v.shape) for k, v in topt.state[p].items() if k != "step"}
            for p in tparams] == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_dimension_matches_torch_step_by_step(dtype):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    mine = fastopt.flatten([p.copy() for p in params])
    opt = fastopt.Adafactor(mine, lr=0.02, weight_decay=0.1)
    theirs = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    topt = torch.optim.Adafactor(theirs, lr=0.02, weight_decay=0.1, foreach=False)
    for step in range(15):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        opt.step(grads)
        for p, g in zip(theirs, grads):
            p.grad = torch.tensor(g)
        topt.step()
        for i, (a, b) in enumerate(zip(mine.params, theirs)):
            np.testing.assert_allclose(a, b.detach().numpy(), **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")


@pytest.mark.parametrize("n, m", [(300, 200), (1, 50), (50, 1)])
def test_state_of_a_matrix_is_rows_plus_columns(n, m):
    param = np.zeros((n, m), np.float32)
    opt = fastopt.Adafactor([param])
    opt.step([np.ones((n, m), np.float32)])
    (seg,), = opt._segments
    assert {k: v.size for k, v in seg.state.items()} == {
        "row_var": n, "col_var": m, "variance": 0}
    tparam = torch.nn.Parameter(torch.zeros(n, m))
    topt = ft.Adafactor([tparam])
    tparam.grad = torch.ones(n, m)
    topt.step()
    (bucket,), = topt._buckets
    assert {k: v.numel() for k, v in bucket.state.items()} == {
        "row_var": n, "col_var": m, "variance": 0}


def test_eps1_none_is_the_dtypes_machine_epsilon():
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        start = [np.array(rng.standard_normal(s) * 1e-9, dtype) for s in SHAPES]
        grads = [[np.array(rng.standard_normal(s) * 1e-9, dtype) for s in SHAPES]
                 for _ in range(3)]
        results = []
        for eps in ((None, 1e-3), (float(np.finfo(dtype).eps), 1e-3)):
            params = [p.copy() for p in start]
            opt = fastopt.Adafactor(params, eps=eps)
            for step_grads in grads:
                opt.step(step_grads)
            results.append([p.tobytes() for p in params])
        assert results[0] == results[1]


#: Members above the parallel threshold: a matrix of many column tasks, a 3-D tensor,
#: a vector of several blocks, a wide single row and small ones.
BIG = [(300, 2 * CHUNK + 7), (3, 40, 300), (2 * BLOCK + 5,), (2, 3 * CHUNK + 1), (7,), ()]


def kernel_call(shapes, dtype, seed=0):
    """The adafactor kernel's call over one flat buffer of members ``shapes`` (step 3)."""
    rng = np.random.default_rng(seed)
    sizes = tuple(math.prod(s) for s in shapes)
    n = sum(sizes)
    param = rng.standard_normal(n).astype(dtype)
    grad = rng.standard_normal(n).astype(dtype)
    group = {**RULE.defaults, "lr": 0.01, "weight_decay": 0.05}
    state = {}
    for name in RULE.state_names(group):
        _, offsets = RULE.state_layout(name, group, shapes)
        state[name] = (0.1 * rng.random(offsets[-1])).astype(dtype)
    values = RULE.values(group, 3, frozenset(), 0.5, np.dtype(dtype))
    return RULE.call(param, grad, state, values, group, sizes=sizes, shapes=tuple(shapes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_twins_are_bitwise_equal(dtype):
    assert sum(math.prod(s) for s in BIG) >= kernels.PARALLEL_THRESHOLD
    results = []
    for twin in ("serial", "parallel", None):
        variant, args = kernel_call(BIG, dtype)
        (variant if twin is None else getattr(variant, twin))(*args)
        results.append([a.tobytes() for a in args if isinstance(a, np.ndarray)])
    assert results[0] == results[1] == results[2]


def test_layout_must_cover_the_buffers():
    variant, args = kernel_call([(3, 4), (5,)], np.float64)
    with pytest.raises(ValueError, match="add up to 18"):
        variant.over(((3, 4), (6,)))(*args)
    with pytest.raises(ValueError, match="row_var has 3 elements"):
        variant.over(((4, 3), (5,)))(*args)


def run_flat(shapes, dtype, steps, threads=None, flat=True, seed=3, **options):
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    params = fastopt.flatten(start).params if flat else [p.copy() for p in start]
    opt = fastopt.Adafactor(params, **options)
    if threads:
        with fastopt.num_threads(threads):
            for g in grads:
                opt.step(g)
    else:
        for g in grads:
            opt.step(g)
    return start, grads, params, opt.state_dict()["state"]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_one_and_two_threads_and_as_separate_arrays(dtype):
    options = dict(lr=0.02, weight_decay=0.1, d=1.5)
    *_, one, state_one = run_flat(BIG, dtype, 3, threads=1, **options)
    start, grads, two, state_two = run_flat(BIG, dtype, 3, threads=2, **options)
    *_, apart, state_apart = run_flat(BIG, dtype, 3, flat=False, **options)
    for a, b, c in zip(one, two, apart):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    for i in state_one:
        for name in state_one[i]:
            assert np.asarray(state_one[i][name]).tobytes() == \
                np.asarray(state_two[i][name]).tobytes() == \
                np.asarray(state_apart[i][name]).tobytes()
    want = [p.copy() for p in start]
    states = [{} for _ in start]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            want[i], states[i] = reference.adafactor(want[i], g, states[i], **options)
    for a, b in zip(two, want):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_load_state_dict_checks_the_state_shapes():
    rng = np.random.default_rng(4)
    shapes = [(3, 4), (5,)]
    params = [rng.standard_normal(s) for s in shapes]
    opt = fastopt.Adafactor([p.copy() for p in params])
    opt.step([rng.standard_normal(s) for s in shapes])
    saved = opt.state_dict()
    other = fastopt.Adafactor([p.copy() for p in params])
    other.load_state_dict(saved)
    for i, entry in saved["state"].items():
        for k, v in entry.items():
            np.testing.assert_array_equal(other.state_dict()["state"][i][k], v)
    wrong = opt.state_dict()
    wrong["state"][0]["row_var"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"'row_var' state of params\[0\].*\(3, 1\)"):
        other.load_state_dict(wrong)
    extra = opt.state_dict()
    extra["state"][0]["variance"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match="has no 'variance' state"):
        other.load_state_dict(extra)
    missing = opt.state_dict()
    del missing["state"][1]["variance"]
    with pytest.raises(ValueError, match="lacks 'variance'"):
        other.load_state_dict(missing)
    # torch.optim.Adafactor's state dict loads (its shapes are the same)
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    topt = torch.optim.Adafactor(tparams, foreach=False)
    for p in tparams:
        p.grad = torch.ones_like(p)
    topt.step()
    fastopt.Adafactor([p.copy() for p in params]).load_state_dict(topt.state_dict())


def test_torch_load_state_dict_checks_the_state_shapes():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = ft.Adafactor(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    wrong = opt.state_dict()
    wrong["state"][0]["col_var"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"'col_var' state of params\[0\].*\(1, 4\)"):
        opt.load_state_dict(wrong)
    extra = opt.state_dict()
    extra["state"][1]["row_var"] = torch.zeros(5, 1)
    with pytest.raises(ValueError, match="has no 'row_var' state"):
        opt.load_state_dict(extra)


def test_checkpoint_round_trip_and_shape_check(tmp_path):
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fastopt.Adafactor([p.copy() for p in params])
    opt.step([rng.standard_normal(s).astype(np.float32) for s in shapes])
    path = tmp_path / "ckpt.safetensors"
    fastopt.save(opt, path)
    other = fastopt.Adafactor([p.copy() for p in params])
    fastopt.load(other, path)
    for i, entry in opt.state_dict()["state"].items():
        for k, v in entry.items():
            np.testing.assert_array_equal(other.state_dict()["state"][i][k], v)


def test_all_passes_vectorize_on_x86():
    """The float32 passes use packed SIMD on ymm/zmm, serial and parallel twins: the
    apply and norms passes ``vsqrtps``/``vdivps`` (one packed loop per branch: factored
    rows and unfactored chunks), the first pass's and the column pass's float64 squares
    packed ``vcvtps2pd``. Every loop indexes slices from 0 (global indices into the
    whole buffer kept LLVM scalar) and sums in float64 lanes."""
    import platform
    import re

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-only: checks AVX2/AVX-512 instructions")
    from llvmlite import binding
    if not binding.get_host_cpu_features().get("avx2"):
        pytest.skip("host CPU has no AVX2")

    shapes = ((40, 33), (300,))
    variant, args = kernel_call(shapes, np.float32)
    where = variant.layout
    layout = (where.members, where.work_starts, where.col_starts, where.unit_starts,
              np.zeros(where.rows), np.zeros(where.rows), np.ones(where.leads))
    stages = (
        (variant.first, args, {"vcvtps2pd": 2}),
        (variant.columns, (*args[:4], *args[6:8], args[13]), {"vcvtps2pd": 1}),
        (variant.norms, (*args[:5], args[8], args[13]), {"vsqrtps": 2, "vdivps": 2}),
        (variant.last, (*args[:6], *args[8:14]), {"vsqrtps": 2, "vdivps": 2}),
    )
    for twin in ("serial", "parallel"):
        for stage, stage_args, needed in stages:
            dispatcher = getattr(stage, twin)
            options = {k: v for k, v in dispatcher.targetoptions.items()
                       if k not in ("cache", "nopython")}
            fresh = numba.njit(**options)(dispatcher.py_func)
            fresh(*(a.copy() if isinstance(a, np.ndarray) else a
                    for a in (*stage_args, *layout)))
            (signature,) = fresh.signatures
            asm = fresh.inspect_asm(signature)
            for instruction, least in needed.items():
                found = len(re.findall(rf"\b{instruction}\b[^\n]*%[yz]mm", asm))
                assert found >= least, (twin, dispatcher.py_func.__name__, instruction)
