"""The one-pass mixed-precision Adam step against the multi-pass sequence it replaces.

``python -m fastopt.bench.mixed [--sizes 1e6,1e7,5e7] [--deepspeed]`` times, at each size,
with the process's thread count (Numba and torch alike), interleaved round by round:

* ``fastopt``: :func:`fastopt.offload.adam_step` (bf16 gradient in, loss scale folded in,
  fp32 master and state updated, bf16 copy out): 28 bytes per element.
* ``torch 3-pass``: unscale ``grad32.copy_(grad_bf16).mul_(1/scale)``, the fp32
  ``torch.optim.Adam(fused=True)`` step, ``copy_bf16.copy_(master)``: 48 bytes per
  element as written (an unscale fused into the cast would make it 42).
* ``ceiling``: a kernel with exactly fastopt's loads and stores and no arithmetic
  (:func:`no_arithmetic`): the fastest this memory layout can go on this machine.
* ``deepspeed 3-pass`` (``--deepspeed``, when DeepSpeed imports): the same sequence with
  ``DeepSpeedCPUAdam`` as the step.

Each measurement is the median over ``repeat`` rounds; within a round every
implementation runs its loop once, so drift on a shared machine hits all alike.
"""

import argparse

import numpy as np
from numba import prange

from ..kernels.config import kernel
from . import measure

SIZES = (1_000_000, 10_000_000)
LOSS_SCALE = 1024.0
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
STEP = 10


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


def sequence_call(size, optimizer_class, seed=0, **options):
    """The three-pass sequence with ``optimizer_class`` as the fp32 step."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    master = torch.nn.Parameter(torch.randn(size, generator=generator))
    master.grad = torch.zeros(size)
    grad_bf16 = (torch.randn(size, generator=generator) * LOSS_SCALE * 0.1).bfloat16()
    copy_bf16 = torch.empty(size, dtype=torch.bfloat16)
    opt = optimizer_class([master], **HYPER, **options)
    inverse = 1.0 / LOSS_SCALE

    def call():
        with torch.no_grad():
            master.grad.copy_(grad_bf16).mul_(inverse)       # unscale: fp32 gradient
        opt.step()                                           # the fp32 step
        with torch.no_grad():
            copy_bf16.copy_(master)                          # the bf16 copy
    call.master, call.copy = master, copy_bf16               # for tests
    return call


def torch_call(size):
    import torch
    return sequence_call(size, torch.optim.Adam, fused=True)


def deepspeed_call(size):
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    return sequence_call(size, DeepSpeedCPUAdam, adamw_mode=False)


BYTES = {"fastopt": 28, "ceiling": 28, "torch 3-pass": 48, "deepspeed 3-pass": 48}


def run(sizes=SIZES, deepspeed=False, repeat=measure.REPEAT, min_time=measure.MIN_TIME):
    """Rows ``(size, name, seconds, GB/s, speed-up of fastopt over it)``."""
    rows = []
    for size in sizes:
        calls = {"fastopt": fastopt_call(size), "ceiling": ceiling_call(size),
                 "torch 3-pass": torch_call(size)}
        if deepspeed:
            calls["deepspeed 3-pass"] = deepspeed_call(size)
        times = measure.interleaved(calls, repeat, min_time)
        for name, seconds in times.items():
            rows.append((size, name, seconds, BYTES[name] * size / seconds / 1e9,
                         seconds / times["fastopt"]))
        del calls
    return rows


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
    print(f"{'size':>10} {'implementation':<18} {'ms':>9} {'GB/s':>7} {'fastopt x':>10}")
    for size, name, seconds, gbps, ratio in run(sizes, args.deepspeed, args.repeat,
                                                 args.min_time):
        print(f"{size:>10.0e} {name:<18} {seconds * 1e3:>9.3f} {gbps:>7.1f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
