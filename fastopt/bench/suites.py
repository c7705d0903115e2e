"""The measurements behind ``fastopt bench``, returned as lists of plain dicts.

* :func:`kernel_rows`: per rule, dtype, size and thread count: the kernel and its
  no-arithmetic ceiling (:mod:`.ceiling`, timed interleaved), the whole ``opt.step()``,
  the NumPy reference, ``torch.optim`` (fused, foreach, single-tensor), and the triad at
  the same size and thread count (a machine figure). Times are seconds per step.
* :func:`model_rows`: whole steps against torch on :data:`~.cases.STEP_SHAPES` (one
  1,000-element tensor: Python overhead) and :data:`~.cases.MODEL_SHAPES` (200 tensors,
  1e6 elements, one flat buffer for fastopt).
* :func:`threshold_rows` and :func:`crossovers`: serial vs parallel twin per size.
"""

import numpy as np

from . import cases, ceiling, measure, triad

TORCH_KEYS = tuple(f"torch_{impl}" for impl in cases.TORCH_IMPLS)


class Progress:
    """Counts measurements on a tqdm bar (stderr; hidden when stderr is not a terminal),
    or on nothing where tqdm is missing."""

    def __init__(self, total, enabled=True):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="run", leave=False, disable=None,
                            dynamic_ncols=True)

    def step(self, text):
        if self.bar is not None:
            self.bar.set_description(text, refresh=False)
            self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def _torch_best(row):
    times = [row[key] for key in TORCH_KEYS if row.get(key) is not None]
    return min(times) if times else None


def _speedups(row, own):
    """fastopt's speed-up (``own`` time key) over NumPy and each torch implementation."""
    row["speedup_numpy"] = _ratio(row.get("numpy"), row[own])
    for key in TORCH_KEYS:
        row[f"speedup_{key}"] = _ratio(row[key], row[own])
    row["torch_best"] = _torch_best(row)
    row["speedup_torch_best"] = _ratio(row["torch_best"], row[own])


def kernel_count(rules, dtypes, sizes, thread_counts, torch=True):
    per_case = 4 + (len(TORCH_KEYS) if torch else 0)
    return len(dtypes) * len(sizes) * len(thread_counts) * (1 + per_case * len(rules))


def kernel_rows(rules, dtypes, sizes, thread_counts, timing, torch=True, progress=None):
    """The kernel table. ``timing``: keywords of :func:`measure.time_call`."""
    rows = []
    for threads in thread_counts:
        with measure.threads(threads):
            for dtype in dtypes:
                for size in sizes:
                    triad_time = measure.time_call(triad.make_call(size, dtype), **timing)
                    triad_gbps = triad.gbps(dtype, size, triad_time)
                    if progress:
                        progress.step(f"triad {dtype} {size}")
                    for rule in rules:
                        case = cases.CASES[rule]
                        if not case.supports(dtype):
                            continue
                        rows.append(_kernel_row(case, dtype, size, threads, timing, torch,
                                                triad_time, triad_gbps, progress))
    return rows


def _kernel_row(case, dtype, size, threads, timing, torch, triad_time, triad_gbps, progress):
    shapes = [(size,)]
    row = {"rule": case.name, "options": case.options, "dtype": dtype, "size": size,
           "threads": threads, "bytes_per_element": case.bytes_per_element(dtype)}
    label = f"{case.name} {dtype} {size}"
    row.update(kernel_and_ceiling(case, size, dtype, timing))
    if progress:
        progress.step(f"{label} kernel")
        progress.step(f"{label} ceiling")
    makers = {
        "step": lambda: cases.step_call(case, shapes, dtype),
        "numpy": lambda: cases.reference_call(case, size, dtype),
    }
    if torch:
        makers.update(_torch_makers(case, shapes, dtype, cases.TORCH_IMPLS))
    _measure(row, makers, timing, progress, label)
    for key in TORCH_KEYS:
        row.setdefault(key, None)
    _speedups(row, "step")
    row["gbps"] = row["bytes_per_element"] * size / row["kernel"] / 1e9
    row["triad"] = triad_time
    row["triad_gbps"] = triad_gbps
    row["triad_fraction"] = row["gbps"] / triad_gbps
    # Roofline ratio, as asv tracks it: kernel time over the time the triad's bandwidth
    # needs for the kernel's bytes (1 = at the triad's bandwidth; lower is better).
    row["roofline_ratio"] = triad.roofline_ratio(row["kernel"], row["bytes_per_element"],
                                                 triad_time, dtype)
    return row


