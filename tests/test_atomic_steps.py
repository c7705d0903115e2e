"""Steps are atomic (issue 12, classes 2 and 3): whatever can fail fails before the first
write, so a refused step changes nothing anywhere; and views are only ever merged into
one segment when they are a slice of their owner, so a step never writes other bytes."""

import warnings

import numpy as np
import pytest

import fastopt
from cases import RULES, assert_unchanged, snapshot


# --- class 2: views at a byte offset that is not a whole number of elements ----------

def unaligned_views(dtype, sizes, offset=1):
    """Consecutive views of ``dtype`` starting ``offset`` bytes into a zeroed owner of
    the same dtype (so the owner, the dtype and the adjacency all look mergeable)."""
    itemsize = np.dtype(dtype).itemsize
    owner = np.zeros(sum(sizes) + 2, dtype)
    raw = owner.view(np.uint8)
    views, start = [], offset
    for size in sizes:
        views.append(raw[start:start + size * itemsize].view(dtype))
        start += size * itemsize
    return owner, views


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", list(RULES))
def test_params_at_a_byte_offset_update_exactly_their_own_bytes(rule, dtype):
    owner, params = unaligned_views(dtype, [5, 3])
    for i, p in enumerate(params):
        p[...] = np.linspace(1, 2, p.size) * (i + 1)
    start = [p.copy() for p in params]
    raw_before = owner.view(np.uint8).copy()
    grads = [np.linspace(-1, 1, p.size).astype(dtype) for p in params]
    cls, _, lr = RULES[rule]
    cls(params, lr=lr).step(grads)
    separate = [p.copy() for p in start]
    cls(separate, lr=lr).step(grads)
    for got, want in zip(params, separate):
        np.testing.assert_array_equal(got, want)
    raw = owner.view(np.uint8)
    stop = 1 + sum(p.nbytes for p in params)
    np.testing.assert_array_equal(raw[:1], raw_before[:1])          # bytes before and
    np.testing.assert_array_equal(raw[stop:], raw_before[stop:])    # after the views


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grads_at_a_byte_offset_are_read_as_they_are(dtype):
    params = [np.ones(5, dtype), np.ones(3, dtype)]
    flat = fastopt.flatten(params)          # one segment: its gradient view is looked up
    _, grads = unaligned_views(dtype, [5, 3])
    grads[0][...], grads[1][...] = 2.0, 3.0
    fastopt.SGD(flat, lr=0.5).step(grads)
    np.testing.assert_array_equal(flat.params[0], 1 - 0.5 * 2.0)
    np.testing.assert_array_equal(flat.params[1], 1 - 0.5 * 3.0)


def test_views_at_element_offsets_still_make_one_segment():
    flat = fastopt.flatten([np.ones(3), np.ones(4)])
    owner_views = [flat.buffers[0].param[1:3], flat.buffers[0].param[3:7]]
    opt = fastopt.SGD(owner_views, lr=0.1)
    assert len(opt._segments[0]) == 1


# --- class 3: a refused step changes nothing ------------------------------------------

def two_groups(rule, first_dtype=np.float64, second_dtype=np.float32, **options):
    """An optimizer of ``rule`` over a group of ``first_dtype`` and one of
    ``second_dtype`` params, stepped once; its params and gradients."""
    params = [np.linspace(0.5, 1, 3).astype(first_dtype),
              np.linspace(-1, 1, 4).reshape(2, 2).astype(second_dtype)]
    cls, _, lr = RULES[rule]
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], lr=lr, **options)
    grads = [np.full(3, 0.5, first_dtype), np.full((2, 2), -0.25, second_dtype)]
    opt.step(grads)
    return opt, params, grads


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix's own
@pytest.mark.parametrize("rule", list(RULES))
def test_matrix_gradients_step_like_arrays(rule):
    """np.matrix is an ndarray whose reshape(-1) stays 2-D: it reached the kernel as a
    2-D array (Numba TypingError, after the first group was updated)."""
    opt, params, grads = two_groups(rule, second_dtype=np.float64)
    twin, twin_params, _ = two_groups(rule, second_dtype=np.float64)
    opt.step([grads[0], np.matrix(grads[1])])
    twin.step(grads)
    for got, want in zip(params, twin_params):
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_params_are_updated_in_place():
    param = np.matrix(np.ones((2, 2)))
    fastopt.Adam([param], lr=0.1).step([np.ones((2, 2))])
    want = [np.ones((2, 2))]
    fastopt.Adam(want, lr=0.1).step([np.ones((2, 2))])
    np.testing.assert_array_equal(np.asarray(param), want[0])


