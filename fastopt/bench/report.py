"""Text tables for ``fastopt bench``."""

def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def fmt_size(size):
    """``1e6`` and ``5e7`` for a digit times a power of ten, ``2^20`` for powers of two,
    else the number."""
    digits = str(size)
    if size >= 1000 and digits[1:] == "0" * (len(digits) - 1):
        return f"{digits[0]}e{len(digits) - 1}"
    if size >= 1024 and size & (size - 1) == 0:
        return f"2^{size.bit_length() - 1}"
    return digits


def fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(headers, rows, align=None):
    """Columns padded to their widest cell; text columns left, numbers right."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    align = align or ["<"] * len(headers)
    lines = []
    for cells in [headers, *rows]:
        lines.append("  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths))
                     .rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


KERNEL_HEADERS = ["rule", "dtype", "size", "thr", "B/el", "step", "kernel", "numpy",
                  "t.fused", "t.foreach", "t.single", "x numpy", "x fused", "x t.best",
                  "GB/s", "triad GB/s", "of ceiling"]


def kernel_table(rows):
    body = [[r["rule"], r["dtype"], fmt_size(r["size"]), r["threads"], r["bytes_per_element"],
             fmt_time(r["step"]), fmt_time(r["kernel"]), fmt_time(r["numpy"]),
             fmt_time(r["torch_fused"]), fmt_time(r["torch_foreach"]),
             fmt_time(r["torch_single"]), fmt_ratio(r["speedup_numpy"]),
             fmt_ratio(r["speedup_torch_fused"]), fmt_ratio(r["speedup_torch_best"]),
             f"{r['gbps']:.1f}", f"{r['triad_gbps']:.1f}", _fraction(r["ceiling_fraction"])]
            for r in rows]
    return table(KERNEL_HEADERS, body, ["<", "<", ">"] + [">"] * (len(KERNEL_HEADERS) - 3))


def scaling_rows(rows):
    """Thread scaling from the kernel table's rows: per rule, dtype and size, the kernel
    time at each thread count, its speed-up over the fewest threads measured, the
    triad's speed-up over the same counts (the machine's bandwidth scaling, for
    comparison) and the kernel's fraction of its ceiling. ``[]`` with one thread count."""
    counts = sorted({r["threads"] for r in rows})
    if len(counts) < 2:
        return []
    by_key = {}
    for r in rows:
        by_key.setdefault((r["rule"], r["dtype"], r["size"]), {})[r["threads"]] = r
    out = []
    for (rule, dtype, size), at in by_key.items():
        base = at.get(counts[0])
        for threads in counts:
            r = at.get(threads)
            if r is None or base is None:
                continue
            out.append({"rule": rule, "dtype": dtype, "size": size, "threads": threads,
                        "kernel": r["kernel"], "speedup": base["kernel"] / r["kernel"],
                        "triad_speedup": base["triad"] / r["triad"],
                        "ceiling_fraction": r["ceiling_fraction"]})
    return out


SCALING_HEADERS = ["rule", "dtype", "size", "thr", "kernel", "x fewest thr", "triad x",
                   "of ceiling"]


def scaling_table(rows):
    body = [[r["rule"], r["dtype"], fmt_size(r["size"]), r["threads"], fmt_time(r["kernel"]),
             fmt_ratio(r["speedup"]), fmt_ratio(r["triad_speedup"]),
             _fraction(r["ceiling_fraction"])] for r in rows]
    return table(SCALING_HEADERS, body, ["<", "<", ">", ">", ">", ">", ">", ">"])


MODEL_HEADERS = ["rule", "dtype", "workload", "tensors", "elements", "thr", "step",
                 "t.fused", "t.foreach", "t.single", "x fused", "x t.best"]


def model_table(rows):
    body = [[r["rule"], r["dtype"], r["workload"], r["tensors"], fmt_size(r["elements"]),
             r["threads"], fmt_time(r["step"]), fmt_time(r["torch_fused"]),
             fmt_time(r["torch_foreach"]), fmt_time(r["torch_single"]),
             fmt_ratio(r["speedup_torch_fused"]), fmt_ratio(r["speedup_torch_best"])]
            for r in rows]
    return table(MODEL_HEADERS, body, ["<", "<", "<"] + [">"] * (len(MODEL_HEADERS) - 3))


MANY_HEADERS = ["arrays", "elements each", "step", "t.foreach", "x foreach", "construct",
                "t.construct", "x construct", "+1st step", "t.+1st step", "x +1st step"]


def many_arrays_table(row):
    body = [[fmt_size(row["arrays"]), row["size"]] + [
        cell for what in ("step", "construct", "first")
        for cell in (fmt_time(row[f"fastopt_{what}"]), fmt_time(row.get(f"torch_{what}")),
                     fmt_ratio(row[f"speedup_{what}"]))]]
    return table(MANY_HEADERS, body, [">"] * len(MANY_HEADERS))


ADAPTER_HEADERS = ["rule", "dtype", "workload", "tensors", "elements", "thr",
                   "fastopt.torch", "t.fused", "t.foreach", "x fused", "x foreach",
                   "loop", "t.fused loop", "x fused loop"]


def adapter_table(rows):
    body = [[r["rule"], r["dtype"], r["workload"], r["tensors"], fmt_size(r["elements"]),
             r["threads"], fmt_time(r["adapter"]), fmt_time(r["torch_fused"]),
             fmt_time(r["torch_foreach"]), fmt_ratio(r["speedup_torch_fused"]),
             fmt_ratio(r["speedup_torch_foreach"]), fmt_time(r["adapter_loop"]),
             fmt_time(r["torch_fused_loop"]), fmt_ratio(r["speedup_torch_fused_loop"])]
            for r in rows]
    return table(ADAPTER_HEADERS, body, ["<", "<", "<"] + [">"] * (len(ADAPTER_HEADERS) - 3))


LOOP_HEADERS = ["rule", "dtype", "size", "thr", "step", "clip", "clip/step", "zero fused",
                "step+zero", "saving", "t.fused", "t.clip+fused", "x t.clip"]


def loop_table(rows):
    body = [[r["rule"], r["dtype"], r["workload"], r["threads"], fmt_time(r["step"]),
             fmt_time(r["clip"]), fmt_ratio(r["clip_cost"]), fmt_time(r["zero_fused"]),
             fmt_time(r["zero_separate"]), fmt_ratio(r["zero_saving"]),
             fmt_time(r["torch_fused"]), fmt_time(r["torch_clip"]),
             fmt_ratio(r["speedup_torch_clip"])] for r in rows]
    return table(LOOP_HEADERS, body, ["<", "<", ">"] + [">"] * (len(LOOP_HEADERS) - 3))


THRESHOLD_HEADERS = ["rule", "dtype", "thr", "size", "serial", "parallel", "par speed-up"]


def threshold_table(rows):
    body = [[r["rule"], r["dtype"], r["threads"], fmt_size(r["size"]), fmt_time(r["serial"]),
             fmt_time(r["parallel"]), fmt_ratio(r["parallel_speedup"])] for r in rows]
    return table(THRESHOLD_HEADERS, body, ["<", "<", ">", ">", ">", ">", ">"])


def crossover_table(crossovers):
    body = [[c["rule"], c["dtype"], c["threads"],
             "none" if c["crossover"] is None else
             f"{fmt_size(c['crossover'])} ({c['crossover']})"] for c in crossovers]
    return table(["rule", "dtype", "thr", "parallel faster from"], body,
                 ["<", "<", ">", ">"])


def _fraction(value):
    """A fraction for a table: two decimals, or "-" where there is none."""
    return "-" if value is None else f"{value:.2f}"
