"""Training-loop features folded into the single pass: global-norm clipping, loss-scale
unscaling, non-finite skip, fused zero-grad, schedules as lr."""

import numba
import numpy as np
import pytest

import fastopt
from cases import CASES, RULES, case_id
from fastopt.kernels.reductions import BLOCK, norm_and_finite

SHAPES = [(30, 20), (20,), (20, 5), (5,)]


def problem(dtype, steps=15, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * scale).astype(dtype) for s in SHAPES]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])   # clipping active / inactive
def test_clipping_equals_torch_clip_grad_norm_then_step(dtype, max_norm):
    torch = pytest.importorskip("torch")
    params, grads = problem(dtype)
    ours = [p.copy() for p in params]
    opt = fastopt.Adam([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.05}], lr=0.01,
                       clip_grad_norm=max_norm)
    theirs = [torch.tensor(p, requires_grad=True) for p in params]
    torch_opt = torch.optim.Adam([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.05}],
                                 lr=0.01, fused=True)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads):
            t.grad = torch.from_numpy(g.copy())
        norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        torch_opt.step()
        opt.step(step_grads)
        # torch sums per-tensor norms in the tensors' dtype; fastopt accumulates in float64
        rtol = 2e-5 if dtype == np.float32 else 1e-11
        assert opt.last_grad_norm == pytest.approx(float(norm), rel=rtol)
        for a, t in zip(ours, theirs):
            np.testing.assert_allclose(a, t.detach().numpy(), rtol=rtol, atol=rtol / 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_standalone_clip_grad_norm_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    _, grads = problem(dtype, steps=1)
    ours = [g.copy() for g in grads[0]]
    theirs = [torch.zeros(g.shape, dtype=torch.float64 if dtype == np.float64 else
                          torch.float32, requires_grad=True) for g in ours]
    for t, g in zip(theirs, ours):
        t.grad = torch.from_numpy(g.copy())
    want = torch.nn.utils.clip_grad_norm_(theirs, 2.0)
    got = fastopt.clip_grad_norm(ours, 2.0)
    assert got == pytest.approx(float(want), rel=1e-6)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-6)
    assert np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in ours)) <= 2.0 + 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduction_is_bitwise_identical_for_1_and_2_threads(dtype):
    rng = np.random.default_rng(5)
    buffers = [rng.standard_normal(n).astype(dtype) * 1e3 for n in (3 * BLOCK + 17, 5, 10**6)]
    results = []
    for threads in (1, 2, 1):
        with fastopt.num_threads(min(threads, numba.config.NUMBA_NUM_THREADS)):
            results.append(norm_and_finite(buffers))
    assert results[0] == results[1] == results[2]
    exact = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in buffers)
    assert results[0][0] == pytest.approx(exact, rel=1e-12)
    assert results[0][1] is True


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_reduction_reports_nonfinite(bad):
    x = np.ones(3 * BLOCK + 1, dtype=np.float32)
    x[2 * BLOCK + 7] = bad
    assert norm_and_finite([np.ones(4), x])[1] is False
    huge = np.full(10, 3e38, dtype=np.float32)          # finite, squares overflow float32
    assert norm_and_finite([huge]) == (pytest.approx(9e77, rel=1e-6), True)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("layout", ["flat", "arrays"])