def test_masked_arrays_are_refused():
    masked = np.ma.masked_array(np.ones(3), mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"params\[0\] is a masked array"):
        fastopt.SGD([masked])
    params = [np.ones(3)]
    opt = fastopt.SGD(params, lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] is a masked array"):
        opt.step([masked])
    np.testing.assert_array_equal(params[0], 1.0)


@pytest.mark.parametrize("rule", list(RULES))
def test_read_only_flatten_gradient_with_zero_grad_is_refused_before_writing(rule):
    """The flatten() path skips the gradient checks; with zero_grad=True a read-only
    gradient buffer raised (TypingError) after the other dtype's buffer was stepped."""
    flat = fastopt.flatten([np.linspace(0, 1, 3), np.ones(2, np.float32)])
    flat.buffers[1].grad.flags.writeable = False      # before the optimizer takes views
    cls, _, lr = RULES[rule]
    opt = cls(flat, lr=lr)
    flat.grads[0][...] = 0.5
    opt.step()
    before, grads_before = snapshot(opt, flat.params), [g.copy() for g in flat.grads]
    with pytest.raises(ValueError, match=r"grads\[1\] is read-only.*zero_grad"):
        opt.step(zero_grad=True)
    assert_unchanged(opt, flat.params, before)
    for g, old in zip(flat.grads, grads_before):
        np.testing.assert_array_equal(g, old)      # nothing zeroed either
    opt.step()                                     # without zero_grad it steps


FLOAT32_OVERFLOWS = [   # (rule, options at construction, options set later, the name)
    ("sgd", {}, {"lr": 1e39}, "lr"),
    ("sgd", {"momentum": 0.9}, {"dampening": -1e39}, r"dampening: 1 - dampening"),
    ("adagrad", {}, {"eps": 1e39}, "eps"),
    ("rmsprop", {}, {"weight_decay": 1e39}, "weight_decay"),
    ("adam", {}, {"lr": 1e38}, r"lr: lr / \(1 - beta1\*\*t\)"),   # 5.3e38 at t = 2
    ("adamw", {}, {"lr": 1e20, "weight_decay": 1e20}, r"lr: 1 - lr \* weight_decay"),
    ("adam", {}, {"grad_scale": 1e-39}, r"grad_scale: 1 / grad_scale"),
]


@pytest.mark.parametrize("warnings_as_errors", [False, True], ids=["default", "W-error"])
@pytest.mark.parametrize("rule, options, later, name", FLOAT32_OVERFLOWS,
                         ids=[f"{r}-{list(o)}" for r, _, o, _ in FLOAT32_OVERFLOWS])
def test_float32_overflow_of_a_scalar_is_a_value_error_naming_it(rule, options, later, name,
                                                                  warnings_as_errors):
    """A value that is fine in float64 but beyond float32 used to become Inf in the
    float32 kernel silently, or, under -W error, raise RuntimeWarning after the float64
    group was updated. Now: ValueError naming the hyperparameter, nothing written (not
    ``last_grad_norm`` either), no warning."""
    opt, params, grads = two_groups(rule, clip_grad_norm=1e300, **options)
    before, norm = snapshot(opt, params), opt.last_grad_norm
    for key, value in later.items():
        if key == "grad_scale":
            opt.grad_scale = value
        else:
            for group in opt.param_groups:     # the float64 group takes it fine
                group[key] = value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error" if warnings_as_errors else "always")
        with pytest.raises(ValueError, match=f"Invalid {name}.*float32"):
            opt.step([g * 2 for g in grads])
    assert not caught
    assert_unchanged(opt, params, before)
    assert opt.last_grad_norm == norm


def test_initial_state_beyond_float32_is_a_value_error_on_the_first_step():
    params = [np.ones(3), np.ones(2, np.float32)]
    opt = fastopt.Adagrad([{"params": params[:1]}, {"params": params[1:]}],
                          initial_accumulator_value=1e39)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="Invalid initial sum: 1e[+]39.*float32"):
            opt.step([np.ones(3), np.ones(2, np.float32)])
    assert opt.state_dict()["state"] == {}                 # no step counted, no state
    np.testing.assert_array_equal(params[0], 1.0)


