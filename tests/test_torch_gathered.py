"""``fastopt.torch`` steps many gradient tensors in one kernel call
(:mod:`fastopt.kernels.gathered`): each gradient read where autograd put it, the flat
buffers walked in blocks. The results are bitwise those of one kernel call per tensor, for
every elementwise rule, float32/float64 and bf16 params, with gaps (params without a
gradient) and gradients of both kinds (the flat buffer's views and autograd's own)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from cases import MATRIX  # noqa: E402
from torch_models import assert_same_training  # noqa: E402
from fastopt.kernels import config, gathered  # noqa: E402
from fastopt.rules import RULES  # noqa: E402

CASES = [(name, dict(combos[-1], lr=lr)) for name, (lr, combos) in MATRIX.items()
         if not (RULES[name].per_tensor or RULES[name].shaped_state)]
SHAPES = [(40, 30), (30,), (7, 9), (9,), (50, 20)]


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in SHAPES]


def _grads(params, step, skip):
    torch.manual_seed(1000 + step)
    for i, p in enumerate(params):
        p.grad = None if i == skip else torch.randn_like(p)


def _train(name, options, dtype, combined, monkeypatch, steps=6):
    calls = []
    original = gathered.run

    def spy(*args):
        calls.append(args)
        return original(*args)

    with monkeypatch.context() as patch:
        patch.setattr(gathered, "run", spy)
        if combined:   # the models are small: let them take the one-call path
            patch.setattr(config, "PARALLEL_THRESHOLD", 64)
            patch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)
        else:          # or never
            patch.setattr(ft.buckets.Bucket, "_launch", lambda self, *a: None)
        params = _model(dtype)
        opt = getattr(ft, RULES[name].class_name)(params, **options)
        for step in range(steps):
            _grads(params, step, skip=2 if step % 2 else None)   # a gap on odd steps
            if step == 3:   # one gradient a view of the flat buffer, the rest autograd's
                opt.zero_grad(set_to_none=False)
                _grads(params, step, skip=None)
                for p in params:
                    p.grad = p.grad.clone()
                bucket = opt._buckets[0][0]
                bucket.grad_views[1].copy_(params[1].grad)
                params[1].grad = bucket.grad_views[1]
            opt.step()
    return params, opt, calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_one_call_over_many_gradients_is_bitwise_one_call_per_tensor(case, dtype,
                                                                     monkeypatch):
    name, options = case
    want, want_opt, no_calls = _train(name, options, dtype, False, monkeypatch)
    got, got_opt, calls = _train(name, options, dtype, True, monkeypatch)
    assert not no_calls and len(calls) >= 4   # the one-call path ran (and only there)
    assert_same_training(got, got_opt, want, want_opt)


def test_block_table_covers_exactly_the_runs():
    table = gathered.block_table([0, 100, 50_000], [70, 40_100, 50_001], block=16_384)
    covered = np.zeros(50_001, bool)
    for r, lo, hi, start in table:
        assert [0, 100, 50_000][r] == start and 0 < hi - lo <= 16_384
        assert not covered[lo:hi].any()
        covered[lo:hi] = True
    assert covered.sum() == 70 + 40_000 + 1


def test_per_tensor_rules_keep_one_call_per_run_and_bf16_state_takes_block_keys(
        monkeypatch):
    """LAMB reduces over whole tensors: it never takes the one-call path. bf16 state
    always does (even for one small run), with the noise key's position, so that each
    block rounds with its own key (``halves.block_key``) whatever the blocking."""
    calls = []
    monkeypatch.setattr(gathered, "run", lambda *a: calls.append(a))
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 64)
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW", 1)
    params = _model(torch.float32)
    opt = ft.LAMB(params)
    _grads(params, 0, skip=None)
    opt.step()
    assert calls == []
    params = _model(torch.float32)
    opt = ft.Adam(params, state_dtype="bfloat16")
    _grads(params, 0, skip=None)
    opt.step()
    (call,) = calls
    noise = call[-1]
    assert RULES["adam"].binding.scalars[noise] == "noise_key"
    keys = call[4][0]                       # the runs' keys lead the arguments
    assert keys.dtype == np.int64 and len(keys) == len(params)
