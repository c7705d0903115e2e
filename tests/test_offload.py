"""``fastopt.offload.adam_step``: the one-pass mixed-precision step for offload engines.

Over 25 steps, master and state must be bitwise what ``fastopt.Adam`` / ``AdamW`` give
on the widened gradient (``grad_scale=loss_scale``), and the copy bitwise torch's cast of
the master, for every gradient format, with and without the copy, at a size that runs
the serial twin and one that runs the parallel twin; every refusal leaves every buffer
as it was.
"""

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
from fastopt.kernels import config
from fastopt.offload import adam_step
from fastopt.precision import HALF_FORMATS

NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
                "float16": np.float16}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}
SIZES = [1000, (1 << 17) + 3]       # serial twin; parallel twin
STEPS = 25
HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
LOSS_SCALE = 1024.0


def grads_for(n, fmt, steps=STEPS, seed=0):
    """Per step: the gradient in ``fmt`` (times the loss scale, as a model's would be)."""
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        return [(rng.standard_normal(n) * 0.1 * LOSS_SCALE).astype(NUMPY_DTYPES[fmt])
                for _ in range(steps)]


def torch_cast(master, fmt):
    return torch.from_numpy(master).to(TORCH_DTYPES[fmt]).float().numpy()


def assert_bitwise(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def reference_run(master, grads, adamw):
    """``fastopt.Adam``/``AdamW`` in float32 on the widened gradients."""
    param = master.copy()
    cls = fastopt.AdamW if adamw else fastopt.Adam
    opt = cls([param], grad_scale=LOSS_SCALE, **HYPER)
    for grad in grads:
        opt.step([grad.astype(np.float32)])
    state = opt.state_dict()["state"][0]
    return param, state["exp_avg"], state["exp_avg_sq"]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("adamw", [False, True])
@pytest.mark.parametrize("copy_fmt", [None, *HALF_FORMATS])
@pytest.mark.parametrize("grad_fmt", ["float32", *HALF_FORMATS])
def test_matches_fastopt_adam_on_widened_gradient(grad_fmt, copy_fmt, adamw, n):
    master = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    grads = grads_for(n, grad_fmt)
    want = reference_run(master, grads, adamw)
    exp_avg, exp_avg_sq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    out = None if copy_fmt is None else np.zeros(n, NUMPY_DTYPES[copy_fmt])
    for t, grad in enumerate(grads, start=1):
        adam_step(master, grad, exp_avg, exp_avg_sq, step=t, adamw=adamw,
                  loss_scale=LOSS_SCALE, out=out, **HYPER)
        if out is not None:
            assert_bitwise(out.astype(np.float32), torch_cast(master, copy_fmt))
    for got, expected in zip((master, exp_avg, exp_avg_sq), want):
        assert_bitwise(got, expected)


def test_clip_factor_multiplies_after_unscaling():
    """``clip_factor=0.5, loss_scale=1024`` is ``fastopt.Adam(grad_scale=2048)`` (exact)."""
    n = 1000
    master = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    grads = grads_for(n, "bfloat16", steps=3)
    param = master.copy()
    opt = fastopt.Adam([param], grad_scale=2 * LOSS_SCALE, **HYPER)
    exp_avg, exp_avg_sq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t, grad in enumerate(grads, start=1):
        opt.step([grad.astype(np.float32)])
        adam_step(master, grad, exp_avg, exp_avg_sq, step=t, loss_scale=LOSS_SCALE,
                  clip_factor=0.5, **HYPER)
    assert_bitwise(master, param)


@pytest.mark.parametrize("copy_fmt", HALF_FORMATS)
def test_torch_tensors_are_updated_in_place(copy_fmt):
    """Torch tensors in, through zero-copy views: the same bits as the NumPy call."""
    n = 5000
    master = torch.randn(n, generator=torch.Generator().manual_seed(0))
    grad = (torch.randn(n) * 0.1).to(torch.bfloat16)
    exp_avg, exp_avg_sq = torch.zeros(n), torch.zeros(n)
    out = torch.zeros(n, dtype=TORCH_DTYPES[copy_fmt])
    np_master, np_grad = master.numpy().copy(), grad.float().numpy().astype(ml_dtypes.bfloat16)
    np_m, np_v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    np_out = np.zeros(n, NUMPY_DTYPES[copy_fmt])
    for t in (1, 2):
        adam_step(master, grad, exp_avg, exp_avg_sq, step=t, out=out, **HYPER)
        adam_step(np_master, np_grad, np_m, np_v, step=t, out=np_out, **HYPER)
    assert_bitwise(master.numpy(), np_master)
    assert_bitwise(exp_avg_sq.numpy(), np_v)
    assert_bitwise(out.float().numpy(), np_out.astype(np.float32))
    assert_bitwise(out.float().numpy(), master.to(TORCH_DTYPES[copy_fmt]).float().numpy())


@pytest.mark.parametrize("copy_fmt", HALF_FORMATS)
def test_nan_and_inf_propagate_as_torch_casts(copy_fmt):
    n = 1000
    master = np.ones(n, np.float32)
    master[5] = np.finfo(np.float32).max              # rounds to Inf in either half format
    grad = np.full(n, 0.1, ml_dtypes.bfloat16)
    grad[:2] = [np.inf, np.nan]
    exp_avg, exp_avg_sq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    out = np.zeros(n, NUMPY_DTYPES[copy_fmt])
    adam_step(master, grad, exp_avg, exp_avg_sq, step=1, out=out, lr=1e-3)
    assert np.isnan(master[:2]).all() and np.isnan(exp_avg_sq[1])
    assert np.isinf(exp_avg_sq[0])
    copy = out.astype(np.float32)
    assert np.isnan(copy[:2]).all() and np.isinf(copy[5])
    assert_bitwise(copy, torch_cast(master, copy_fmt))


def test_serial_and_parallel_twins_agree_bitwise():
    n = SIZES[1]
    results = []
    for serial in (True, False):
        master = np.random.default_rng(3).standard_normal(n).astype(np.float32)
        exp_avg, exp_avg_sq = np.zeros(n, np.float32), np.zeros(n, np.float32)
        out = np.zeros(n, ml_dtypes.bfloat16)
        config.set_serial(serial)
        try:
            for t, grad in enumerate(grads_for(n, "bfloat16", steps=3), start=1):
                adam_step(master, grad, exp_avg, exp_avg_sq, step=t, out=out,
                          loss_scale=LOSS_SCALE, **HYPER)
        finally:
            config.set_serial(False)
        results.append((master, exp_avg, exp_avg_sq, out.astype(np.float32)))
    for serial_result, parallel_result in zip(*results):
        assert_bitwise(serial_result, parallel_result)


# --- refusals: raised before anything is written ---------------------------------------

def _buffers(n=100):
    rng = np.random.default_rng(4)
    return dict(master=rng.standard_normal(n).astype(np.float32),
                grad=rng.standard_normal(n).astype(ml_dtypes.bfloat16),
                exp_avg=rng.standard_normal(n).astype(np.float32),
                exp_avg_sq=rng.random(n).astype(np.float32),
                out=np.zeros(n, ml_dtypes.bfloat16))


def _read_only(array):
    array.flags.writeable = False
    return array


BAD_BUFFERS = [
    ("master", lambda b: b["master"].astype(np.float64), TypeError),
    ("master", lambda b: b["master"].astype(ml_dtypes.bfloat16), TypeError),
    ("master", lambda b: list(b["master"]), TypeError),
    ("master", lambda b: _read_only(b["master"]), ValueError),
    ("grad", lambda b: b["grad"].astype(np.float64), TypeError),
    ("grad", lambda b: b["grad"].astype(np.int16), TypeError),
    ("grad", lambda b: b["grad"][:50], ValueError),
    ("grad", lambda b: np.repeat(b["grad"], 2)[::2], ValueError),
    ("exp_avg", lambda b: b["exp_avg"].astype(np.float16), TypeError),
    ("exp_avg", lambda b: b["exp_avg"].reshape(10, 10), ValueError),
    ("exp_avg_sq", lambda b: _read_only(b["exp_avg_sq"]), ValueError),
    ("exp_avg_sq", lambda b: b["exp_avg"], ValueError),              # aliases exp_avg
    ("out", lambda b: b["out"].astype(np.float32), TypeError),
    ("out", lambda b: np.zeros(99, ml_dtypes.bfloat16), ValueError),
    ("out", lambda b: b["master"].view(np.float16)[:100], ValueError),  # inside master
    ("grad", lambda b: torch.from_numpy(b["master"]).double(), TypeError),
]

BAD_SCALARS = [
    ("step", 0, ValueError), ("step", 1.5, ValueError), ("step", True, ValueError),
    ("lr", -1.0, ValueError), ("lr", "0.1", TypeError), ("lr", lambda t: 0.1, TypeError),
    ("betas", (0.9, 1.0), ValueError), ("betas", 0.9, TypeError),
    ("eps", -1e-8, ValueError), ("weight_decay", float("nan"), ValueError),
    ("adamw", 1, TypeError),
    ("loss_scale", 0.0, ValueError), ("loss_scale", float("inf"), ValueError),
    ("loss_scale", float("nan"), ValueError), ("loss_scale", None, TypeError),
    ("clip_factor", -0.5, ValueError), ("clip_factor", float("inf"), ValueError),
]


def _call(buffers, **overrides):
    args = dict(step=3, lr=1e-3, **buffers)
    args.update(overrides)
    master, grad = args.pop("master"), args.pop("grad")
    exp_avg, exp_avg_sq = args.pop("exp_avg"), args.pop("exp_avg_sq")
    adam_step(master, grad, exp_avg, exp_avg_sq, **args)


def _assert_unchanged(buffers, before):
    for name, array in buffers.items():
        np.testing.assert_array_equal(np.asarray(array).view(np.uint8),
                                      before[name].view(np.uint8), err_msg=name)


@pytest.mark.parametrize("name, make, error", BAD_BUFFERS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_BUFFERS)])
def test_bad_buffer_refused_before_any_write(name, make, error):
    buffers = _buffers()
    bad = make(buffers)
    before = {k: v.copy() for k, v in buffers.items()}
    with pytest.raises(error, match=name):
        _call(buffers, **{name: bad})
    _assert_unchanged(buffers, before)


@pytest.mark.parametrize("name, value, error", BAD_SCALARS,
                         ids=[f"{n}-{v!r}" for n, v, _ in BAD_SCALARS])
def test_bad_scalar_refused_before_any_write(name, value, error):
    buffers = _buffers()
    before = {k: v.copy() for k, v in buffers.items()}
    with pytest.raises(error, match="beta" if name == "betas" else name):  # torch's words
        _call(buffers, **{name: value})
    _assert_unchanged(buffers, before)


def test_valid_call_writes_every_output():
    """The refusal tests' buffers are accepted as they are (so each refusal is caused by
    its one bad argument), and a step changes master, state and copy."""
    buffers = _buffers()
    before = {k: v.copy() for k, v in buffers.items()}
    _call(buffers)
    for name in ("master", "exp_avg", "exp_avg_sq", "out"):
        assert not np.array_equal(buffers[name], before[name]), name
    np.testing.assert_array_equal(buffers["grad"].view(np.uint16),
                                  before["grad"].view(np.uint16))
