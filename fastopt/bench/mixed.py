"""The one-pass mixed-precision Adam step against the multi-pass sequence it replaces.

``fastopt bench --mixed [--baselines deepspeed]`` (or ``python -m fastopt.bench.mixed
[--sizes 1e6,1e7,5e7] [--deepspeed]``) times, at each size and thread count (Numba and
torch alike), interleaved round by round:

* ``fastopt``: :func:`fastopt.offload.adam_step` (bf16 gradient in, loss scale folded in,
  fp32 master and state updated, bf16 copy out): 28 bytes per element.
* ``ceiling``: a kernel with exactly fastopt's loads and stores and no arithmetic
  (:func:`no_arithmetic`): the fastest this memory layout can go on this machine.
* ``torch 3-pass``: unscale ``grad32.copy_(grad_bf16).mul_(1/scale)``, the fp32
  ``torch.optim.Adam(fused=True)`` step, ``copy_bf16.copy_(master)``: 48 bytes per
  element as written (an unscale fused into the cast would make it 42).
* ``deepspeed 3-pass`` (when asked for and DeepSpeed imports and builds its op;
  :func:`deepspeed_note` says why not otherwise): the same sequence with
  ``DeepSpeedCPUAdam`` as the step. DeepSpeed JIT-builds the op with g++ the first time
  (about a minute), then loads it from torch's extension cache.

Each measurement is the median over ``repeat`` rounds; within a round every
implementation runs its loop once, so drift on a shared machine hits all alike.
The whole training loop around this step is :mod:`.offload_loop`.
"""

import argparse
import functools

import numpy as np
from numba import prange

from ..kernels.config import kernel
from . import cases, measure

SIZES = (1_000_000, 10_000_000)
LOSS_SCALE = 1024.0
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
STEP = 10

#: Optional baselines ``fastopt bench --baselines`` takes (torch's is on unless --no-torch).
BASELINES = ("deepspeed",)


@kernel
def no_arithmetic(param, grad, exp_avg, exp_avg_sq, param_copy):
    """The mixed Adam step's memory traffic without its arithmetic: reads ``param``,
    ``grad`` (uint16), ``exp_avg``, ``exp_avg_sq``; writes ``param``, ``exp_avg``,
    ``exp_avg_sq`` and ``param_copy`` (uint16), each element once (values rotate)."""
    for i in prange(param.shape[0]):
        p = param[i]
        param[i] = exp_avg[i]
        exp_avg[i] = exp_avg_sq[i]
        exp_avg_sq[i] = p
        param_copy[i] = grad[i]


def fastopt_call(size, seed=0):
    import ml_dtypes

    from ..offload import adam_step
    rng = np.random.default_rng(seed)
    master = rng.standard_normal(size, dtype=np.float32)
    grad = (rng.standard_normal(size, dtype=np.float32) * LOSS_SCALE * 0.1).astype(
        ml_dtypes.bfloat16)
    exp_avg, exp_avg_sq = np.zeros(size, np.float32), np.zeros(size, np.float32)
    out = np.empty(size, ml_dtypes.bfloat16)

    def call():
        adam_step(master, grad, exp_avg, exp_avg_sq, step=STEP, loss_scale=LOSS_SCALE,
                  out=out, **HYPER)
    return call


def ceiling_call(size, seed=0):
    rng = np.random.default_rng(seed)
    buffers = [rng.standard_normal(size, dtype=np.float32) for _ in range(3)]
    grad = np.ones(size, np.uint16)
    out = np.empty(size, np.uint16)

    def call():
        no_arithmetic(buffers[0], grad, buffers[1], buffers[2], out)
    return call


def sequence(optimizer, master, grad_half, copy_half, loss_scale=LOSS_SCALE):
    """The three-pass step as an offload engine without a one-pass step runs it:
    ``master`` is the fp32 ``Parameter`` ``optimizer`` steps (its ``.grad`` an fp32
    buffer of its own), ``grad_half`` the half gradient that came in, ``copy_half`` the
    half copy that goes back."""
    import torch
    inverse = 1.0 / loss_scale

    def call():
        with torch.no_grad():
            master.grad.copy_(grad_half).mul_(inverse)       # unscale: fp32 gradient
        optimizer.step()                                     # the fp32 step
        with torch.no_grad():
            copy_half.copy_(master)                          # the half copy
    return call


