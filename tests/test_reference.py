"""Every rule and option, float32 and float64, against fastopt.reference over 60 steps.

Tolerances: the float64 kernels round differently from the reference only where the
kernel fuses a multiply-add (fastmath ``contract``) or folds a division into a
precomputed reciprocal (``1/sqrt(1 - beta2**t)``, ``lr/(1 - beta1**t)``): a few ulp per
step, so after 60 steps the relative gap stays far below 1e-12. In float32 each step's
rounding gap is a few ulp of 1.2e-7; 60 steps of such gaps compound to ~1e-6 to 1e-5
relative, so rtol is 2e-5 (atol 1e-6 covers parameters that pass near zero, where a
relative test is meaningless). A wrong formula (a missing bias correction, eps in the
wrong place, momentum dropped) is off by 1e-3 or more after the first few steps.
"""

import numpy as np
import pytest

import fastopt
from cases import CASES, RULES, case_id

STEPS = 60
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
SHAPES = [(7, 5), (13,), (2, 3, 4), ()]


def make_problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def run_reference(rule, options, params, grads):
    _, ref, lr = RULES[rule]
    params, states, history = [p.copy() for p in params], [{} for _ in params], []
    for step_grads in grads:
        for i, grad in enumerate(step_grads):
            params[i], states[i] = ref(params[i], grad, states[i], lr=lr, **options)
        history.append([p.copy() for p in params])
    return history, states


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("layout", ["flat", "arrays"])
def test_optimizer_matches_reference(case, dtype, layout):
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = make_problem(dtype)
    expected, expected_states = run_reference(rule, options, params, grads)
    if layout == "flat":
        flat = fastopt.flatten(params)
        mine = flat.params
        opt = cls(flat, lr=lr, **options)
    else:
        mine = [p.copy() for p in params]
        opt = cls(mine, lr=lr, **options)
    for step, step_grads in enumerate(grads):
        if layout == "flat":
            for view, grad in zip(flat.grads, step_grads):
                view[...] = grad
            opt.step()
        else:
            opt.step(step_grads)
        for i, (got, want) in enumerate(zip(mine, expected[step])):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")
    state = opt.state_dict()["state"]
    for i, want in enumerate(expected_states):
        for name, value in want.items():
            if name == "step":
                assert state[i]["step"] == value
            else:
                np.testing.assert_allclose(state[i][name], value, **TOL[dtype],
                                           err_msg=f"state {name} of param {i}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_param_groups_use_their_own_hyperparameters(dtype):
    params, grads = make_problem(dtype)
    a, b = [p.copy() for p in params[:2]], [p.copy() for p in params[2:]]
    opt = fastopt.Adam([{"params": a, "lr": 0.1, "amsgrad": True},
                        {"params": b, "betas": (0.5, 0.9)}], lr=0.01)
    ref_a, ref_b = [p.copy() for p in params[:2]], [p.copy() for p in params[2:]]
    states = [{} for _ in params]
    for step_grads in grads:
        opt.step(step_grads)
        for i in range(2):
            ref_a[i], states[i] = fastopt.reference.adam(
                ref_a[i], step_grads[i], states[i], lr=0.1, amsgrad=True)
        for i in range(2):
            ref_b[i], states[2 + i] = fastopt.reference.adam(
                ref_b[i], step_grads[2 + i], states[2 + i], lr=0.01, betas=(0.5, 0.9))
    for got, want in zip(a + b, ref_a + ref_b):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gathered_gradients_match_gradient_views(case, dtype):
    """step(grads) with arrays that are not the flat gradient views (the gather path)
    and step() on the flat gradient buffer give the same update, bitwise."""
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = make_problem(dtype)
    gathered, direct = fastopt.flatten(params), fastopt.flatten(params)
    opt_gathered = cls(gathered, lr=lr, **options)
    opt_direct = cls(direct, lr=lr, **options)
    for step_grads in grads[:10]:
        opt_gathered.step(step_grads)
        for view, grad in zip(direct.grads, step_grads):
            view[...] = grad
        opt_direct.step()
    for got, want in zip(gathered.params, direct.params):
        np.testing.assert_array_equal(got, want)


def test_lr_change_between_steps_is_used():
    """A schedule that writes param_groups[i]['lr'] (as torch's schedulers do) takes effect."""
    params, grads = make_problem(np.float64)
    mine = [p.copy() for p in params]
    opt = fastopt.SGD(mine, lr=0.1, momentum=0.9)
    ref, states = [p.copy() for p in params], [{} for _ in params]
    for step, step_grads in enumerate(grads[:10]):
        lr = 0.1 * 0.5 ** step
        opt.param_groups[0]["lr"] = lr
        opt.step(step_grads)
        for i in range(len(ref)):
            ref[i], states[i] = fastopt.reference.sgd(ref[i], step_grads[i], states[i],
                                                      lr=lr, momentum=0.9)
    for got, want in zip(mine, ref):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


def test_none_gradient_skips_that_parameter():
    params, grads = make_problem(np.float64)
    mine = [p.copy() for p in params]
    opt = fastopt.Adam(mine, lr=0.01)
    opt.step([grads[0][0], None, grads[0][2], None])
    np.testing.assert_array_equal(mine[1], params[1])
    np.testing.assert_array_equal(mine[3], params[3])
    assert not np.array_equal(mine[0], params[0])
    assert set(opt.state_dict()["state"]) == {0, 2}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_one_flat_call_and_per_array_calls_agree_bitwise(case, dtype):
    """An element's result does not depend on where it sits in the buffer (vector body or
    scalar remainder of the compiled loop): the kernels use no fastmath reassociation,
    contraction or reciprocal approximation, so one call over the flat buffer and one call
    per array give bitwise equal parameters."""
    rule, options = case
    cls, _, lr = RULES[rule]
    params, grads = make_problem(dtype)
    flat, separate = fastopt.flatten(params), [p.copy() for p in params]
    opt_flat, opt_sep = cls(flat, lr=lr, **options), cls(separate, lr=lr, **options)
    for step_grads in grads[:20]:
        opt_flat.step(step_grads)
        opt_sep.step(step_grads)
    for got, want in zip(flat.params, separate):
        np.testing.assert_array_equal(got, want)


def test_every_registered_rule_is_in_the_test_matrix_and_has_a_reference():
    """A rule added to the registry without a test matrix line or a reference fails here."""
    from cases import MATRIX

    from fastopt import reference
    from fastopt.rules import RULES as REGISTRY

    assert set(MATRIX) == set(REGISTRY)
    assert set(reference.RULES) == set(REGISTRY)