def kernel_and_ceiling(case, size, dtype, timing):
    """``{"kernel", "ceiling", "ceiling_fraction"}``: seconds per call of ``case``'s kernel
    and of its no-arithmetic ceiling (same buffers, size, threads and twin rule), timed
    interleaved (:func:`measure.interleaved`), and ceiling time over kernel time: the
    fraction of the achievable speed the kernel reaches (1.0: at the ceiling)."""
    kernel = cases.kernel_call(case, size, dtype)
    try:
        limit = ceiling.ceiling_call(case, size, dtype)
    except cases.Unavailable:   # bf16 state: "-" in the table
        return {"kernel": measure.time_call(kernel, **timing), "ceiling": None,
                "ceiling_fraction": None}
    times = measure.interleaved({"kernel": kernel, "ceiling": limit}, **timing)
    return {**times, "ceiling_fraction": times["ceiling"] / times["kernel"]}


WORKLOADS = {
    "step 1e3": cases.STEP_SHAPES,
    "model 200x": cases.MODEL_SHAPES,
}


def model_count(rules, dtypes, thread_counts, torch=True):
    return len(rules) * len(dtypes) * len(thread_counts) * len(WORKLOADS) * (
        1 + (len(TORCH_KEYS) if torch else 0))


def _measure(row, makers, timing, progress, label):
    """Time the ``makers`` entries (key -> function building the call) into ``row``,
    interleaved (:func:`~.measure.interleaved`: A/B/A/B, so that their ratios are of the
    same moments of this shared machine); ``None`` for one unavailable here."""
    calls = {}
    for key, make in makers.items():
        try:
            calls[key] = make()
        except cases.Unavailable:
            row[key] = None
    if calls:
        row.update(measure.interleaved(calls, **timing))
    if progress:
        for key in makers:
            progress.step(f"{label} {key}")


def _torch_makers(case, shapes, dtype, impls):
    """Functions building ``torch.optim`` steps of each implementation in ``impls``."""
    return {f"torch_{impl}": (lambda impl=impl: cases.torch_call(case, shapes, dtype, impl))
            for impl in impls}


def _each_case(rules, dtypes, thread_counts):
    """``(threads, dtype, case)`` for every combination, each run with that many threads."""
    for threads in thread_counts:
        with measure.threads(threads):
            for dtype in dtypes:
                for rule in rules:
                    if cases.CASES[rule].supports(dtype):
                        yield threads, dtype, cases.CASES[rule]


def _whole_step_rows(rules, dtypes, thread_counts, timing, workloads, makers_for, progress):
    """One row per thread count, dtype, rule and workload (name -> tensor shapes), with
    the times of the calls ``makers_for(case, shapes, dtype)`` builds."""
    rows = []
    for threads, dtype, case in _each_case(rules, dtypes, thread_counts):
        for workload, shapes in workloads.items():
            row = {"rule": case.name, "options": case.options, "dtype": dtype,
                   "workload": workload, "tensors": len(shapes),
                   "elements": int(sum(np.prod(s) for s in shapes)), "threads": threads}
            _measure(row, makers_for(case, shapes, dtype), timing, progress,
                     f"{case.name} {dtype} {workload}")
            rows.append(row)
    return rows


def model_rows(rules, dtypes, thread_counts, timing, torch=True, progress=None):
    """Whole ``opt.step()`` against ``torch.optim`` on each of :data:`WORKLOADS`."""
    def makers_for(case, shapes, dtype):
        makers = {"step": lambda: cases.step_call(case, shapes, dtype)}
        if torch:
            makers.update(_torch_makers(case, shapes, dtype, cases.TORCH_IMPLS))
        return makers

    rows = _whole_step_rows(rules, dtypes, thread_counts, timing, WORKLOADS, makers_for,
                            progress)
    for row in rows:
        for key in TORCH_KEYS:
            row.setdefault(key, None)
        _speedups(row, "step")
    return rows


