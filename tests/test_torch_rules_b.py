"""NAdam, ASGD (torch.optim) and Lion: the NumPy references against torch / lion-pytorch /
a second transcription, and the kernels against the references, 40 steps each.

Tolerances are those of tests/test_reference.py (float32 rtol 2e-5 atol 1e-6, float64
rtol 1e-12 atol 1e-13). Torch keeps NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` as
0-d tensors of its *default* dtype (float32 unless changed), while fastopt derives them in
float64 (``fastopt.rules``); for float64 parameters under a float32 default dtype
the updates differ by 1e-8 to 1e-7 of their size, far above the float64 tolerance. The float64
comparisons with torch therefore run under ``torch.set_default_dtype(torch.float64)``,
and ``test_float64_under_torch_float32_default`` measures that gap on its own.
"""

import inspect

import numpy as np
import pytest

from fastopt import kernels, reference
import rule_scalars
from fastopt.kernels.asgd import asgd as asgd_kernel
from fastopt.kernels.lion import lion as lion_kernel
from fastopt.kernels.nadam import nadam as nadam_kernel

torch = pytest.importorskip("torch")

STEPS = 40
SHAPES = [(7, 5), (13,), ()]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = [np.float32, np.float64]

#: torch.optim's defaults, by torch's names (the ``group`` the scalars functions read).
DEFAULTS = {
    "nadam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False),
    "asgd": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False),
    "lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False),
}

#: Every option alone, then a combination. NAdam's betas=(0.3, ...) takes torch's other
#: lerp formula (weight 1 - beta1 >= 0.5). ASGD's t0=5 starts averaging within the run.
OPTIONS = {
    "nadam": [
        {}, {"maximize": True}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"momentum_decay": 0.05},
        {"betas": (0.8, 0.99)}, {"betas": (0.3, 0.9)}, {"eps": 1e-3}, {"lr": 0.05},
        {"lr": 0.01, "betas": (0.85, 0.995), "weight_decay": 0.05,
         "decoupled_weight_decay": True, "momentum_decay": 0.01, "maximize": True},
    ],
    "asgd": [
        {}, {"t0": 5}, {"lambd": 0.05}, {"alpha": 0.5}, {"weight_decay": 0.1},
        {"maximize": True}, {"lr": 0.1},
        {"lr": 0.05, "lambd": 1e-2, "alpha": 0.6, "t0": 5, "weight_decay": 0.01,
         "maximize": True},
    ],
    "lion": [
        {}, {"lr": 1e-2}, {"weight_decay": 0.5}, {"betas": (0.5, 0.9)}, {"maximize": True},
        {"lr": 3e-3, "betas": (0.95, 0.98), "weight_decay": 0.1, "maximize": True},
    ],
}

KERNELS = {"nadam": nadam_kernel, "asgd": asgd_kernel, "lion": lion_kernel}
BUFFERS = {"nadam": ("exp_avg", "exp_avg_sq"), "asgd": ("ax",), "lion": ("exp_avg",)}
SCALAR_STATE = {"nadam": ("mu_product",), "asgd": ("eta", "mu"), "lion": ()}


def case_id(options):
    return "-".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def make_problem(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in shapes]
             for _ in range(STEPS)]
    return params, grads


def run_reference(rule, options, params, grads, grad_factor=1.0):
    """Every step's parameters and the final states, from ``reference.RULES``."""
    ref = reference.RULES[rule]
    params, states, history = [np.asarray(p).copy() for p in params], [{} for _ in params], []
    for step_grads in grads:
        for i, grad in enumerate(step_grads):
            given = (params[i], params[i].copy(), grad.copy(), states[i],
                     {k: np.copy(v) for k, v in states[i].items()})
            params[i], states[i] = ref(params[i], grad, states[i], **options,
                                       grad_factor=grad_factor)
            params[i] = np.asarray(params[i])
            np.testing.assert_array_equal(given[0], given[1])   # changes nothing given
            np.testing.assert_array_equal(grad, given[2])
            assert given[3].keys() == given[4].keys()
            for name, value in given[4].items():
                np.testing.assert_array_equal(given[3][name], value)
        history.append([np.asarray(p).copy() for p in params])
    return history, states


def run_torch(cls, options, params, grads):
    tensors = [torch.tensor(p) for p in params]
    opt = cls(tensors, **options, foreach=False)
    history = []
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.tensor(grad)
        opt.step()
        history.append([t.detach().numpy().copy() for t in tensors])
    return history, [opt.state[t] for t in tensors]