def sequence_call(size, optimizer_class, seed=0, **options):
    """The three-pass sequence with ``optimizer_class`` as the fp32 step."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    master = torch.nn.Parameter(torch.randn(size, generator=generator))
    master.grad = torch.zeros(size)
    grad_bf16 = (torch.randn(size, generator=generator) * LOSS_SCALE * 0.1).bfloat16()
    copy_bf16 = torch.empty(size, dtype=torch.bfloat16)
    opt = optimizer_class([master], **HYPER, **options)
    call = sequence(opt, master, grad_bf16, copy_bf16)
    call.master, call.copy = master, copy_bf16               # for tests
    return call


def torch_call(size):
    import torch
    return sequence_call(size, torch.optim.Adam, fused=True)


def deepspeed_optimizer(params, **hyperparameters):
    """``DeepSpeedCPUAdam`` in Adam mode (L2 weight decay, as ``torch.optim.Adam``) over
    ``params``; raises :class:`~.cases.Unavailable` with :func:`deepspeed_note`'s text
    when DeepSpeed cannot run here."""
    note = deepspeed_note()
    if note is not None:
        raise cases.Unavailable(note)
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    return DeepSpeedCPUAdam(params, adamw_mode=False, **hyperparameters)


def deepspeed_call(size):
    return sequence_call(size, deepspeed_optimizer)


@functools.cache
def deepspeed_note():
    """``None`` when DeepSpeed's CPU Adam runs in this process, else one line saying why
    not (not installed, or its op failed to build or load). The first call builds the op
    (g++, about a minute, once per machine: torch's extension cache keeps it)."""
    try:
        import deepspeed
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError as exc:
        return f"DeepSpeed is not installed ({exc}): its baseline is skipped"
    except Exception as exc:   # noqa: BLE001 -- an import that half-works says why
        return f"DeepSpeed does not import ({type(exc).__name__}: {_first_line(exc)}): " \
               "its baseline is skipped"
    try:
        import torch
        DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(1))], adamw_mode=False)
    except Exception as exc:   # noqa: BLE001 -- a failed g++ build raises what it raises
        cause = exc.__cause__ or exc
        return (f"DeepSpeed {deepspeed.__version__}'s CPU Adam op did not build or load "
                f"({type(cause).__name__}: {_first_line(cause)}): its baseline is skipped")
    return None


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def deepspeed_version():
    """DeepSpeed's version when its baseline runs here, else ``None``."""
    if deepspeed_note() is not None:
        return None
    import deepspeed
    return deepspeed.__version__


BYTES = {"fastopt": 28, "ceiling": 28, "torch 3-pass": 48, "deepspeed 3-pass": 48}


def step_count(sizes, thread_counts):
    return len(sizes) * len(thread_counts)


def step_rows(sizes=SIZES, thread_counts=(None,), repeat=measure.REPEAT,
              min_time=measure.MIN_TIME, torch=True, deepspeed=False, progress=None):
    """One row per thread count and size (``None``: the process's count): seconds per
    call of each implementation, interleaved (:func:`measure.interleaved`), its GB/s
    (:data:`BYTES` over its time), fastopt's speed-up over it (its time over fastopt's)
    and fastopt's fraction of the ceiling (ceiling time over fastopt's: 1 is at it).
    ``deepspeed`` adds its sequence only when :func:`deepspeed_note` is ``None``."""
    import numba
    deepspeed = deepspeed and torch and deepspeed_note() is None
    rows = []
    for threads in thread_counts:
        with measure.threads(threads):
            for size in sizes:
                calls = {"fastopt": fastopt_call(size), "ceiling": ceiling_call(size)}
                if torch:
                    calls["torch 3-pass"] = torch_call(size)
                if deepspeed:
                    calls["deepspeed 3-pass"] = deepspeed_call(size)
                seconds = measure.interleaved(calls, repeat, min_time)
                del calls
                own = seconds["fastopt"]
                rows.append({
                    "size": size, "threads": numba.get_num_threads(),
                    "seconds": seconds,
                    "gbps": {name: BYTES[name] * size / value / 1e9
                             for name, value in seconds.items()},
                    "speedups": {name: value / own for name, value in seconds.items()
                                 if name not in ("fastopt", "ceiling")},
                    "of_ceiling": seconds["ceiling"] / own})
                if progress is not None:
                    progress.step(f"mixed step {size} {threads} thr")
    return rows


STEP_HEADERS = ["size", "thr", "fastopt", "ceiling", "of ceiling", "torch 3-pass",
                "deepspeed 3-pass", "x torch", "x deepspeed", "GB/s"]


def step_table(rows):
    from .report import fmt_ratio, fmt_size, fmt_time, table
    body = []
    for row in rows:
        seconds, speedups = row["seconds"], row["speedups"]
        body.append([fmt_size(row["size"]), row["threads"], fmt_time(seconds["fastopt"]),
                     fmt_time(seconds["ceiling"]), f"{row['of_ceiling']:.2f}",
                     fmt_time(seconds.get("torch 3-pass")),
                     fmt_time(seconds.get("deepspeed 3-pass")),
                     fmt_ratio(speedups.get("torch 3-pass")),
                     fmt_ratio(speedups.get("deepspeed 3-pass")),
                     f"{row['gbps']['fastopt']:.1f}"])
    return table(STEP_HEADERS, body, [">"] * len(STEP_HEADERS))


STEP_LEGEND = ("one Adam step over a flat buffer, bf16 gradient in (loss scale "
               f"{LOSS_SCALE:g} folded in), fp32 master and state, bf16 copy out; fastopt: "
               "fastopt.offload.adam_step, one pass (28 B/element); ceiling: the same loads "
               "and stores without arithmetic; of ceiling: its time over fastopt's; torch / "
               "deepspeed 3-pass: unscale into an fp32 gradient, torch.optim.Adam(fused=True) "
               "/ DeepSpeedCPUAdam step, cast the bf16 copy (48 B/element); x: their time "
               "over fastopt's; GB/s: fastopt's; median of interleaved rounds")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastopt.bench.mixed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated sizes")
    parser.add_argument("--deepspeed", action="store_true",
                        help="add DeepSpeedCPUAdam's sequence (JIT-builds its op)")
    parser.add_argument("--repeat", type=int, default=measure.REPEAT)
    parser.add_argument("--min-time", type=float, default=measure.MIN_TIME)
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    import numba
    import torch
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}")
    print(step_table(step_rows(sizes, repeat=args.repeat, min_time=args.min_time,
                               deepspeed=args.deepspeed)))
    print(f"\n{STEP_LEGEND}")
    if args.deepspeed and deepspeed_note() is not None:
        print(deepspeed_note())


if __name__ == "__main__":
    main()
