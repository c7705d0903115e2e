"""``fastopt bench``: kernel throughput against NumPy, torch.optim and memory bandwidth.

Prints, per rule, dtype, size and thread count: the whole ``opt.step()`` and the bare
kernel, the NumPy reference, ``torch.optim`` fused / foreach / single-tensor (where torch
is installed), fastopt's speed-ups, the kernel's effective GB/s (bytes it must move over
its time), a STREAM triad's GB/s at the same size and thread count (a machine figure),
and "of ceiling": the time of a kernel with the same loads and stores and no arithmetic
(:mod:`fastopt.bench.ceiling`), timed interleaved with the kernel, over the kernel's. Then whole steps on one 1,000-element tensor and on a 200-tensor
model against torch. ``--threshold`` instead times the serial and parallel twin of each
kernel over sizes 2^10..2^20 and reports where the parallel one starts to win.
``--mixed`` instead times the mixed-precision offload step (bf16 gradient in, fp32 master
and state, bf16 copy out: :mod:`fastopt.bench.mixed`) and the offload training loop around
it (:mod:`fastopt.bench.offload_loop`) against torch's three-pass sequence, and, with
``--baselines deepspeed``, DeepSpeed's.
"""

import json
import os
import platform
import sys

from ..cli import UsageError, check_option
from ..validation import check_int, check_real
from . import cases, loops, measure, mixed, offload_loop, report, suites


def configure(parser):
    parser.add_argument("--rules", default=",".join(cases.RULES),
                        help=f"comma-separated rules (default: all: {','.join(cases.RULES)}) "
                             f"or option variants ({','.join(cases.VARIANTS)})")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dtypes, float32 and/or float64 (default: both; "
                             "float32 with --threshold)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated element counts, e.g. 1e3,1e5 or 2^16 "
                             "(default: 1e3,1e5,1e6,1e7; with --threshold 2^10..2^20)")
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts for Numba and torch, restored "
                             "afterwards (default: the current count)")
    parser.add_argument("--repeat", type=int, default=measure.REPEAT,
                        help=f"timed repeats per measurement; the median is reported "
                             f"(default {measure.REPEAT})")
    parser.add_argument("--min-time", type=float, default=measure.MIN_TIME,
                        help=f"seconds each repeat loops for at least (default "
                             f"{measure.MIN_TIME})")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write every measurement as JSON to PATH")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the torch.optim baselines")
    parser.add_argument("--no-model", action="store_true",
                        help="skip the whole-step section (1,000 elements; 200-tensor model)")
    parser.add_argument("--adapter-rules", default="adam", metavar="RULES",
                        help="rules for the fastopt.torch vs torch.optim section on a "
                             "50-tensor MLP (comma-separated; 'none' skips it; default adam)")
    parser.add_argument("--loop-rules", default="adam", metavar="RULES",
                        help="rules for the loop-feature section (clipping, fused zero-grad; "
                             "one flat buffer of 1e6 and 1e7; 'none' skips it; default adam)")
    parser.add_argument("--model-only", action="store_true",
                        help="run only the whole-step section")
    parser.add_argument("--loops", action="store_true",
                        help="time whole training-loop iterations instead (a torch and a "
                             "NumPy MLP 512-1024-1024-10: fastopt, fastopt at one thread, "
                             "torch fused), at each --threads count (default 1 and the "
                             "current count)")
    parser.add_argument("--mixed", action="store_true",
                        help="time the mixed-precision offload step instead (Adam, bf16 "
                             "gradient in, fp32 master and state, bf16 copy out; default "
                             "sizes 1e6,1e7) against torch's unscale/step/cast sequence and "
                             "the no-arithmetic ceiling, then the offload training loop "
                             "around it (a bf16 MLP of 5.3M parameters) at each --threads")
    parser.add_argument("--baselines", default="", metavar="NAMES",
                        help=f"optional baselines, comma-separated: "
                             f"{','.join(mixed.BASELINES)} (DeepSpeedCPUAdam's sequence, "
                             f"where DeepSpeed is installed; it JIT-builds its op with g++ "
                             f"the first time, about a minute); implies --mixed, the section "
                             f"they belong to")
    parser.add_argument("--threshold", action="store_true",
                        help="time serial vs parallel twin of each kernel over sizes and "
                             "report the crossover (for PARALLEL_THRESHOLD)")