# ----------------------------------------------------------------- references vs torch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule, options",
                         [("nadam", o) for o in OPTIONS["nadam"]]
                         + [("asgd", o) for o in OPTIONS["asgd"]],
                         ids=lambda x: case_id(x) if isinstance(x, dict) else x)
def test_reference_matches_torch(rule, options, dtype, torch_default_dtype):
    torch_default_dtype(dtype)
    cls = {"nadam": torch.optim.NAdam, "asgd": torch.optim.ASGD}[rule]
    params, grads = make_problem(dtype)
    expected, expected_states = run_torch(cls, options, params, grads)
    got, states = run_reference(rule, options, params, grads)
    for step in range(STEPS):
        for i, (mine, want) in enumerate(zip(got[step], expected[step])):
            assert mine.dtype == dtype
            np.testing.assert_allclose(mine, want, **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")
    for i, (mine, want) in enumerate(zip(states, expected_states)):
        assert mine["step"] == STEPS == int(want["step"].item())
        for name in BUFFERS[rule]:
            np.testing.assert_allclose(mine[name], want[name].numpy(), **TOL[dtype],
                                       err_msg=f"state {name} of param {i}")
        for name in SCALAR_STATE[rule]:
            assert isinstance(mine[name], float)
            # torch's 0-d state is float32 under the float32 default dtype: compare there
            tol = dict(rtol=1e-6, atol=0) if dtype == np.float32 else TOL[dtype]
            np.testing.assert_allclose(mine[name], want[name].item(), **tol,
                                       err_msg=f"state {name} of param {i}")


def test_asgd_averaging_starts_after_t0():
    """With t0 = 5, step t uses mu = 1/max(1, t-1-5): steps 1..7 copy the iterate into ax
    (mu = 1), later ones average."""
    params, grads = make_problem(np.float64)
    param, state = params[1], {}
    for step, step_grads in enumerate(grads[:10], start=1):
        param, state = reference.asgd(param, step_grads[1], state, t0=5)
        if step <= 7:
            np.testing.assert_array_equal(state["ax"], param)
        else:
            assert not np.array_equal(state["ax"], param)
    assert state["mu"] == 1 / (10 - 5)


@pytest.mark.parametrize("rule, options", [("nadam", {"lr": 0.05}),
                                           ("asgd", {"lr": 0.05, "t0": 5, "lambd": 0.01})])
def test_float64_under_torch_float32_default(rule, options, torch_default_dtype):
    """Float64 parameters while torch's default dtype is float32: torch's 0-d state
    (mu_product; eta, mu) is float32, fastopt's float64. The updates then differ by 1e-8
    to 1e-7 of their size (recorded, not a contract: far below float32's tolerance, far
    above float64's, hence the float64 default dtype in the comparisons above)."""
    torch_default_dtype(np.float32)
    cls = {"nadam": torch.optim.NAdam, "asgd": torch.optim.ASGD}[rule]
    params, grads = make_problem(np.float64)
    expected, _ = run_torch(cls, options, params, grads)
    got, _ = run_reference(rule, options, params, grads)
    for step in (0, 9, STEPS - 1):
        gap = max(np.max(np.abs(g - e)) / np.max(np.abs(e - np.asarray(s)))
                  for g, e, s in zip(got[step], expected[step], params))
        assert 1e-12 < gap < 1e-6, (step, gap)


def test_scalar_state_matches_torch_float32_accumulation():
    """nadam_scalar_state against torch's own float32 accumulation of mu_product, over
    1000 steps: the relative gap stays below 1e-5 (it is a few times 1e-7)."""
    group = dict(DEFAULTS["nadam"])
    product = torch.tensor(1.0, dtype=torch.float32)
    worst = 0.0
    for t in range(1, 1001):
        product *= group["betas"][0] * (1.0 - 0.5 * (0.96 ** (t * group["momentum_decay"])))
        exact = rule_scalars.scalar_state("nadam", group, t)["mu_product"]
        if exact > 1e-30:
            worst = max(worst, abs(product.item() - exact) / exact)
    assert worst < 1e-5


def test_scalar_state_is_resumable_and_bitwise_a_product():
    group = dict(DEFAULTS["nadam"], momentum_decay=0.01)
    forward = [rule_scalars.scalar_state("nadam", group, t)["mu_product"] for t in range(50)]
    backward = [rule_scalars.scalar_state("nadam", group, t)["mu_product"]
                for t in reversed(range(50))][::-1]
    product = 1.0
    for t in range(1, 50):
        product *= 0.9 * (1.0 - 0.5 * 0.96 ** (t * 0.01))
        assert forward[t] == backward[t] == product
    assert forward[0] == 1.0


def test_asgd_scalar_state_matches_torch_formula():
    group = dict(DEFAULTS["asgd"], t0=5, lambd=0.01)
    assert rule_scalars.scalar_state("asgd", group, 0) == {"eta": 1e-2, "mu": 1.0}
    for t in range(1, 20):
        state = rule_scalars.scalar_state("asgd", group, t)
        assert state["eta"] == 1e-2 / ((1 + 0.01 * 1e-2 * t) ** 0.75)
        assert state["mu"] == 1 / max(1, t - 5)
        scalars = rule_scalars.SCALARS["asgd"](group, t + 1, set())
        assert scalars["eta"] == state["eta"] and scalars["mu"] == state["mu"]


# ------------------------------------------------------------------------ Lion reference


def lion_optax_form(param, grad, m, lr, betas, weight_decay):
    """optax.lion's formulation: updates = sign(b1*m + (1-b1)*g) + wd*p, scaled by -lr."""
    beta1, beta2 = betas
    updates = np.sign((1 - beta1) * grad + beta1 * m)
    updates = updates + weight_decay * param
    return param + (-lr) * updates, (1 - beta2) * grad + beta2 * m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS["lion"], ids=case_id)
