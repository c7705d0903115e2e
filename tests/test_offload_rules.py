"""``fastopt.offload.step``: the one-pass offload step for every rule of the registry.

For each rule of the test matrix (its last option combination), 12 steps over a float32
master with bfloat16 gradients and a bfloat16 copy: master and state bitwise what the
rule's NumPy optimizer gives on the widened gradients with ``grad_scale=loss_scale``, and
the copy bitwise torch's cast of the master; the same over a float64 master with float64
gradients. Refusals change nothing.
"""

import ml_dtypes
import numpy as np
import pytest
import torch

import fastopt
from cases import MATRIX
from fastopt import offload
from fastopt.rules import RULES

LOSS_SCALE = 256.0
STEPS = 12
CASES = [(name, dict(combos[-1], lr=lr)) for name, (lr, combos) in MATRIX.items()]


def problem(n, dtype, grad_dtype, seed=0):
    rng = np.random.default_rng(seed)
    master = rng.standard_normal(n).astype(dtype)
    grads = [(rng.standard_normal(n) * 0.1 * LOSS_SCALE).astype(grad_dtype)
             for _ in range(STEPS)]
    return master, grads


@pytest.mark.parametrize("n", [1000, (1 << 17) + 3])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_rule_matches_its_optimizer_on_widened_gradients(case, n):
    name, options = case
    master, grads = problem(n, np.float32, ml_dtypes.bfloat16)
    param = master.copy()
    opt = fastopt.optim.CLASSES[RULES[name].class_name]([param], grad_scale=LOSS_SCALE,
                                                       **options)
    state = offload.init_state(name, master, **options)
    copy = np.zeros(n, ml_dtypes.bfloat16)
    for t, grad in enumerate(grads, start=1):
        offload.step(name, master, grad, state, step=t, out=copy, loss_scale=LOSS_SCALE,
                     **options)
        opt.step([grad.astype(np.float32)])
        np.testing.assert_array_equal(master.view(np.uint32), param.view(np.uint32),
                                      err_msg=f"step {t}")
    saved = opt.state_dict()["state"][0]
    for key, buffer in state.items():
        np.testing.assert_array_equal(buffer, saved[key], err_msg=key)
    want = torch.from_numpy(master).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(copy.view(np.int16), want)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float64_master(case):
    name, options = case
    master, grads = problem(257, np.float64, np.float64)
    param = master.copy()
    opt = fastopt.optim.CLASSES[RULES[name].class_name]([param], **options)
    state = offload.init_state(name, master, **options)
    for t, grad in enumerate(grads, start=1):
        offload.step(name, master, grad, state, step=t, **options)
        opt.step([grad])
    np.testing.assert_array_equal(master, param)


def _buffers():
    master, (grad, *_) = problem(64, np.float32, ml_dtypes.bfloat16)
    return master, grad, offload.init_state("adam", master, amsgrad=True)


REFUSALS = [
    (dict(rule="nope"), ValueError, "rule"),
    (dict(betas=(0.9, 1.5)), ValueError, "beta"),
    (dict(momentum=0.9), TypeError, "momentum"),
    (dict(state="missing"), ValueError, "max_exp_avg_sq"),
    (dict(state="float64"), TypeError, "exp_avg"),
    (dict(state="extra"), ValueError, "state must hold"),
    (dict(step=0), ValueError, "step"),
    (dict(loss_scale=0.0), ValueError, "loss_scale"),
    (dict(lr=lambda t: 0.1), TypeError, "lr"),
    (dict(out="float32"), TypeError, "out"),
]


@pytest.mark.parametrize("bad, error, words", REFUSALS,
                         ids=[f"{next(iter(b))}-{i}" for i, (b, _, _) in enumerate(REFUSALS)])
def test_refusals_write_nothing(bad, error, words):
    master, grad, state = _buffers()
    args = dict(rule="adam", step=1, amsgrad=True, out=None)
    args.update(bad)
    if args.get("state") == "missing":
        state.pop("max_exp_avg_sq")
    elif args.get("state") == "float64":
        state["exp_avg"] = state["exp_avg"].astype(np.float64)
    elif args.get("state") == "extra":
        state["momentum_buffer"] = np.zeros_like(master)
    args.pop("state", None)
    if args.get("out") == "float32":
        args["out"] = np.zeros_like(master)
    before = [master.copy(), *(b.copy() for b in state.values())]
    with pytest.raises(error, match=words):
        offload.step(args.pop("rule"), master, grad, state, **args)
    for a, b in zip([master, *state.values()], before):
        np.testing.assert_array_equal(a, b)