#: The many-arrays workload: this many separate (not flattened) float32 arrays of this
#: many elements each, Adam.
MANY_ARRAYS = (100_000, 10)


def many_arrays_row(torch=True, repeat=3, arrays=None):
    """``fastopt.Adam`` over :data:`MANY_ARRAYS` separate arrays, given as a list (one
    segment per array: the per-array Python of a step and of construction), against
    ``torch.optim.Adam(foreach=True)`` on tensors over the same values: the median of
    ``repeat`` constructions (alone, and with the first step, where torch allocates its
    state) and ``repeat`` steps each, alternating fastopt and torch. The step reuses the
    same gradient arrays (a loop writing them in place)."""
    import time

    import fastopt
    count, size = MANY_ARRAYS if arrays is None else arrays
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    makers = {"fastopt": lambda: fastopt.Adam(list(params), lr=1e-3)}
    steps = {"fastopt": lambda opt: opt.step(grads)}
    if torch:
        torch = cases.import_torch()
        tensors = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
        for tensor, grad in zip(tensors, grads):
            tensor.grad = torch.from_numpy(grad)
        makers["torch"] = lambda: torch.optim.Adam(tensors, lr=1e-3, foreach=True)
        steps["torch"] = lambda opt: opt.step()
    built = {name: make() for name, make in makers.items()}
    for name, opt in built.items():
        steps[name](opt)                     # state allocated, kernels compiled
    kinds = ("construct", "first", "step")
    times = {f"{name}_{what}": [] for name in makers for what in kinds}
    for _ in range(repeat):
        for name, make in makers.items():
            start = time.perf_counter()
            fresh = make()
            built_at = time.perf_counter()
            steps[name](fresh)       # torch allocates its state here, fastopt too
            times[f"{name}_construct"].append(built_at - start)
            times[f"{name}_first"].append(time.perf_counter() - start)
            del fresh
            start = time.perf_counter()
            steps[name](built[name])
            times[f"{name}_step"].append(time.perf_counter() - start)
    row = {"arrays": count, "size": size,
           **{key: float(np.median(values)) for key, values in times.items()}}
    for what in kinds:
        row[f"speedup_{what}"] = _ratio(row.get(f"torch_{what}"), row[f"fastopt_{what}"])
    return row


ADAPTER_KEYS = ("adapter", "torch_fused", "torch_foreach", "adapter_loop", "torch_fused_loop")


def adapter_count(rules, dtypes, thread_counts):
    return len(rules) * len(dtypes) * len(thread_counts) * len(cases.ADAPTER_WIDTHS) * len(
        ADAPTER_KEYS)


def adapter_rows(rules, dtypes, thread_counts, timing, progress=None):
    """``fastopt.torch.<Rule>.step()`` against ``torch.optim`` fused and foreach on an
    MLP-shaped model of 50 tensors (:data:`~.cases.ADAPTER_WIDTHS`), whole step on
    gradients of their own (as autograd allocates them after ``zero_grad()``); and whole
    ``zero_grad(); backward(); step()`` iterations (:func:`~.cases.backward_loop_call`),
    fastopt.torch against torch fused."""
    def makers_for(case, shapes, dtype):
        makers = {"adapter": lambda: cases.adapter_call(case, shapes, dtype)}
        makers.update(_torch_makers(case, shapes, dtype, ("fused", "foreach")))
        makers["adapter_loop"] = lambda: cases.backward_loop_call(case, shapes, dtype,
                                                                  "adapter")
        makers["torch_fused_loop"] = lambda: cases.backward_loop_call(case, shapes, dtype,
                                                                      "fused")
        return makers

    workloads = {name: cases.mlp_shapes(width)
                 for name, width in cases.ADAPTER_WIDTHS.items()}
    rows = _whole_step_rows(rules, dtypes, thread_counts, timing, workloads, makers_for,
                            progress)
    for row in rows:
        for impl in ("fused", "foreach"):
            row[f"speedup_torch_{impl}"] = _ratio(row[f"torch_{impl}"], row["adapter"])
        row["speedup_torch_fused_loop"] = _ratio(row["torch_fused_loop"], row["adapter_loop"])
    return rows