def _split(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_size(text):
    try:
        if "^" in text:
            base, exponent = text.split("^")
            value = int(base) ** int(exponent)
        else:
            number = float(text)
            value = int(number)
            if value != number:
                raise ValueError
    except ValueError:
        raise UsageError(f"--sizes: {text!r} is not a whole number of elements") from None
    if value < 1:
        raise UsageError(f"--sizes: {text!r} must be at least 1")
    return value


def parse_options(args):
    """Validated options from ``args``; raises :class:`UsageError`."""
    rules = _split(args.rules)
    unknown = [r for r in rules if r not in cases.CASES]
    if unknown or not rules:
        raise UsageError(f"--rules: unknown {unknown or rules!r}; choose from "
                         f"{','.join(cases.CASES)}")
    baselines = _split(args.baselines)
    unknown = [b for b in baselines if b not in mixed.BASELINES]
    if unknown:
        raise UsageError(f"--baselines: unknown {unknown!r}; choose from "
                         f"{','.join(mixed.BASELINES)}")
    use_mixed = args.mixed or bool(baselines)
    if use_mixed and (args.loops or args.threshold):
        raise UsageError(f"{'--mixed' if args.mixed else '--baselines'} excludes "
                         f"{'--loops' if args.loops else '--threshold'}")
    default_dtypes = "float32" if args.threshold else ",".join(cases.DTYPES)
    dtypes = _split(args.dtypes or default_dtypes)
    if not dtypes or any(d not in cases.DTYPES for d in dtypes):
        raise UsageError(f"--dtypes: {args.dtypes!r}; choose from {','.join(cases.DTYPES)}")
    if args.sizes:
        sizes = [_parse_size(s) for s in _split(args.sizes)]
    else:
        sizes = list(suites.THRESHOLD_SIZES if args.threshold else
                     mixed.SIZES if use_mixed else cases.SIZES)
    top = measure.max_threads()
    if args.threads:
        try:
            threads = [int(t) for t in _split(args.threads)]
        except ValueError:
            raise UsageError(f"--threads: {args.threads!r} is not a list of integers") from None
        if not threads:
            raise UsageError(f"--threads: {args.threads!r} lists no thread count")
        for count in threads:   # at most NUMBA_NUM_THREADS
            check_option(check_int, count, "--threads", 1, top)
    else:
        import numba
        threads = [numba.get_num_threads()]
    check_option(check_int, args.repeat, "--repeat", 1)
    check_option(check_real, args.min_time, "--min-time", 0.0, low_open=True, finite=True)
    if args.no_model and args.model_only:
        raise UsageError("--no-model and --model-only exclude each other")
    return dict(rules=rules, dtypes=dtypes, sizes=sizes, threads=threads,
                timing=dict(repeat=args.repeat, min_time=args.min_time),
                mixed=use_mixed, baselines=baselines)


def _torch_version(wanted):
    if not wanted:
        return None
    try:
        return cases.import_torch().__version__  # imported now, so --threads reaches it
    except cases.Unavailable:
        return None


def _meta(options, torch_version):
    import numba
    import numpy

    import fastopt
    from ..kernels import config
    return {"fastopt": fastopt.__version__, "numba": numba.__version__,
            "numpy": numpy.__version__, "torch": torch_version,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "numba_max_threads": measure.max_threads(),
            "parallel_threshold": config.PARALLEL_THRESHOLD,
            "repeat": options["timing"]["repeat"], "min_time": options["timing"]["min_time"]}


def _finish(args, result):
    """Write ``--json`` if asked; the exit status."""
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
            handle.write("\n")
    sys.stdout.flush()
    return 0


def _run_loops(args, options, result, use_torch):
    """``--loops``: the loop table (fastopt.bench.loops)."""
    thread_counts = options["threads"] if args.threads else sorted({1, options["threads"][0]})
    names = [name for name in loops.LOOPS if use_torch or not name.startswith("torch")]
    progress = suites.Progress(loops.loop_count(names, thread_counts))
    try:
        result["loops"] = loops.loop_rows(names, thread_counts, progress)
    finally:
        progress.close()
    print(loops.loop_table(result["loops"]))
    print("\nms per loop iteration (median; blocks of each configuration alternate in one "
          "process); fastopt: default settings; 1 thread: Numba at one thread; torch "
          "fused: torch.optim.Adam(fused=True); x: speed-up of fastopt over that; twin: "
          "what fastopt's loop-timed choice settled on (fastopt.threads)")
    if not use_torch:
        print("\ntorch is not installed: the torch loops are skipped")
    return _finish(args, result)


def _run_mixed(options, result, use_torch):
    """``--mixed`` (or ``--baselines``): the offload step table (fastopt.bench.mixed) and
    the offload loop table (fastopt.bench.offload_loop)."""
    notes = []
    deepspeed = "deepspeed" in options["baselines"]
    if deepspeed and use_torch:
        print("checking DeepSpeed (its CPU Adam op builds with g++ the first time, about a "
              "minute)", file=sys.stderr, flush=True)
        if mixed.deepspeed_note() is not None:
            notes.append(mixed.deepspeed_note())
        result["meta"]["deepspeed"] = mixed.deepspeed_version()
    if not use_torch:
        notes.append("torch is not installed or --no-torch: the torch and DeepSpeed "
                     "sequences and the offload loop (a torch model) are skipped")
    sizes, threads = options["sizes"], options["threads"]
    total = mixed.step_count(sizes, threads)
    total += offload_loop.loop_count(threads) if use_torch else 0
    progress = suites.Progress(total)
    section = result["mixed"] = {"steps": [], "offload_loop": [], "notes": notes}
    try:
        section["steps"] = mixed.step_rows(sizes, threads, torch=use_torch,
                                           deepspeed=deepspeed, progress=progress,
                                           **options["timing"])
        if use_torch:
            section["offload_loop"] = offload_loop.loop_rows(threads, deepspeed, progress)
    finally:
        progress.close()
    print(mixed.step_table(section["steps"]))
    print(f"\n{mixed.STEP_LEGEND}")
    if section["offload_loop"]:
        print()
        print(offload_loop.loop_table(section["offload_loop"]))
        print(f"\n{offload_loop.LOOP_LEGEND}")
    for note in notes:
        print(f"\n{note}")


def run(args):
    options = parse_options(args)
    rules, dtypes, sizes, threads, timing = (options[k] for k in
                                             ("rules", "dtypes", "sizes", "threads", "timing"))
    torch_version = None if args.threshold else _torch_version(not args.no_torch)
    use_torch = torch_version is not None
    result = {"meta": _meta(options, torch_version)}
    if args.loops:
        return _run_loops(args, options, result, use_torch)
    if options["mixed"]:
        _run_mixed(options, result, use_torch)
        return _finish(args, result)
    if args.threshold:
        progress = suites.Progress(suites.threshold_count(rules, dtypes, sizes, threads))
        try:
            rows = suites.threshold_rows(rules, dtypes, sizes, threads, timing, progress)
        finally:
            progress.close()
        found = suites.crossovers(rows)
        suggested = suites.suggested_threshold(found)
        result["threshold"] = {"rows": rows, "crossovers": found, "suggested": suggested}
        print(report.threshold_table(rows))
        print()
        print(report.crossover_table(found))
        print(f"\nsuggested PARALLEL_THRESHOLD: {suggested} (median crossover; currently "
              f"{result['meta']['parallel_threshold']})")
    else:
        kernels = not args.model_only
        model = not args.no_model
        adapter_rules = [] if args.adapter_rules == "none" or not use_torch else _split(
            args.adapter_rules)
        loop_rules = [] if args.loop_rules == "none" else _split(args.loop_rules)
        for option, chosen in (("--adapter-rules", adapter_rules), ("--loop-rules", loop_rules)):
            unknown = set(chosen) - set(cases.RULES)
            if unknown:
                raise UsageError(f"{option}: unknown rule(s) {sorted(unknown)}; "
                                 f"choose from {', '.join(cases.RULES)}")
        total = (suites.kernel_count(rules, dtypes, sizes, threads, use_torch) if kernels
                 else 0) + (suites.model_count(rules, dtypes, threads, use_torch) if model else 0)
        total += suites.adapter_count(adapter_rules, dtypes, threads)
        total += suites.loop_count(loop_rules, dtypes, threads, use_torch)
        progress = suites.Progress(total)
        try:
            if kernels:
                result["kernels"] = suites.kernel_rows(rules, dtypes, sizes, threads, timing,
                                                       use_torch, progress)
            if model:
                result["model"] = suites.model_rows(rules, dtypes, threads, timing,
                                                    use_torch, progress)
                if "adam" in rules and "float32" in dtypes:
                    result["many_arrays"] = suites.many_arrays_row(use_torch)
            if adapter_rules:
                result["adapter"] = suites.adapter_rows(adapter_rules, dtypes, threads,
                                                        timing, progress)
            if loop_rules:
                result["loop"] = suites.loop_rows(loop_rules, dtypes, threads, timing,
                                                  use_torch, progress)
        finally:
            progress.close()
        if kernels:
            print(report.kernel_table(result["kernels"]))
            print("\nstep: whole opt.step(); kernel: the bare kernel call; numpy: "
                  "fastopt.reference; t.*: torch.optim fused/foreach/single-tensor; x: "
                  "speed-up of step over that; GB/s: kernel bytes moved / kernel time; "
                  "triad GB/s: the machine's (same size, threads); of ceiling: the time "
                  "of the same loads and stores without arithmetic over the kernel's, "
                  "timed interleaved with it (1.00: at the ceiling)")
            scaling = report.scaling_rows(result["kernels"])
            if scaling:
                result["scaling"] = scaling
                print()
                print(report.scaling_table(scaling))
                print(f"\nthread scaling: the kernel's time at each thread count and its "
                      f"speed-up over {min(threads)} thread(s); triad x: the machine's "
                      "bandwidth scaling over the same counts")
        if model:
            if kernels:
                print()
            print(report.model_table(result["model"]))
            print("\nstep 1e3: one 1,000-element tensor (per-step overhead); model 200x: "
                  "200 tensors, 1e6 elements (fastopt: one flat buffer)")
            if "many_arrays" in result:
                print()
                print(report.many_arrays_table(result["many_arrays"]))
                print("\nAdam over many separate float32 arrays (a list, not flattened): "
                      "one step, the construction, and the construction with the first "
                      "step (torch allocates its state there), against torch.optim.Adam("
                      "foreach=True) on the same values; medians of 3, alternating")
        if adapter_rules:
            print()
            print(report.adapter_table(result["adapter"]))
            print("\nfastopt.torch: the whole step() of fastopt's torch.optim subclass "
                  "(one flat buffer per group and dtype) on gradients of their own, as "
                  "autograd allocates them after zero_grad(); t.*: torch.optim on the same "
                  "50 tensors; loop: zero_grad() + backward of sum(p.sum()) + step(), "
                  "fastopt.torch and torch fused (same forward and backward on both)")
        if loop_rules:
            print()
            print(report.loop_table(result["loop"]))
            print("\nclip: clip_grad_norm=1 (a norm pass, the coefficient folded into the "
                  "update); zero fused: step(zero_grad=True); step+zero: step() then "
                  "zero_grad(); saving: step+zero over zero fused; t.clip+fused: "
                  "torch clip_grad_norm_ then the fused step; x t.clip: its time over clip")
        if not use_torch and not args.no_torch:
            print("\ntorch is not installed: torch.optim columns are empty")
    return _finish(args, result)