def test_half_gradient_needs_a_float32_master():
    master = np.zeros(8)
    grad = np.zeros(8, ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="grad"):
        offload.step("sgd", master, grad, {}, step=1)


def test_adafactor_master_of_a_matrix_keeps_factored_state():
    """A per-tensor rule takes the master as one tensor of its shape: Adafactor over a
    (64, 48) master keeps row_var (64, 1) and col_var (1, 48), and steps bitwise as
    ``fastopt.Adafactor`` on that matrix."""
    rng = np.random.default_rng(3)
    master = rng.standard_normal((64, 48)).astype(np.float32)
    param = master.copy()
    opt = fastopt.Adafactor([param], lr=0.01)
    state = offload.init_state("adafactor", master, lr=0.01)
    assert {k: v.shape for k, v in state.items()} == {"row_var": (64, 1), "col_var": (1, 48)}
    for t in range(1, 6):
        grad = rng.standard_normal((64, 48)).astype(np.float32)
        offload.step("adafactor", master, grad, state, step=t, lr=0.01)
        opt.step([grad])
        np.testing.assert_array_equal(master, param)
    saved = opt.state_dict()["state"][0]
    for key, buffer in state.items():
        np.testing.assert_array_equal(buffer, saved[key], err_msg=key)


LOW_PRECISION = [case for case in CASES if RULES[case[0]].low_precision_state]


@pytest.mark.parametrize("case", LOW_PRECISION, ids=[c[0] for c in LOW_PRECISION])
def test_bf16_state_matches_its_optimizer_bitwise(case):
    """With ``state_dtype="bfloat16"`` (bf16 state made by ``init_state``) the offload
    step rounds with the same bits as the NumPy optimizer's one segment (stream 0)."""
    name, options = case
    options = dict(options, state_dtype="bfloat16")
    master, grads = problem(3001, np.float32, ml_dtypes.bfloat16)
    param = master.copy()
    opt = fastopt.optim.CLASSES[RULES[name].class_name]([param], grad_scale=LOSS_SCALE,
                                                       **options)
    state = offload.init_state(name, master, **options)
    assert all(b.dtype == ml_dtypes.bfloat16 for b in state.values())
    for t, grad in enumerate(grads, start=1):
        offload.step(name, master, grad, state, step=t, loss_scale=LOSS_SCALE, **options)
        opt.step([grad.astype(np.float32)])
        np.testing.assert_array_equal(master, param, err_msg=f"step {t}")
    saved = opt.state_dict()["state"][0]
    for key, buffer in state.items():
        np.testing.assert_array_equal(buffer.view(np.uint16), saved[key].view(np.uint16))


def test_adam_step_takes_bf16_state_and_streams_differ():
    master, grads = problem(5000, np.float32, ml_dtypes.bfloat16)
    runs = []
    for stream in (0, 0, 1):
        m = master.copy()
        exp_avg = np.zeros(m.size, ml_dtypes.bfloat16)
        exp_avg_sq = np.zeros(m.size, ml_dtypes.bfloat16)
        for t, grad in enumerate(grads[:3], start=1):
            offload.adam_step(m, grad, exp_avg, exp_avg_sq, step=t, lr=1e-3,
                              loss_scale=LOSS_SCALE, stream=stream)
        runs.append(exp_avg_sq.view(np.uint16).copy())
    np.testing.assert_array_equal(runs[0], runs[1])          # deterministic
    assert np.count_nonzero(runs[0] != runs[2]) > 100        # another stream, other bits
    with pytest.raises(TypeError, match="exp_avg_sq"):       # mixed state formats
        offload.adam_step(master.copy(), grads[0], np.zeros(5000, ml_dtypes.bfloat16),
                          np.zeros(5000, np.float32), step=1, lr=1e-3)


def test_a_stream_steps_from_one_thread_at_a_time_and_times_its_loop():
    """Each stream has its optimizer-like twin choice (fastopt.threads.StepTwins): a call
    while another is inside the same stream is refused with nothing written; another
    stream is free; a buffer large enough for the parallel twin counts its steps."""
    master, (grad, *_) = problem(1 << 17, np.float32, ml_dtypes.bfloat16)
    state = offload.init_state("adam", master)
    offload.step("adam", master, grad, state, step=1, stream=41)
    twins = offload._TWINS[41]
    assert twins.steps == 1
    before = master.copy()
    twins._busy.acquire()            # another thread is inside a call on stream 41
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            offload.step("adam", master, grad, state, step=2, stream=41)
        np.testing.assert_array_equal(master, before)
        offload.step("adam", master, grad, state, step=2, stream=42)   # another stream
    finally:
        twins._busy.release()
    assert not np.array_equal(master, before)
