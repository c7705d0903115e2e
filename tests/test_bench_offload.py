"""The offload loop benchmark (``fastopt bench --mixed``, :mod:`fastopt.bench.offload_loop`):
the fastopt loop trains, with the model's bf16 params bitwise the bf16 copy of the master
after every iteration; the baselines' loops do the same; the command's flags parse, run
at tiny sizes and note a missing DeepSpeed. No timing assertions."""

import json
import sys

import pytest

from fastopt.bench import loops, mixed, offload_loop
from fastopt.cli import main

torch = pytest.importorskip("torch")

TINY = dict(sizes=(16, 32, 4), batch=8)
QUICK = ["--repeat", "1", "--min-time", "0.002"]


def _as_params(loop, flat):
    """``flat`` split and shaped as the model's params."""
    numels = [p.numel() for p in loop.params]
    return [view.view(p.shape) for view, p in zip(flat.split(numels), loop.params)]


def _bits(tensor):
    return tensor.view(torch.int16)


@pytest.mark.parametrize("step", ["fastopt", "torch 3-pass", "deepspeed 3-pass"])
def test_loop_trains_and_params_are_the_masters_bf16_copy(step):
    if step == "deepspeed 3-pass" and mixed.deepspeed_note() is not None:
        pytest.skip(mixed.deepspeed_note())
    loop = offload_loop.OffloadLoop(step, lr=1e-2, **TINY)
    assert all(p.dtype == torch.bfloat16 for p in loop.params)
    losses = []
    for _ in range(25):
        master_before = loop.master.clone()
        loop()
        losses.append(loop.loss.item())
        assert not torch.equal(loop.master, master_before)   # the master itself moves
        rounded = loop.master.to(torch.bfloat16)
        assert torch.equal(_bits(loop.copy), _bits(rounded))
        for param, expected in zip(loop.params, _as_params(loop, rounded)):
            assert torch.equal(_bits(param.detach()), _bits(expected))
    assert loop.t == 25
    assert losses[-1] < 0.5 * losses[0], losses


def test_fastopt_and_torch_loops_take_the_same_first_step():
    """Same weights, same batch, same bf16 gradient: after one iteration the two fp32
    masters agree to float32 rounding (the order of operations differs)."""
    fastopt_loop = offload_loop.OffloadLoop("fastopt", **TINY)
    torch_loop = offload_loop.OffloadLoop("torch 3-pass", **TINY)
    assert torch.equal(fastopt_loop.master, torch_loop.master)
    fastopt_loop()
    torch_loop()
    assert torch.equal(fastopt_loop.grad.view(torch.int16), torch_loop.grad.view(torch.int16))
    torch.testing.assert_close(fastopt_loop.master, torch_loop.master, rtol=1e-6, atol=1e-8)


def test_no_step_loop_leaves_the_params():
    loop = offload_loop.OffloadLoop("no step", **TINY)
    before = [p.detach().clone() for p in loop.params]
    loop()
    loop()
    assert all(torch.equal(p.detach(), b) for p, b in zip(loop.params, before))
    assert loop.grad.abs().sum() > 0                      # the gradients did come in


def test_unknown_step_is_refused():
    with pytest.raises(ValueError, match="step"):
        offload_loop.OffloadLoop("adamax")


@pytest.fixture
def tiny_offload_loop(monkeypatch):
    monkeypatch.setattr(offload_loop, "SIZES", TINY["sizes"])
    monkeypatch.setattr(offload_loop, "BATCH", TINY["batch"])
    monkeypatch.setattr(loops, "ROUNDS", 2)
    monkeypatch.setattr(loops, "WARMUP", 1)
    monkeypatch.setattr(loops, "BLOCK", 2)


@pytest.fixture
def no_deepspeed(monkeypatch):
    mixed.deepspeed_note.cache_clear()
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    yield
    mixed.deepspeed_note.cache_clear()


def test_bench_baselines_deepspeed_without_deepspeed(tiny_offload_loop, no_deepspeed,
                                                     tmp_path, capsys):
    """``fastopt bench --baselines deepspeed`` where DeepSpeed does not import: the mixed
    section runs (step table, offload loop) and ends with the one-line note."""
    path = tmp_path / "mixed.json"
    assert main(["bench", "--baselines", "deepspeed", "--sizes", "1000", "--threads", "1",
                 "--json", str(path), *QUICK]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("DeepSpeed is not installed")
    assert "offload-loop iteration" in out
    result = json.loads(path.read_text())
    assert result["meta"]["deepspeed"] is None
    section = result["mixed"]
    assert len(section["notes"]) == 1 and "DeepSpeed" in section["notes"][0]
    (step,) = section["steps"]
    assert (step["size"], step["threads"]) == (1000, 1)
    assert set(step["seconds"]) == {"fastopt", "ceiling", "torch 3-pass"}
    (loop,) = section["offload_loop"]
    assert loop["threads"] == 1 and loop["params"] == 16 * 32 + 32 + 32 * 4 + 4
    assert set(loop["seconds"]) == {"fastopt", "torch 3-pass", "no step"}
    assert all(value > 0 for value in loop["seconds"].values())
    assert loop["speedups"] == {"torch 3-pass": pytest.approx(
        loop["seconds"]["torch 3-pass"] / loop["seconds"]["fastopt"])}
    assert loop["step_seconds"]["fastopt"] == pytest.approx(
        loop["seconds"]["fastopt"] - loop["seconds"]["no step"])


def test_bench_mixed_no_torch(tiny_offload_loop, tmp_path, capsys):
    """``--mixed --no-torch``: fastopt against its ceiling only, and a note for the rest."""
    path = tmp_path / "mixed.json"
    assert main(["bench", "--mixed", "--no-torch", "--sizes", "1000", "--json", str(path),
                 *QUICK]) == 0
    assert "offload loop (a torch model) are skipped" in capsys.readouterr().out
    section = json.loads(path.read_text())["mixed"]
    assert set(section["steps"][0]["seconds"]) == {"fastopt", "ceiling"}
    assert section["offload_loop"] == []


@pytest.mark.parametrize("argv", [["--baselines", "apex"], ["--baselines", "deepspeed,nope"],
                                  ["--mixed", "--loops"], ["--baselines", "deepspeed",
                                                           "--threshold"],
                                  ["--mixed", "--sizes", "0"]])
def test_bench_mixed_bad_options(argv, capsys):
    assert main(["bench", *argv]) == 2
    assert "fastopt bench: error:" in capsys.readouterr().err