def test_float32_overflow_in_fastopt_torch_is_a_value_error_and_changes_nothing():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64)),
              torch.nn.Parameter(torch.ones(2, dtype=torch.float32))]
    opt = ft.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state_dict()["state"][1].items()}
    for group in opt.param_groups:
        group["lr"] = 1e38                  # step_size = lr / (1 - 0.9**2) > float32 max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"Invalid lr: lr / \(1 - beta1\*\*t\).*float32"):
            opt.step()
    for p, old in zip(params, before):
        assert torch.equal(p.detach(), old)
    for key, value in opt.state_dict()["state"][1].items():
        assert torch.equal(value, state[key]), key


def test_refused_step_leaves_the_last_gradients_for_zero_grad():
    """``zero_grad()`` zeroes the gradients of the last step: a refused step's are not."""
    opt, params, grads = two_groups("sgd")
    bad = [np.ones(3), np.ones((2, 2), np.float32)]
    opt.param_groups[1]["lr"] = 1e39
    with pytest.raises(ValueError, match="Invalid lr"):
        opt.step(bad)
    opt.zero_grad()
    assert all((g == 0).all() for g in grads)
    assert all((g == 1).all() for g in bad)


HUGE = 10 ** 400
HUGE_CASES = [
    ("sgd", "lr", HUGE), ("sgd", "momentum", HUGE), ("adagrad", "lr_decay", HUGE),
    ("rmsprop", "eps", HUGE), ("adam", "betas", (0.9, HUGE)), ("adamw", "weight_decay", HUGE),
    ("sgd", "lr", lambda step: HUGE),
]


@pytest.mark.parametrize("rule, key, value", HUGE_CASES, ids=[
    f"{rule}-{key}{'-schedule' if callable(v) else ''}" for rule, key, v in HUGE_CASES])
def test_huge_int_hyperparameter_is_a_value_error_at_construction_and_step(rule, key, value):
    cls, _, lr = RULES[rule]
    name = "beta parameter at index 1" if key == "betas" else "lr" if callable(value) else key
    if not callable(value):
        with pytest.raises(ValueError, match=f"Invalid {name}: an integer of about 40[01] digits"):
            cls([np.ones(2)], **{key: value})
    opt, params, grads = two_groups(rule)
    before = snapshot(opt, params)
    opt.param_groups[1][key] = value
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        opt.step(grads)
    assert_unchanged(opt, params, before)


def test_numpy_scalar_hyperparameters_compute_in_float64():
    """np.float32 betas made the bias corrections float32 arithmetic (NumPy keeps a
    float32 scalar float32 against a Python float): the same values as Python floats
    must give the same bits."""
    betas32, lr32 = (np.float32(0.9), np.float32(0.999)), np.float32(0.01)
    as_python = dict(betas=tuple(map(float, betas32)), lr=float(lr32))
    results = []
    for options in (dict(betas=betas32, lr=lr32), as_python):
        params = [np.linspace(-1, 1, 7)]
        opt = fastopt.Adam(params, **options)
        for step in range(5):
            opt.step([np.cos(np.arange(7.0) + step)])
        results.append(params[0])
    np.testing.assert_array_equal(*results)


def test_numpy_scalar_that_overflows_float32_is_refused():
    """np.float32(3e38) / (1 - 0.9) overflowed in NumPy's float32 arithmetic to an Inf
    the overflow check could not tell from a deliberate one."""
    opt, params, grads = two_groups("adam")
    before = snapshot(opt, params)
    for group in opt.param_groups:
        group["lr"] = np.float32(3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"Invalid lr: lr / \(1 - beta1\*\*t\)"):
            opt.step(grads)
    assert_unchanged(opt, params, before)


def test_fastopt_torch_initial_state_beyond_float32_refused_before_rebinding():
    """fastopt.torch's Adagrad fills its state at construction: a value beyond float32
    raised torch's RuntimeError after the group was added and its params rebound."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft

    p = torch.nn.Parameter(torch.ones(2))
    storage = p.data_ptr()
    with pytest.raises(ValueError, match="Invalid initial sum: 1e[+]39.*float32"):
        ft.Adagrad([p], initial_accumulator_value=1e39)
    assert p.data_ptr() == storage
    opt = ft.Adagrad([torch.nn.Parameter(torch.ones(3, dtype=torch.float64))],
                     initial_accumulator_value=1e39)                 # float64 takes it
    q = torch.nn.Parameter(torch.ones(2))
    storage = q.data_ptr()
    with pytest.raises(ValueError, match="Invalid initial sum"):
        opt.add_param_group({"params": [q]})
    assert len(opt.param_groups) == 1 and q.data_ptr() == storage