LOOP_TORCH_KEYS = ("torch_fused", "torch_clip")


def loop_count(rules, dtypes, thread_counts, torch=True):
    return len(rules) * len(dtypes) * len(thread_counts) * len(cases.LOOP_SIZES) * (
        len(cases.LOOP_VARIANTS) + (len(LOOP_TORCH_KEYS) if torch else 0))


def loop_rows(rules, dtypes, thread_counts, timing, torch=True, progress=None):
    """Loop features on one flat buffer (:data:`~.cases.LOOP_SIZES`): clipping's cost over
    a plain step (target <= 1.2x at 1e7), fused zeroing against step + separate zeroing,
    and clipping against ``clip_grad_norm_`` + torch's fused step."""
    def makers_for(case, shapes, dtype):
        makers = {variant: (lambda variant=variant: cases.loop_call(case, shapes, dtype,
                                                                    variant))
                  for variant in cases.LOOP_VARIANTS}
        if torch:
            makers["torch_fused"] = lambda: cases.torch_call(case, shapes, dtype, "fused")
            makers["torch_clip"] = lambda: cases.torch_clip_call(case, shapes, dtype)
        return makers

    workloads = {f"{size:.0e}".replace("+0", ""): [(size,)] for size in cases.LOOP_SIZES}
    rows = _whole_step_rows(rules, dtypes, thread_counts, timing, workloads, makers_for,
                            progress)
    for row in rows:
        for key in LOOP_TORCH_KEYS:
            row.setdefault(key, None)
        row["clip_cost"] = _ratio(row["clip"], row["step"])
        row["zero_saving"] = _ratio(row["zero_separate"], row["zero_fused"])
        row["speedup_torch_clip"] = _ratio(row["torch_clip"], row["clip"])
    return rows


#: Sizes of the threshold mode: 2**10 .. 2**20.
THRESHOLD_SIZES = tuple(2 ** k for k in range(10, 21))


def threshold_count(rules, dtypes, sizes, thread_counts):
    return 2 * len(rules) * len(dtypes) * len(sizes) * len(thread_counts)


def threshold_rows(rules, dtypes, sizes, thread_counts, timing, progress=None):
    """Serial vs parallel twin of each kernel, per size."""
    rows = []
    for threads, dtype, case in _each_case(rules, dtypes, thread_counts):
        for size in sizes:
            row = {"rule": case.name, "dtype": dtype, "size": size, "threads": threads}
            makers = {twin: (lambda twin=twin: cases.kernel_call(case, size, dtype, twin=twin))
                      for twin in ("serial", "parallel")}
            _measure(row, makers, timing, progress, f"{case.name} {dtype} {size}")
            row["parallel_speedup"] = row["serial"] / row["parallel"]
            rows.append(row)
    return rows


def crossovers(rows):
    """Per (rule, dtype, threads): the smallest measured size from which the parallel
    twin is faster at that size and every larger one (``None``: never, up to the largest)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["rule"], row["dtype"], row["threads"]), []).append(row)
    result = []
    for (rule, dtype, threads), group in groups.items():
        group.sort(key=lambda r: r["size"])
        crossover = None
        for row in reversed(group):
            if row["parallel"] < row["serial"]:
                crossover = row["size"]
            else:
                break
        result.append({"rule": rule, "dtype": dtype, "threads": threads,
                       "crossover": crossover})
    return result


def suggested_threshold(crossover_list):
    """The median crossover over rules and dtypes, rounded to a power of two (``None``
    if the parallel twin never won)."""
    values = [c["crossover"] for c in crossover_list if c["crossover"] is not None]
    if not values:
        return None
    return int(2 ** round(float(np.median(np.log2(values)))))