def test_lion_reference_matches_optax_form(options, dtype):
    params, grads = make_problem(dtype)
    got, states = run_reference("lion", options, params, grads)
    opts = {**DEFAULTS["lion"], **options}
    sign = -1 if opts["maximize"] else 1
    ps, ms = [np.asarray(p).copy() for p in params], [np.zeros_like(p) for p in params]
    for step, step_grads in enumerate(grads):
        for i, grad in enumerate(step_grads):
            ps[i], ms[i] = lion_optax_form(ps[i], sign * grad, ms[i], opts["lr"],
                                           opts["betas"], opts["weight_decay"])
            np.testing.assert_allclose(got[step][i], ps[i], **TOL[dtype])
    for state, m in zip(states, ms):
        np.testing.assert_allclose(state["exp_avg"], m, **TOL[dtype])
        assert state["step"] == STEPS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS["lion"], ids=case_id)
def test_lion_reference_matches_lion_pytorch(options, dtype):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    params, grads = make_problem(dtype)
    got, states = run_reference("lion", options, params, grads)
    opts = {**DEFAULTS["lion"], **options}
    sign = -1 if opts.pop("maximize") else 1   # lion-pytorch has no maximize
    tensors = [torch.tensor(p) for p in params]
    opt = lion_pytorch.Lion(tensors, **opts)
    for step, step_grads in enumerate(grads):
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.tensor(sign * grad)
        opt.step()
        for i, tensor in enumerate(tensors):
            np.testing.assert_allclose(got[step][i], tensor.numpy(), **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")
    for state, tensor in zip(states, tensors):
        np.testing.assert_allclose(state["exp_avg"], opt.state[tensor]["exp_avg"].numpy(),
                                   **TOL[dtype])


def test_lion_by_hand():
    """One element, lr = 0.1, betas (0.9, 0.99), weight_decay = 0.5 (decay 0.95 a step)."""
    p, state = np.array([1.0]), {}
    kw = dict(lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p, state = reference.lion(p, np.array([0.5]), state, **kw)
    # c = 0.1*0.5 = 0.05 > 0: p = 1*0.95 - 0.1; m = 0.01*0.5
    np.testing.assert_allclose(p, [0.85], rtol=1e-15)
    np.testing.assert_allclose(state["exp_avg"], [0.005], rtol=1e-15)
    p, state = reference.lion(p, np.array([-2.0]), state, **kw)
    # c = 0.9*0.005 - 0.2 = -0.1955 < 0: p = 0.85*0.95 + 0.1; m = 0.99*0.005 - 0.02
    np.testing.assert_allclose(p, [0.9075], rtol=1e-15)
    np.testing.assert_allclose(state["exp_avg"], [-0.01505], rtol=1e-14)
    p, state = reference.lion(p, np.array([0.0]), state, **kw)
    # g = 0: c = 0.9*m < 0: p = 0.9075*0.95 + 0.1; m = 0.99*m
    np.testing.assert_allclose(p, [0.962125], rtol=1e-15)
    np.testing.assert_allclose(state["exp_avg"], [-0.0148995], rtol=1e-14)
    # a zero gradient on a fresh state: sign(0) = 0, only the decay acts
    q, fresh = reference.lion(np.array([2.0]), np.array([0.0]), {}, **kw)
    np.testing.assert_array_equal(q, [2.0 * 0.95])
    np.testing.assert_array_equal(fresh["exp_avg"], [0.0])
    # NaN propagates (np.sign's NaN), so finiteness checks see it
    q, _ = reference.lion(np.array([2.0]), np.array([np.nan]), {}, **kw)
    assert np.isnan(q[0])
    # and the kernel agrees on all of it
    for grad, want in (([0.0], 2.0 * 0.95), ([np.nan], np.nan)):
        param, m = np.array([2.0]), np.zeros(1)
        scalars = rule_scalars.SCALARS["lion"](dict(DEFAULTS["lion"], **kw), 1, {"exp_avg"})
        lion_kernel(*kernel_args(lion_kernel, np.float64,
                                 dict(param=param, grad=np.array(grad), exp_avg=m),
                                 scalars, 1.0, {}))
        np.testing.assert_array_equal(param, [want])


# -------------------------------------------------------------- kernels vs references


def kernel_args(kernel, dtype, arrays, scalars, grad_factor, options, with_options=True):
    """The kernel's positional arguments, bound by name: arrays for param, grad and the
    state buffers (``kernels.unused`` for an absent param_copy), every scalar cast to the
    dtype, then the options in ``kernel.flags`` order."""
    names = list(inspect.signature(kernel.body).parameters)
    cast = np.float32 if dtype == np.float32 else float
    values = {"param_copy": kernels.unused(np.uint16), **arrays,
              **{name: cast(value) for name, value in scalars.items()},
              "grad_factor": cast(grad_factor)}
    if "noise_key" in names:   # low-precision state's key: unused with float state
        values["noise_key"] = cast(0.0)
    assert set(values) == set(names), (set(values) ^ set(names))
    args = [values[name] for name in names]
    if with_options:
        args += [bool(options.get(flag, False)) for flag in kernel.flags]
    return args


def group_for(rule, options):
    return {**DEFAULTS[rule], **options}


def run_kernel(rule, options, params, grads, dtype, grad_factor, kernel_options, twins):
    """40 kernel steps over the flattened parameters; with ``twins``, the serial and the
    parallel twin run on copies too and must agree bitwise with the Python call."""
    kernel = KERNELS[rule]
    group = group_for(rule, options)
    factor = -grad_factor if group["maximize"] else grad_factor
    flat = np.concatenate([np.ravel(p) for p in params]).astype(dtype)
    sizes = np.cumsum([np.size(p) for p in params])[:-1]
    states = {name: np.zeros_like(flat) for name in BUFFERS[rule]}
    copies = {twin: (flat.copy(), {k: v.copy() for k, v in states.items()})
              for twin in (("serial", "parallel") if twins else ())}
    variant = kernel.variant(**kernel_options)
    history = []
    for t, step_grads in enumerate(grads, start=1):
        grad = np.concatenate([np.ravel(g) for g in step_grads]).astype(dtype)
        fresh = set(BUFFERS[rule]) if t == 1 else set()
        scalars = rule_scalars.SCALARS[rule](group, t, fresh)
        g = grad.copy()
        kernel(*kernel_args(kernel, dtype, dict(param=flat, grad=g, **states), scalars,
                            factor, kernel_options))
        if kernel_options.get("zero_grad"):
            assert not g.any()
        else:
            np.testing.assert_array_equal(g, grad)
        for twin, (param, state) in copies.items():
            args = kernel_args(kernel, dtype, dict(param=param, grad=grad.copy(), **state),
                               scalars, factor, kernel_options, with_options=False)
            getattr(variant, twin)(*args)
            np.testing.assert_array_equal(param, flat, err_msg=f"{twin} twin, step {t}")
            for name in states:
                np.testing.assert_array_equal(state[name], states[name])
        history.append(np.split(flat.copy(), sizes))
    return history, states


KERNEL_CASES = ([("nadam", o) for o in OPTIONS["nadam"]]
                + [("asgd", o) for o in OPTIONS["asgd"]]
                + [("lion", o) for o in OPTIONS["lion"]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule, options", KERNEL_CASES,
                         ids=lambda x: case_id(x) if isinstance(x, dict) else x)
def test_kernel_matches_reference(rule, options, dtype):
    params, grads = make_problem(dtype, seed=1)
    expected, expected_states = run_reference(rule, options, params, grads)
    got, states = run_kernel(rule, options, params, grads, dtype, 1.0, {}, twins=False)
    for step in range(STEPS):
        for i, (mine, want) in enumerate(zip(got[step], expected[step])):
            assert mine.dtype == dtype
            np.testing.assert_allclose(mine, np.ravel(want), **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")
    for name in BUFFERS[rule]:
        want = np.concatenate([np.ravel(s[name]) for s in expected_states])
        np.testing.assert_allclose(states[name], want, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["nadam", "asgd", "lion"])
@pytest.mark.parametrize("kernel_options", [{}, {"zero_grad": True}], ids=case_id)
def test_kernel_twins_grad_factor_and_zero_grad(rule, kernel_options, dtype):
    """grad_factor != 1 (and maximize folded into it), on a buffer long enough for the
    vector body and a remainder (1003 elements): the Python call, the serial and the
    parallel twin agree bitwise, and all match the reference."""
    options = OPTIONS[rule][-1]   # the combination, maximize included
    shapes = [(1003,)]
    params, grads = make_problem(dtype, shapes=shapes, seed=2)
    expected, _ = run_reference(rule, options, params, grads, grad_factor=0.37)
    got, _ = run_kernel(rule, options, params, grads, dtype, 0.37, kernel_options,
                           twins=True)
    for step in range(STEPS):
        np.testing.assert_allclose(got[step][0], expected[step][0], **TOL[dtype],
                                   err_msg=f"step {step + 1}")


def bf16_bits(values):
    """Round float32 values to bfloat16 bits, nearest even (finite values)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("rule", ["nadam", "asgd", "lion"])
def test_write_copy_writes_bf16_of_the_updated_param(rule):
    kernel = KERNELS[rule]
    rng = np.random.default_rng(3)
    n = 257
    param = rng.standard_normal(n).astype(np.float32)
    twin = param.copy()
    states = {name: np.zeros(n, np.float32) for name in BUFFERS[rule]}
    twin_states = {name: s.copy() for name, s in states.items()}
    copy = np.zeros(n, np.uint16)
    group = group_for(rule, OPTIONS[rule][-1])
    for t in range(1, 4):
        grad = rng.standard_normal(n).astype(np.float32)
        scalars = rule_scalars.SCALARS[rule](group, t, set())
        kernel(*kernel_args(kernel, np.float32,
                            dict(param=param, grad=grad.copy(), param_copy=copy, **states),
                            scalars, 1.0, {"write_copy": True}))
        kernel(*kernel_args(kernel, np.float32, dict(param=twin, grad=grad, **twin_states),
                            scalars, 1.0, {}))
        np.testing.assert_array_equal(param, twin)   # the copy changes nothing else
        np.testing.assert_array_equal(copy, bf16_bits(param))


@pytest.mark.parametrize("dtype", DTYPES)
def test_asgd_copies_param_into_ax_bitwise_while_mu_is_1(dtype):
    """mu == 1 (before averaging starts) is torch's ax.copy_(param): bitwise, and an
    infinite or NaN ax is overwritten (ax + (q - ax)*1 would round, or give NaN)."""
    rng = np.random.default_rng(4)
    n = 101
    param = rng.standard_normal(n).astype(dtype)
    ax = rng.standard_normal(n).astype(dtype) * 1e3
    ax[:3] = [np.inf, -np.inf, np.nan]
    group = group_for("asgd", {"t0": 5, "lambd": 0.01, "lr": 0.1})
    for t in (1, 2, 7):     # mu = 1/max(1, t - 1 - 5) = 1 through step 7
        scalars = rule_scalars.SCALARS["asgd"](group, t, set())
        assert scalars["mu"] == 1
        grad = rng.standard_normal(n).astype(dtype)
        asgd_kernel(*kernel_args(asgd_kernel, dtype, dict(param=param, grad=grad, ax=ax),
                                 scalars, 1.0, {}))
        np.testing.assert_array_equal(ax, param)
    scalars = rule_scalars.SCALARS["asgd"](group, 8, set())
    assert scalars["mu"] == 0.5
    before = ax.copy()
    asgd_kernel(*kernel_args(asgd_kernel, dtype, dict(param=param, grad=grad, ax=ax),
                             scalars, 1.0, {}))
    np.testing.assert_array_equal(ax, before + (param - before) * dtype(0.5))