def test_skipped_step_changes_nothing_and_training_continues(case, layout):
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = problem(np.float32, steps=6)
    bad = [g.copy() for g in grads[3]]
    bad[2][1, 3] = np.nan

    def make():
        if layout == "flat":
            flat = fastopt.flatten(params)
            return cls(flat, lr=lr, skip_if_nonfinite=True, **options), flat.params
        mine = [p.copy() for p in params]
        return cls(mine, lr=lr, skip_if_nonfinite=True, **options), mine

    opt, mine = make()
    clean, clean_params = make()
    for i, step_grads in enumerate(grads):
        if i == 3:
            before = ([p.copy() for p in mine], opt.state_dict())
            kept = [g.copy() for g in bad]
            opt.step(bad, zero_grad=True)
            assert opt.last_step_skipped
            for a, b in zip(mine, before[0]):
                np.testing.assert_array_equal(a, b)
            after = opt.state_dict()
            for index, entry in before[1]["state"].items():
                for name, value in entry.items():
                    np.testing.assert_array_equal(after["state"][index][name], value)
            for g, k in zip(bad, kept):
                np.testing.assert_array_equal(g, k)    # gradients untouched too
        opt.step(step_grads)
        clean.step(step_grads)
        assert not opt.last_step_skipped
    for a, b in zip(mine, clean_params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_zero_grad_equals_unfused_path(case, dtype):
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = problem(dtype, steps=5)
    fused_flat, plain_flat = fastopt.flatten(params), fastopt.flatten(params)
    fused = cls(fused_flat, lr=lr, **options)
    plain = cls(plain_flat, lr=lr, **options)
    for step_grads in grads:
        for a, b, g in zip(fused_flat.grads, plain_flat.grads, step_grads):
            a[...] = g
            b[...] = g
        fused.step(zero_grad=True)
        plain.step()
        for g in fused_flat.grads:
            assert not g.any()
        plain.zero_grad()
    for a, b in zip(fused_flat.params, plain_flat.params):
        np.testing.assert_array_equal(a, b)


def test_fused_zero_grad_on_the_gather_path_zeroes_the_callers_arrays():
    flat = fastopt.flatten([np.ones(3), np.ones(2)])
    grads = [np.ones(3), np.ones(2)]
    fastopt.SGD(flat, lr=0.1).step(grads, zero_grad=True)
    assert not grads[0].any() and not grads[1].any()
    np.testing.assert_allclose(flat.buffers[0].param, 0.9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", list(RULES))
def test_grad_scale_unscales_like_dividing_the_gradients(rule, dtype):
    cls, ref, lr = RULES[rule]
    params, grads = problem(dtype, scale=1024.0)
    ours = [p.copy() for p in params]
    opt = cls(ours, lr=lr, grad_scale=1024.0)
    expected, states = [p.copy() for p in params], [{} for _ in params]
    for step_grads in grads:
        opt.step(step_grads)
        for i, g in enumerate(step_grads):
            expected[i], states[i] = ref(expected[i], g, states[i], lr=lr,
                                         grad_factor=1 / 1024)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, **tol)


def test_callable_lr_is_evaluated_once_per_step_with_the_step_count():
    params, grads = problem(np.float64, steps=6)
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 * 0.5 ** step

    scheduled = [p.copy() for p in params]
    manual = [p.copy() for p in params]
    opt = fastopt.SGD(fastopt.flatten(scheduled).params, lr=schedule, momentum=0.9)
    reference_opt = fastopt.SGD(manual, lr=0.1, momentum=0.9)
    flat_views = opt.param_groups[0]["params"]
    for step, step_grads in enumerate(grads):
        reference_opt.param_groups[0]["lr"] = 0.1 * 0.5 ** step
        reference_opt.step(step_grads)
        opt.step(step_grads)
    assert seen == list(range(6))
    for a, b in zip(flat_views, manual):
        np.testing.assert_allclose(a, b, rtol=1e-14)


@pytest.mark.parametrize("options, error, name", [
    ({"clip_grad_norm": 0.0}, ValueError, "clip_grad_norm"),
    ({"clip_grad_norm": float("nan")}, ValueError, "clip_grad_norm"),
    ({"grad_scale": 0.0}, ValueError, "grad_scale"),
    ({"grad_scale": float("inf")}, ValueError, "grad_scale"),
    ({"grad_scale": "1"}, TypeError, "grad_scale"),
    ({"skip_if_nonfinite": 1}, TypeError, "skip_if_nonfinite"),
])
def test_bad_loop_options(options, error, name):
    with pytest.raises(error, match=name):
        fastopt.Adam([np.ones(3)], **options)
    opt = fastopt.Adam([np.ones(3)])
    for key, value in options.items():
        setattr(opt, key, value)
    params_before = opt.param_groups[0]["params"][0].copy()
    with pytest.raises(error, match=name):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(opt.param_groups[0]["params"][0], params_before)


def test_schedule_returning_a_bad_lr_is_refused_before_writing():
    p = np.ones(3)
    opt = fastopt.SGD([p], lr=lambda step: -1.0 if step == 1 else 0.1)
    opt.step([np.ones(3)])
    before = p.copy()
    with pytest.raises(ValueError, match="lr"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(p, before)


def test_num_threads_restores_the_previous_count():
    previous = numba.get_num_threads()
    with fastopt.num_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == previous
    with pytest.raises(RuntimeError), fastopt.num_threads(1):
        raise RuntimeError("inside")
    assert numba.get_num_threads() == previous
    for bad, error in ((0, ValueError), (numba.config.NUMBA_NUM_THREADS + 1, ValueError),
                       (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_threads"):
            with fastopt.num_threads(bad):
                pass


def test_schedule_object_as_lr_matches_setting_lr_by_hand():
    schedule = fastopt.schedules.cosine(0.1, total_steps=8, warmup_steps=2)
    params, grads = problem(np.float32, steps=8)
    scheduled, manual = [p.copy() for p in params], [p.copy() for p in params]
    opt = fastopt.AdamW(scheduled, lr=schedule)
    by_hand = fastopt.AdamW(manual, lr=0.1)
    for step, step_grads in enumerate(grads):
        by_hand.param_groups[0]["lr"] = schedule(step)
        opt.step(step_grads)
        by_hand.step(step_grads)
    for a, b in zip(scheduled, manual):
        np.testing.assert_array_equal(a, b)


def test_overflowing_but_finite_float64_gradients_count_as_finite():
    """A float64 sum of squares can overflow with finite elements (|x| > ~1e154): the
    reduction then checks finiteness exactly, so such a step is not skipped."""
    huge = np.array([1e200, -3.0, 2e180])
    squares, finite = norm_and_finite([np.ones(5), huge])
    assert squares == np.inf and finite is True
    huge[1] = np.nan
    assert norm_and_finite([np.ones(5), huge])[1] is False


def test_nan_gradient_without_skip_clips_as_torch_does():
    """torch's clip coefficient is NaN for a NaN norm, so every clipped gradient (and the
    update) becomes NaN; fastopt's folded coefficient does the same."""
    torch = pytest.importorskip("torch")
    grads = [np.array([1.0, np.nan]), np.array([3.0])]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(theirs, grads):
        t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    ours = [g.copy() for g in grads]
    fastopt.clip_grad_norm(ours, 1.0)
    for a, t in zip(ours, theirs):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(t.grad.numpy()))
    params = [np.zeros(2), np.zeros(1)]
    fastopt.SGD(params, lr=0.1, clip_grad_norm=1.0).step(grads)
    assert np.isnan(params[1]).all()   # the finite gradient's parameter too, as in torch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_does_not_depend_on_the_layout(dtype):
    """One flat buffer and the same values as separate arrays give the same bits of the
    global norm (README "Guarantees"): each parameter is reduced in blocks anchored at its
    own first element, and the per-parameter sums are added exactly. The sizes put block
    boundaries of the flat buffer inside parameters; magnitudes differ by 1e6 so that a
    different grouping of the float64 partial sums changes the last bits."""
    rng = np.random.default_rng(7)
    sizes = (5000, 9001, 1, 3 * BLOCK + 17, 0, 12345)
    values = [(rng.standard_normal(n) * 10.0 ** (3 * (i % 3) - 3)).astype(dtype)
              for i, n in enumerate(sizes)]
    flat = fastopt.flatten(values)
    flat_grads = flat.grads
    for g, v in zip(flat_grads, values):
        g[...] = v
    norms = set()
    for threads in (1, 2):
        with fastopt.num_threads(min(threads, numba.config.NUMBA_NUM_THREADS)):
            opt = fastopt.SGD(flat, lr=0.0, clip_grad_norm=1e300)
            opt.step()
            norms.add(opt.last_grad_norm)
            arrays = [np.zeros_like(v) for v in values]
            separate = fastopt.SGD(arrays, lr=0.0, clip_grad_norm=1e300)
            separate.step([v.copy() for v in values])
            norms.add(separate.last_grad_norm)
            norms.add(fastopt.clip_grad_norm(flat, 1e300))
            norms.add(fastopt.clip_grad_norm([v.copy() for v in values], 1e300))
            norms.add(fastopt.clip_grad_norm(values[::-1], 1e300))   # order: no matter
    assert len(norms) == 1, norms
    exact = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in values))
    assert norms.pop() == pytest.approx(exact, rel=1e-14)
