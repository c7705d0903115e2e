"""Adamax, RAdam, Adadelta and Rprop: fastopt.reference against torch.optim (foreach=False)
step by step, and the kernels (fastopt/kernels/{adamax,radam,adadelta,rprop}.py, scalars
from fastopt.rules) against the reference, 40 steps, float32 and float64.

Tolerances as tests/test_reference.py: float32 rtol 2e-5, atol 1e-6; float64 rtol 1e-12,
atol 1e-13. Torch's CPU vector loops fuse lerp, addcmul and add(alpha=) into fused
multiply-adds, the kernels round every product, and the reference is written in the
papers' form (``beta1*m + (1-beta1)*g`` rather than torch's lerp): a few ulp per step.
Rprop's arithmetic is the same everywhere (products by etas, clamps, ``p -+ step_size``),
so it is compared bitwise.
"""

import inspect

import numpy as np
import pytest

from fastopt import kernels, reference
import rule_scalars
from fastopt.kernels.adadelta import adadelta as adadelta_kernel
from fastopt.kernels.adamax import adamax as adamax_kernel
from fastopt.kernels.radam import radam as radam_kernel
from fastopt.kernels.rprop import rprop as rprop_kernel

torch = pytest.importorskip("torch")

STEPS = 40
SHAPES = [(7, 5), (13,), ()]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}

KERNELS = {"adamax": adamax_kernel, "radam": radam_kernel, "adadelta": adadelta_kernel,
           "rprop": rprop_kernel}
TORCH = {"adamax": "Adamax", "radam": "RAdam", "adadelta": "Adadelta", "rprop": "Rprop"}
STATE = {"adamax": ("exp_avg", "exp_inf"), "radam": ("exp_avg", "exp_avg_sq"),
         "adadelta": ("square_avg", "acc_delta"), "rprop": ("prev", "step_size")}

# Every option alone, then a combination. betas=(0.3, ...) takes torch's other lerp
# branch (weight 1 - beta1 >= 0.5); RAdam's betas=(0.5, 0.9) starts unrectified for
# several steps (rho_t <= 5) and then rectifies.
CASES = {
    "adamax": [{}, {"lr": 0.05}, {"maximize": True}, {"weight_decay": 0.1},
               {"betas": (0.3, 0.9)}, {"betas": (0.8, 0.99)}, {"eps": 1e-2},
               {"lr": 0.05, "betas": (0.5, 0.95), "eps": 1e-6, "weight_decay": 0.05,
                "maximize": True}],
    "radam": [{}, {"lr": 0.05}, {"maximize": True}, {"weight_decay": 0.1},
              {"decoupled_weight_decay": True},
              {"weight_decay": 0.1, "decoupled_weight_decay": True},
              {"betas": (0.3, 0.9)}, {"betas": (0.5, 0.9)}, {"eps": 1e-3},
              {"lr": 0.05, "betas": (0.7, 0.95), "eps": 1e-6, "weight_decay": 0.2,
               "decoupled_weight_decay": True, "maximize": True}],
    "adadelta": [{}, {"lr": 0.5}, {"maximize": True}, {"weight_decay": 0.1},
                 {"rho": 0.5}, {"eps": 1e-3},
                 {"lr": 2.0, "rho": 0.7, "eps": 1e-4, "weight_decay": 0.05,
                  "maximize": True}],
    "rprop": [{}, {"lr": 0.1}, {"maximize": True}, {"etas": (0.3, 1.7)},
              {"step_sizes": (1e-3, 0.05)},
              {"lr": 0.02, "etas": (0.4, 1.5), "step_sizes": (2e-3, 0.1),
               "maximize": True}],
}
ALL_CASES = [(rule, case) for rule, cases in CASES.items() for case in cases]


def case_id(value):
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "defaults"
    return str(value)


