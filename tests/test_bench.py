"""``fastopt bench`` and the asv suite: the command runs and writes sane JSON, the cases
count the bytes each kernel moves as a hand count does, each case's kernel call computes
the rule it claims, and ``asv check`` accepts asv_bench/."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from cases import BUFFERS_MOVED   # tests/cases.py (``cases`` below is fastopt.bench.cases)
from fastopt.bench import cases, ceiling, triad
from fastopt.cli import main
from fastopt.validation import as_floats

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--repeat", "1", "--min-time", "0.002"]

#: Hand count, per element, of buffers read + buffers written by each benchmarked case.
#: sgd (momentum): reads p, g, b; writes p, b. adagrad: reads p, g, sum; writes p, sum.
#: rmsprop (plain): reads p, g, square_avg; writes p, square_avg.
#: adam, adamw: reads p, g, m, v; writes p, m, v.
#: lamb: the same buffers (the minimum traffic; its two passes read p, m, v twice).
#: Buffers moved per element, counted by hand: each rule's (``tests/cases.py``, next to its
#: matrix line), and the bench's option variants: Nesterov SGD reads p, g, b and writes
#: p, b; centered RMSprop adds grad_avg, momentum RMSprop momentum_buffer; amsgrad
#: max_exp_avg_sq.
HAND_COUNT = {**BUFFERS_MOVED, "sgd-nesterov": 5, "rmsprop-centered": 7,
              "rmsprop-momentum": 7, "rmsprop-nesterov": 7, "adam-amsgrad": 9}
#: Cases with bfloat16 state (float32 params only): bytes per element by hand
#: (Adam: reads p, g (4 B) and m, v (2 B); writes p (4 B), m, v (2 B)).
HAND_BYTES = {"adam-bf16state": 20}



@pytest.fixture(autouse=True)
def few_many_arrays(monkeypatch):
    """The many-arrays workload at a size a test can afford (the bench runs 1e5)."""
    from fastopt.bench import suites
    monkeypatch.setattr(suites, "MANY_ARRAYS", (40, 5))

def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--rules", "adam", "--sizes", "1000", "--dtypes", "float32",
                 "--adapter-rules", "none", "--loop-rules", "none", "--json", str(path),
                 *QUICK])
    assert code == 0
    printed = capsys.readouterr().out
    assert "adam" in printed and "of ceiling" in printed and "model 200x" in printed
    result = json.loads(path.read_text())
    torch_ok = result["meta"]["torch"] is not None
    (row,) = result["kernels"]
    assert (row["rule"], row["dtype"], row["size"]) == ("adam", "float32", 1000)
    assert row["bytes_per_element"] == 28
    keys = ["step", "kernel", "numpy", "gbps", "triad", "triad_gbps", "triad_fraction",
            "roofline_ratio", "speedup_numpy", "ceiling", "ceiling_fraction"]
    if torch_ok:
        keys += ["torch_fused", "torch_foreach", "torch_single", "speedup_torch_fused",
                 "speedup_torch_best"]
    for key in keys:
        assert _positive(row[key]), (key, row[key])
    assert row["ceiling_fraction"] == pytest.approx(row["ceiling"] / row["kernel"])
    assert [(r["rule"], r["workload"], r["tensors"], r["elements"])
            for r in result["model"]] == [("adam", "step 1e3", 1, 1000),
                                          ("adam", "model 200x", 200, 1_000_000)]
    for model_row in result["model"]:
        assert _positive(model_row["step"])
        if torch_ok:
            assert _positive(model_row["speedup_torch_fused"])
    assert result["many_arrays"]["arrays"] == 40 and _positive(
        result["many_arrays"]["fastopt_step"])


def test_bench_adapter_section(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(cases, "ADAPTER_WIDTHS", {"mlp tiny": 8})
    path = tmp_path / "adapter.json"
    code = main(["bench", "--model-only", "--rules", "adam", "--dtypes", "float32",
                 "--adapter-rules", "adam,sgd", "--loop-rules", "none", "--json", str(path),
                 *QUICK])
    assert code == 0
    rows = json.loads(path.read_text())["adapter"]
    assert [(r["rule"], r["workload"], r["tensors"], r["elements"]) for r in rows] == [
        ("adam", "mlp tiny", 50, 25 * (64 + 8)), ("sgd", "mlp tiny", 50, 25 * (64 + 8))]
    for row in rows:
        for key in ("adapter", "torch_fused", "torch_foreach", "speedup_torch_fused",
                    "speedup_torch_foreach", "adapter_loop", "torch_fused_loop",
                    "speedup_torch_fused_loop"):
            assert _positive(row[key]), (key, row[key])


def test_adapter_cases_step_on_gradients_of_their_own(adam_kernel_sizes, monkeypatch):
    """The adapter's step reads each gradient where it lies (one kernel call per tensor,
    with gathering turned off for these tiny tensors), as after ``zero_grad()`` and a
    backward; the loop case is zero_grad (to None), a backward and a step, for
    fastopt.torch and torch fused alike."""
    pytest.importorskip("torch")
    from fastopt.torch import buckets
    monkeypatch.setattr(buckets, "GATHER_BELOW", 1)
    monkeypatch.setattr(buckets, "GATHER_BELOW_ONE_CALL", 1)
    sizes = adam_kernel_sizes
    shapes = cases.mlp_shapes(4, layers=2)
    step = cases.adapter_call(cases.CASES["adam"], shapes, np.float32)
    sizes.clear()
    step()
    assert sizes == [16, 4, 16, 4]
    for impl in ("adapter", "fused"):
        iteration = cases.backward_loop_call(cases.CASES["adam"], shapes, np.float32, impl)
        sizes.clear()
        iteration()
        assert sizes == ([16, 4, 16, 4] if impl == "adapter" else [])
    with pytest.raises(cases.Unavailable):
        cases.backward_loop_call(cases.CASES["rmsprop"], shapes, np.float32, "fused")


def test_bench_loop_section(tmp_path, monkeypatch):
    monkeypatch.setattr(cases, "LOOP_SIZES", (3000,))
    path = tmp_path / "loop.json"
    code = main(["bench", "--model-only", "--rules", "adam", "--dtypes", "float64",
                 "--adapter-rules", "none", "--loop-rules", "rmsprop", "--json", str(path),
                 *QUICK])
    assert code == 0
    (row,) = json.loads(path.read_text())["loop"]
    assert (row["rule"], row["elements"]) == ("rmsprop", 3000)
    for key in ("step", "clip", "zero_fused", "zero_separate", "clip_cost", "zero_saving"):
        assert _positive(row[key]), (key, row[key])
    assert row["torch_clip"] is None or _positive(row["torch_clip"])


def test_bench_loops_times_whole_iterations(tmp_path, monkeypatch):
    """``fastopt bench --loops``: both loops at each thread count, every configuration
    timed, speed-ups consistent with the times, and fastopt's twin reported."""
    from fastopt.bench import loops
    monkeypatch.setattr(loops, "SIZES", (16, 24, 24, 4))
    monkeypatch.setattr(loops, "WIDE_SIZES", (16, 40, 40, 4))
    monkeypatch.setattr(loops, "ROUNDS", 2)
    monkeypatch.setattr(loops, "WARMUP", 2)
    monkeypatch.setattr(loops, "BLOCK", 2)
    path = tmp_path / "loops.json"
    assert main(["bench", "--loops", "--threads", "1", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["loops"]
    assert [(r["loop"], r["threads"]) for r in rows] == [
        ("torch", 1), ("torch wide", 1), ("numpy", 1)]
    for row in rows[:2]:
        assert set(row["seconds"]) == {"fastopt", "fastopt 1 thread", "torch fused"}
    assert set(rows[2]["seconds"]) == {"fastopt", "fastopt 1 thread"}
    for row in rows:
        assert all(_positive(v) for v in row["seconds"].values())
        for name, speedup in row["speedups"].items():
            assert speedup == pytest.approx(row["seconds"][name] / row["seconds"]["fastopt"])
        assert row["twin"] == "by size"   # tiny models: never timed, the size rule


def test_loop_calls_compute_what_they_say():
    """The clip variant clips (its step differs from the plain one on the same data)
    and both zeroing variants leave the gradients zero with the same parameters."""
    case = cases.CASES["adam"]
    calls = {v: cases.loop_call(case, [(500,)], "float64", v) for v in cases.LOOP_VARIANTS}
    for call in calls.values():
        call()
    plain, clipped = calls["step"].__self__, calls["clip"].__self__
    assert clipped.clip_grad_norm == cases.LOOP_MAX_NORM and plain.clip_grad_norm is None
    assert not np.array_equal(plain.param_groups[0]["params"][0],
                              clipped.param_groups[0]["params"][0])
    fused = calls["zero_fused"].func.__self__
    assert not fused._flats[0].grads[0].any()
    calls["zero_separate"]()
    separate = next(cell.cell_contents for cell in calls["zero_separate"].__closure__
                    if isinstance(cell.cell_contents, fastopt.Flat))
    assert not separate.grads[0].any()


def test_bench_threshold(tmp_path):
    path = tmp_path / "threshold.json"
    code = main(["bench", "--threshold", "--rules", "sgd,rmsprop", "--sizes", "2^10,2^12",
                 "--json", str(path), *QUICK])
    assert code == 0
    found = json.loads(path.read_text())["threshold"]
    assert len(found["rows"]) == 4
    assert all(_positive(r["serial"]) and _positive(r["parallel"]) for r in found["rows"])
    assert {c["rule"] for c in found["crossovers"]} == {"sgd", "rmsprop"}


@pytest.mark.parametrize("argv", [["--rules", "nope"], ["--dtypes", "float16"],
                                  ["--sizes", "1.5"], ["--threads", "0"], ["--repeat", "0"],
                                  ["--adapter-rules", "nope", "--no-model"],
                                  ["--loop-rules", "nope", "--no-model"]])
def test_bench_bad_options(argv, capsys):
    assert main(["bench", *argv]) == 2
    assert "fastopt bench: error:" in capsys.readouterr().err


@pytest.mark.parametrize("rule", list(cases.CASES))
@pytest.mark.parametrize("dtype", cases.DTYPES)
def test_bytes_per_element(rule, dtype):
    itemsize = np.dtype(dtype).itemsize
    case = cases.CASES[rule]
    if rule in HAND_BYTES:
        assert case.supports(dtype) == (dtype == "float32")
        if case.supports(dtype):
            assert case.bytes_per_element(dtype) == HAND_BYTES[rule]
            args = cases.kernel_args(case, 10, dtype)
            assert sum(a.itemsize for a in args[:4]) + sum(   # the buffers the kernel moves
                a.itemsize for a in args[:1] + args[2:4]) == HAND_BYTES[rule]
        else:
            with pytest.raises(cases.Unavailable):
                cases.kernel_args(case, 10, dtype)
        return
    assert case.bytes_per_element(dtype) == HAND_COUNT[rule] * itemsize
    assert triad.bytes_per_element(dtype) == 3 * itemsize  # reads b, c; writes a


@pytest.mark.parametrize("rule", list(cases.CASES))
@pytest.mark.parametrize("dtype", cases.DTYPES)
@pytest.mark.parametrize("twin", ["serial", "parallel"])
def test_ceiling_moves_exactly_the_case_buffers(rule, dtype, twin):
    """The ceiling kernel runs over the kernel's own buffers (same names, dtypes, sizes),
    changes exactly ``Case.writes``, leaves the rest unchanged, uses a value of each of
    ``Case.reads`` (found in a written buffer at the same index: every load is used), and
    so moves ``bytes_per_element`` bytes per element."""
    case = cases.CASES[rule]
    size = 1001
    if case.options.get("state_dtype"):   # two widths: no rotation, no ceiling ("-")
        with pytest.raises(cases.Unavailable):
            ceiling.ceiling_call(case, size, dtype, twin=twin)
        return
    call = ceiling.ceiling_call(case, size, dtype, twin=twin)
    arrays = call.buffers
    kernel_arrays = ceiling.buffers(case, size, dtype)
    assert set(arrays) == set(case.reads) | set(case.writes)
    for name, array in arrays.items():
        assert (array.dtype, array.shape) == (kernel_arrays[name].dtype, (size,)), name
    rng = np.random.default_rng(1)
    for array in arrays.values():
        array[...] = rng.standard_normal(size)      # distinct values in every buffer
    before = {name: array.copy() for name, array in arrays.items()}
    call()
    changed = {name for name in arrays if not np.array_equal(arrays[name], before[name])}
    assert changed == set(case.writes)
    for name in case.reads:
        assert any((arrays[out] == before[name]).any() for out in case.writes), name
    moved = sum(arrays[name].itemsize for name in case.reads)
    moved += sum(arrays[name].itemsize for name in case.writes)
    assert moved == case.bytes_per_element(dtype)


@pytest.mark.parametrize("rule", list(cases.CASES))
def test_case_kernel_computes_its_rule(rule):
    """The case's kernel call (fresh state, step STEP) equals the NumPy reference with
    the case's options from the same state."""
    case = cases.CASES[rule]
    dtype = "float64" if case.supports("float64") else "float32"   # bf16 state: float32
    args = cases.kernel_args(case, 257, dtype)
    param, grad = args[0].copy(), args[1].copy()
    group = as_floats(case.hyperparameters)
    state = {"step": cases.STEP - 1,   # the state as the optimizer made it, then step STEP
             **{name: np.full_like(param, case.spec.initial_state(name, group))
                for name in case.state},
             **case.spec.scalar_state(group, cases.STEP - 1)}
    expected, _ = case.reference(param, grad, state, **case.baseline_options)
    case.kernel(*args)
    tight = dtype == "float64"
    np.testing.assert_allclose(args[0], expected, rtol=1e-12 if tight else 1e-6,
                               atol=1e-14 if tight else 1e-7)


def _asv():
    found = shutil.which("asv")
    beside = Path(sys.executable).parent / "asv"
    return found or (str(beside) if beside.exists() else None)


def test_asv_check():
    asv = _asv()
    if asv is None:
        pytest.skip("the asv executable is not installed (pip install fastopt[bench])")
    done = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout, done.stdout


def test_thread_scaling_table(tmp_path, capsys):
    """``--threads 1,2`` adds the scaling table: per rule, dtype and size, the kernel at
    each thread count and its speed-up over one thread (1.00x at one thread)."""
    path = tmp_path / "scaling.json"
    code = main(["bench", "--rules", "lion", "--sizes", "1000", "--dtypes", "float32",
                 "--threads", "1,2", "--no-torch", "--no-model", "--adapter-rules", "none",
                 "--loop-rules", "none", "--json", str(path), *QUICK])
    assert code == 0
    assert "thread scaling" in capsys.readouterr().out
    rows = json.loads(path.read_text())["scaling"]
    assert [(r["rule"], r["threads"]) for r in rows] == [("lion", 1), ("lion", 2)]
    assert rows[0]["speedup"] == 1.0 and rows[0]["triad_speedup"] == 1.0
    kernels = {r["threads"]: r["kernel"] for r in json.loads(path.read_text())["kernels"]}
    assert rows[1]["speedup"] == pytest.approx(kernels[1] / kernels[2])


def test_sizes_print_as_given():
    from fastopt.bench.report import fmt_size
    assert [fmt_size(n) for n in (1000, 50_000_000, 10_000_000, 1 << 16, 1234, 100)] == [
        "1e3", "5e7", "1e7", "2^16", "1234", "100"]


def test_many_arrays_row_times_fastopt_and_torch(monkeypatch):
    """The many-arrays workload: every time positive, the speed-ups consistent with the
    times (a small count here; the bench runs 1e5)."""
    from fastopt.bench import report, suites
    row = suites.many_arrays_row(torch=True, repeat=1, arrays=(300, 7))
    assert (row["arrays"], row["size"]) == (300, 7)
    for name in ("fastopt", "torch"):
        for what in ("construct", "first", "step"):
            assert _positive(row[f"{name}_{what}"]), (name, what)
    for what in ("construct", "first", "step"):
        assert row[f"speedup_{what}"] == pytest.approx(row[f"torch_{what}"] /
                                                       row[f"fastopt_{what}"])
    assert "x foreach" in report.many_arrays_table(row)
    no_torch = suites.many_arrays_row(torch=False, repeat=1, arrays=(5, 3))
    assert no_torch["speedup_step"] is None and "torch_step" not in no_torch


def _asv_module(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f"asv_{name}", ROOT / "asv_bench" / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asv_ratio_tracks_measure_what_they_name(monkeypatch):
    """asv's step-over-torch-fused and clip-over-step ratios: positive finite ratios of
    two interleaved timings; skipped (NotImplementedError) where torch has no fused step."""
    pytest.importorskip("torch")
    bench = _asv_module("bench_model")
    timed = []
    real = fastopt.bench.measure.interleaved
    monkeypatch.setattr(bench.measure, "interleaved",
                        lambda calls: timed.append(sorted(calls)) or real(calls, 1, 0.002))
    step = bench.StepOverTorchFused()
    step.setup("adam", "float32")
    assert 0 < step.track_ratio("adam", "float32") < math.inf
    with pytest.raises(NotImplementedError):
        step.setup("rmsprop", "float32")          # torch has no fused RMSprop
    clip = bench.ClipOverStep()
    clip.setup("adam", "float32", 10_000)
    assert 0 < clip.track_ratio("adam", "float32", 10_000) < math.inf
    assert timed == [["fastopt", "torch"], ["clip", "step"]]
