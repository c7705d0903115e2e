"""``python -m fastopt.bench.mixed``: what each timed call does (no timing assertions),
and what it says when DeepSpeed is missing or broken."""

import sys
import types

import numpy as np
import pytest

from fastopt.bench import mixed


@pytest.fixture
def deepspeed_cache():
    """:func:`mixed.deepspeed_note` looks once per process: forget before and after."""
    mixed.deepspeed_note.cache_clear()
    yield
    mixed.deepspeed_note.cache_clear()


@pytest.fixture
def no_deepspeed(monkeypatch, deepspeed_cache):
    """``import deepspeed`` fails here, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)


def test_step_rows_report_every_implementation_with_ratios():
    pytest.importorskip("torch")
    (row,) = mixed.step_rows(sizes=[1000], repeat=1, min_time=0.001)
    seconds = row["seconds"]
    assert list(seconds) == ["fastopt", "ceiling", "torch 3-pass"]
    assert row["size"] == 1000 and row["threads"] >= 1
    for name, value in seconds.items():
        assert value > 0
        assert row["gbps"][name] == pytest.approx(mixed.BYTES[name] * 1000 / value / 1e9)
    assert row["speedups"] == {"torch 3-pass": pytest.approx(
        seconds["torch 3-pass"] / seconds["fastopt"])}
    assert row["of_ceiling"] == pytest.approx(seconds["ceiling"] / seconds["fastopt"])


def test_step_rows_without_torch_time_fastopt_and_the_ceiling():
    (row,) = mixed.step_rows(sizes=[1000], repeat=1, min_time=0.001, torch=False,
                             deepspeed=True)
    assert list(row["seconds"]) == ["fastopt", "ceiling"] and row["speedups"] == {}


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


def test_missing_deepspeed_is_a_note_not_a_failure(no_deepspeed, capsys):
    note = mixed.deepspeed_note()
    assert note.startswith("DeepSpeed is not installed") and "skipped" in note
    assert mixed.deepspeed_version() is None
    with pytest.raises(mixed.cases.Unavailable, match="not installed"):
        mixed.deepspeed_call(10)
    mixed.main(["--sizes", "1e3", "--repeat", "1", "--min-time", "0.001", "--deepspeed"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("DeepSpeed is not installed")
    row = next(line.split() for line in lines if line.lstrip().startswith("1e3"))
    assert row[6] == "-"          # the deepspeed 3-pass column: empty


def test_deepspeed_whose_op_fails_to_build_is_a_note(monkeypatch, deepspeed_cache):
    """DeepSpeed imports, but its op's g++ build fails (DeepSpeedCPUAdam raises, as
    0.19's does, a RuntimeError from the builder's error): the note says so."""
    class BrokenCPUAdam:
        def __init__(self, *args, **kwargs):
            try:
                raise OSError("g++: command not found")
            except OSError as exc:
                raise RuntimeError("DeepSpeedCPUAdam requires the cpu_adam op") from exc

    package = types.ModuleType("deepspeed")
    package.__version__ = "0.0-test"
    ops = types.ModuleType("deepspeed.ops")
    adam = types.ModuleType("deepspeed.ops.adam")
    adam.DeepSpeedCPUAdam = BrokenCPUAdam
    package.ops, ops.adam = ops, adam
    for name, module in (("deepspeed", package), ("deepspeed.ops", ops),
                         ("deepspeed.ops.adam", adam)):
        monkeypatch.setitem(sys.modules, name, module)
    note = mixed.deepspeed_note()
    assert "0.0-test" in note and "did not build" in note
    assert "g++: command not found" in note and "skipped" in note
    (row,) = mixed.step_rows(sizes=[1000], repeat=1, min_time=0.001, torch=False,
                             deepspeed=True)
    assert "deepspeed 3-pass" not in row["seconds"]


def test_deepspeed_sequence_steps_and_copies(deepspeed_cache):
    """Where DeepSpeed runs (its own venv): its three-pass sequence does what it says."""
    if mixed.deepspeed_note() is not None:
        pytest.skip(mixed.deepspeed_note())
    import torch
    call = mixed.deepspeed_call(1000)
    before = call.master.detach().clone()
    call()
    assert not torch.equal(call.master.detach(), before)
    assert torch.equal(call.copy, call.master.detach().to(torch.bfloat16))