def make_problem(dtype, seed=0):
    """Parameters and gradients; about one gradient element in ten is exactly 0 (Rprop's
    third branch, and g * prev == 0 away from the first step)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = []
    for _ in range(STEPS):
        step = []
        for shape in SHAPES:
            g = rng.standard_normal(shape)
            g = np.where(rng.random(shape) < 0.1, 0.0, g)
            step.append(np.asarray(g, dtype=dtype))
        grads.append(step)
    return params, grads


def assert_close(got, want, dtype, rule, err_msg):
    if rule == "rprop":
        np.testing.assert_array_equal(got, want, err_msg=err_msg)
    else:
        np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=err_msg)


# --- the reference against torch.optim -----------------------------------------------

def torch_run(rule, case, params, grads, grad_factor):
    cls = getattr(torch.optim, TORCH[rule])
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = cls(tensors, foreach=False, **case)
    for step_grads in grads:
        for t, g in zip(tensors, step_grads):
            t.grad = torch.from_numpy(np.asarray(g * g.dtype.type(grad_factor)))
        opt.step()
        yield [t.detach().numpy().copy() for t in tensors], [opt.state[t] for t in tensors]


@pytest.mark.parametrize("grad_factor", [1.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,case", ALL_CASES, ids=case_id)
def test_reference_matches_torch(rule, case, dtype, grad_factor):
    ref = reference.RULES[rule]
    params, grads = make_problem(dtype)
    mine, states = [p.copy() for p in params], [{} for _ in params]
    for step, (step_grads, (want, want_states)) in enumerate(
            zip(grads, torch_run(rule, case, params, grads, grad_factor)), start=1):
        for i, g in enumerate(step_grads):
            mine[i], states[i] = ref(mine[i], g, states[i], grad_factor=grad_factor, **case)
            assert mine[i].dtype == dtype
            assert_close(mine[i], want[i], dtype, rule, f"step {step}, param {i}")
            assert set(states[i]) == {"step", *STATE[rule]}
            assert states[i]["step"] == step == int(want_states[i]["step"])
            for name in STATE[rule]:
                assert states[i][name].dtype == dtype
                assert_close(states[i][name], want_states[i][name].numpy(), dtype, rule,
                             f"state {name}, step {step}, param {i}")


def test_reference_changes_nothing_it_was_given():
    params, grads = make_problem(np.float32)
    for rule, ref in ((r, reference.RULES[r]) for r in ("adamax", "radam", "adadelta", "rprop")):
        p, g = params[0].copy(), grads[0][0].copy()
        _, state = ref(p, g, {}, **CASES[rule][-1])
        copies = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
        ref(p, g, state, **CASES[rule][-1])
        np.testing.assert_array_equal(p, params[0])
        np.testing.assert_array_equal(g, grads[0][0])
        for name, value in copies.items():
            np.testing.assert_array_equal(state[name], value)


# --- the kernels against the reference -------------------------------------------------

def kernel_args(kernel, buffers, scalars, dtype):
    """The kernel's positional arguments, bound BY NAME from ``buffers`` (arrays) and
    ``scalars`` (floats, cast to ``dtype``); ``param_copy`` unused unless given. Every
    argument must be named, and every name given must be an argument."""
    names = list(inspect.signature(kernel.body).parameters)
    cast = np.float32 if dtype == np.float32 else float
    values = {"param_copy": kernels.unused(np.uint16), **buffers}
    values.update({name: cast(value) for name, value in scalars.items()})
    if "noise_key" in names and "noise_key" not in values:   # unused with float state
        values["noise_key"] = cast(0.0)
    assert set(values) == set(names), (sorted(set(values) - set(names)),
                                       sorted(set(names) - set(values)))
    return [values[name] for name in names]


def host_grad_factor(case, grad_factor):
    return -grad_factor if case.get("maximize", False) else grad_factor


def initial_state(rule, case, param):
    fill = rule_scalars.initial("rprop", case) if rule == "rprop" else {}
    return {name: np.full_like(param, fill.get(name, 0.0)) for name in STATE[rule]}


@pytest.mark.parametrize("grad_factor,zero_grad", [(1.0, False), (0.5, True)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,case", ALL_CASES, ids=case_id)
def test_kernel_matches_reference(rule, case, dtype, grad_factor, zero_grad):
    kernel, ref = KERNELS[rule], reference.RULES[rule]
    scalars_of = rule_scalars.SCALARS[rule]
    variant = kernel.variant(zero_grad=zero_grad)
    options = [zero_grad if flag == "zero_grad" else False for flag in kernel.flags]
    params, grads = make_problem(dtype)
    expected, ref_states = [p.copy() for p in params], [{} for _ in params]
    # three runs of the kernel: Kernel.__call__ (picks a twin by size), serial, parallel
    runs = {how: [(p.ravel().copy(), initial_state(rule, case, p.ravel())) for p in params]
            for how in ("call", "serial", "parallel")}
    for t, step_grads in enumerate(grads, start=1):
        scalars = {**scalars_of(case, t, set(STATE[rule]) if t == 1 else set()),
                   "grad_factor": host_grad_factor(case, grad_factor)}
        for i, g in enumerate(step_grads):
            expected[i], ref_states[i] = ref(expected[i], g, ref_states[i],
                                             grad_factor=grad_factor, **case)
            for how, run in runs.items():
                param, state = run[i]
                grad = g.ravel().copy()
                args = kernel_args(kernel, {"param": param, "grad": grad, **state},
                                   scalars, dtype)
                if how == "call":
                    kernel(*args, *options)
                else:
                    getattr(variant, how)(*args)
                if zero_grad:
                    assert not grad.any(), "zero_grad left a gradient"
                else:
                    np.testing.assert_array_equal(grad, g.ravel())
            serial, parallel, call = (runs[h][i] for h in ("serial", "parallel", "call"))
            for a, b in ((serial, parallel), (serial, call)):
                np.testing.assert_array_equal(a[0], b[0], err_msg=f"twins, step {t}")
                for name in STATE[rule]:
                    np.testing.assert_array_equal(a[1][name], b[1][name])
            got = serial[0].reshape(np.shape(params[i]))
            assert got.dtype == dtype
            assert_close(got, expected[i], dtype, rule, f"step {t}, param {i}")
            for name in STATE[rule]:
                assert_close(serial[1][name], np.ravel(ref_states[i][name]), dtype, rule,
                             f"state {name}, step {t}, param {i}")


@pytest.mark.parametrize("rule", list(KERNELS))
def test_scalars_name_every_kernel_scalar(rule):
    """The scalars dict plus grad_factor (and the low-precision state's noise_key, last)
    is exactly the kernel's scalar arguments, for every case and on steps on both sides
    of RAdam's switch."""
    kernel = KERNELS[rule]
    names = list(inspect.signature(kernel.body).parameters)
    buffers = ["param", "grad", *STATE[rule], "param_copy"]
    assert names[:len(buffers)] == buffers
    if names[-1] == "noise_key":
        names = names[:-1]
    assert names[-1] == "grad_factor"
    assert "grad_scale" not in names
    for case in CASES[rule]:
        for t in (1, 5, 6, 40):
            assert list(rule_scalars.SCALARS[rule](case, t, set())) == \
                names[len(buffers):-1]


def test_radam_switch():
    """torch's rho_t > 5 test, per step: default betas rectify from step 6."""
    flags = [rule_scalars.SCALARS["radam"]({}, t)["rectified"] for t in range(1, 9)]
    assert flags == [0.0] * 5 + [1.0] * 3
    s = rule_scalars.SCALARS["radam"]({}, 5)
    assert s["rect"] == 0.0 and s["sqrt_bias_correction2"] == 0.0


# --- NaN and infinities: the kernels against torch directly ---------------------------

SPECIAL_CASES = {"adamax": {"betas": (0.3, 0.9)}, "radam": {"betas": (0.3, 0.9)},
                 "adadelta": {}, "rprop": {}}


@pytest.mark.parametrize("rule", list(KERNELS))
def test_special_values_flow_as_in_torch(rule):
    """NaN, +-Inf and 0 gradients on steps 1, 2 and 7 (float32): the kernel's NaN/Inf
    positions equal torch's and the rest agree to float32's tolerance (Rprop bitwise).
    Torch's own surprises exercised here: Rprop's sign(NaN) is 0 (a NaN gradient leaves
    the parameter as it is; inf * prev(0) on the first step keeps the step size);
    Adamax's maximum propagates NaN; lerp's second branch (beta1 < 0.5) turns an
    infinite gradient into a NaN exp_avg."""
    dtype, case, kernel = np.float32, SPECIAL_CASES[rule], KERNELS[rule]
    rng = np.random.default_rng(1)
    n = 64
    param0 = rng.standard_normal(n).astype(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=dtype)
    tensor = torch.nn.Parameter(torch.from_numpy(param0.copy()))
    opt = getattr(torch.optim, TORCH[rule])([tensor], foreach=False, **case)
    param, state = param0.copy(), initial_state(rule, case, param0)
    variant = kernel.variant()
    for t in range(1, 11):
        g = rng.standard_normal(n).astype(dtype)
        if t in (1, 2, 7):
            idx = rng.choice(n, 8, replace=False)
            g[idx] = specials[np.arange(8) % 4]
        tensor.grad = torch.from_numpy(g.copy())
        opt.step()
        scalars = {**rule_scalars.SCALARS[rule](case, t, set()), "grad_factor": 1.0}
        variant.serial(*kernel_args(kernel, {"param": param, "grad": g.copy(), **state},
                                    scalars, dtype))
        want = tensor.detach().numpy()
        if rule == "rprop":
            np.testing.assert_array_equal(param, want, err_msg=f"step {t}")
        else:
            np.testing.assert_allclose(param, want, **TOL[dtype], err_msg=f"step {t}")
        for name in STATE[rule]:
            np.testing.assert_allclose(state[name], opt.state[tensor][name].numpy(),
                                       **TOL[dtype], err_msg=f"{name}, step {t}")
    assert np.isnan(param).any() or rule == "rprop"


# --- write_copy: bfloat16 bits of the updated float32 parameter ----------------------

def bf16_bits(x):
    bits = x.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("twin", ["serial", "parallel"])
def test_write_copy_gets_bf16_bits(twin):
    dtype, rule, case = np.float32, "adamax", {"lr": 0.05}
    kernel = KERNELS[rule]
    params, grads = make_problem(dtype)
    param = params[0].ravel().copy()
    plain = param.copy()
    state, plain_state = initial_state(rule, case, param), initial_state(rule, case, param)
    copy = np.zeros(param.shape, np.uint16)
    with_copy = getattr(kernel.variant(write_copy=True), twin)
    without = getattr(kernel.variant(), twin)
    for t in range(1, 11):
        g = grads[t - 1][0].ravel()
        scalars = {**rule_scalars.SCALARS["adamax"](case, t, set()), "grad_factor": 1.0}
        with_copy(*kernel_args(kernel, {"param": param, "grad": g.copy(), **state,
                                        "param_copy": copy}, scalars, dtype))
        without(*kernel_args(kernel, {"param": plain, "grad": g.copy(), **plain_state},
                             scalars, dtype))
        np.testing.assert_array_equal(param, plain)
        np.testing.assert_array_equal(copy, bf16_bits(param))
