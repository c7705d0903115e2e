"""``python -m fastopt.bench.mixed``: what each timed call does (no timing assertions)."""

import numpy as np
import pytest

from fastopt.bench import mixed


def test_run_reports_every_implementation_with_ratios():
    rows = mixed.run(sizes=[1000], repeat=1, min_time=0.001)
    assert [r[1] for r in rows] == ["fastopt", "ceiling", "torch 3-pass"]
    times = {name: seconds for _, name, seconds, _, _ in rows}
    for size, name, seconds, gbps, ratio in rows:
        assert size == 1000 and seconds > 0
        assert gbps == pytest.approx(mixed.BYTES[name] * size / seconds / 1e9)
        assert ratio == pytest.approx(seconds / times["fastopt"])


def test_ceiling_kernel_moves_every_buffer_without_arithmetic():
    n = 1000
    p, m, v = (np.full(n, k, np.float32) for k in (1.0, 2.0, 3.0))
    grad, out = np.arange(n, dtype=np.uint16), np.zeros(n, np.uint16)
    mixed.no_arithmetic(p, grad, m, v, out)
    assert (p == 2).all() and (m == 3).all() and (v == 1).all()
    np.testing.assert_array_equal(out, grad)


def test_torch_sequence_unscales_steps_and_copies():
    import torch
    call = mixed.torch_call(1000)
    master, copy = call.master, call.copy
    before = master.detach().clone()
    call()
    assert not torch.equal(master.detach(), before)
    assert torch.equal(copy, master.detach().to(torch.bfloat16))


def test_main_prints_the_table(capsys):
    mixed.main(["--sizes", "1e3", "--repeat", "1", "--min-time", "0.001"])
    out = capsys.readouterr().out
    assert "fastopt" in out and "ceiling" in out and "torch 3-pass" in out
