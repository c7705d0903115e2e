"""Adam with 8-bit blockwise state against float32 and bfloat16 state (issue 13, part 3).

``python -m fastopt.bench.eight_bit [--sizes 1e7,5e7] [--threads 2]`` times, at each
size, interleaved round by round (:func:`measure.interleaved`), parallel twins:

* ``fp32``: :func:`fastopt.kernels.adam.adam` with float32 state: 28 B/element.
* ``bf16 state``: the same kernel over bfloat16 state (``state_dtype="bfloat16"``):
  20 B/element.
* ``8-bit``: :func:`fastopt.kernels.adam8bit.adam8bit`: 16 B/element and two float32
  scales per 256 elements, read and written (16.06 B).
* ``ceiling 8-bit`` / ``ceiling fp32``: the same loads and stores without the
  arithmetic (:func:`no_arithmetic` here; :mod:`.ceiling`'s rotation for fp32).
* ``torch fused``: ``torch.optim.Adam(fused=True)`` over one float32 tensor, when torch
  imports (28 B/element).

Measured (2 threads, 2-core shared AMD EPYC with AVX-512, quiet wrapper, three runs,
median of 7-9 interleaved rounds): at 5e7 elements the 8-bit kernel is 1.23-1.40x
faster than fp32 Adam (and than torch fused, which runs at fp32's speed) but 0.88-0.98x
the bf16-state kernel; at 1e7, 0.94-1.36x fp32 (behind it when the machine gave fp32
80 GB/s). It runs at 0.36-0.39 ns/element whatever the size and the bandwidth: 41-45
GB/s of its 16 B against 53-63 GB/s for fp32's 28 B, 0.71-0.80 of its own no-arithmetic
ceiling. What limits it is compute, not memory: in cache (32K elements, serial twin)
it takes 0.47-0.53 ns/element against fp32 Adam's 0.14-0.17 (the second pass, two
square roots for the codes, the noise hash and the byte packing, about 0.2 of it; the
hash alone 0.06-0.08; the first pass's decode, scratch stores and maxima the rest), so
at two threads its arithmetic (~0.25 ns/element) is as long as its memory traffic
(~0.27) and the two only partly overlap. Interleaving the second pass of one block with
the first pass of the next (software pipelining) was slower (0.44 ns/element at 5e7).

Also :func:`reference_step`: the 8-bit step transcribed in plain NumPy (the tests' oracle,
bitwise), and :func:`new_state`.
"""

import argparse

import numpy as np
from numba import prange

from ..kernels import unused
from ..kernels.halves import noise_key
from ..kernels.adam8bit import BLOCK, M_LEVELS, S_LEVELS, adam8bit, blocks
from ..kernels.config import kernel
from .. import reference
from . import cases, ceiling, measure

SIZES = (10_000_000, 50_000_000)
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
BYTES = {"fp32": 28, "bf16 state": 20, "8-bit": 16 + 16 / BLOCK,
         "ceiling 8-bit": 16, "ceiling fp32": 28, "torch fused": 28}


def new_state(size):
    """The zero 8-bit state of ``size`` elements: ``exp_avg`` (int8), ``exp_avg_sq``
    (uint8) and their per-block scales (float32)."""
    return {"exp_avg": np.zeros(size, np.int8), "exp_avg_sq": np.zeros(size, np.uint8),
            "exp_avg_absmax": np.zeros(blocks(size), np.float32),
            "exp_avg_sq_absmax": np.zeros(blocks(size), np.float32)}


def scalars(step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
            decoupled=False, grad_factor=1.0, seed=0):
    """The kernel's scalars (float32, by name) at step ``step`` (from 1), bias
    corrections in float64 first, as the rules compute them; ``noise_key`` from
    :func:`fastopt.kernels.halves.noise_key` of the step and ``seed``."""
    f = np.float32
    return {"step_size": f(lr / (1 - beta1 ** step)), "beta1": f(beta1),
            "one_minus_beta1": f(1 - beta1), "beta2": f(beta2),
            "one_minus_beta2": f(1 - beta2),
            "inv_sqrt_bias_correction2": f(1 / np.sqrt(1 - beta2 ** step)), "eps": f(eps),
            "weight_decay": f(0.0 if decoupled else weight_decay),
            "param_decay": f(1 - lr * weight_decay if decoupled else 1.0),
            "grad_factor": f(grad_factor), "noise_key": f(noise_key(step, 0, seed))}


def step(param, grad, state, step_number, **hyper):
    """One 8-bit Adam step through the kernel (the twin chosen by size)."""
    adam8bit(param, grad, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_absmax"],
             state["exp_avg_sq_absmax"], unused(np.uint16),
             *scalars(step_number, **hyper).values(), False, False)


def reference_step(param, grad, state, step_number, **hyper):
    """:func:`step` in plain NumPy, operation for operation in float32: the same bits."""
    k = scalars(step_number, **hyper)
    f = np.float32
    n = param.shape[0]
    padded = blocks(n) * BLOCK

    def blocked(array, dtype):
        out = np.zeros(padded, dtype)
        out[:n] = array
        return out.reshape(-1, BLOCK)

    m_squares, s_squares = f(M_LEVELS * M_LEVELS), f(S_LEVELS * S_LEVELS)
    c = blocked(state["exp_avg"], np.float32)
    u = blocked(state["exp_avg_sq"], np.float32)
    m_unit = (state["exp_avg_absmax"] / m_squares)[:, None]
    s_unit = (state["exp_avg_sq_absmax"] / s_squares)[:, None]
    p = blocked(param, np.float32) * k["param_decay"]
    g = blocked(grad, np.float32) * k["grad_factor"]
    if k["weight_decay"] != 0:
        g = g + k["weight_decay"] * p
    s_old = (u * u) * s_unit
    m = k["beta1"] * ((c * np.abs(c)) * m_unit) + k["one_minus_beta1"] * g
    v = k["beta2"] * (s_old * s_old) + k["one_minus_beta2"] * g * g
    s = np.sqrt(v)
    q = p - (k["step_size"] * m) / (s * k["inv_sqrt_bias_correction2"] + k["eps"])
    m_absmax, s_absmax = np.abs(m).max(axis=1), s.max(axis=1)

    def gain(squares, absmax):
        ok = (absmax > 0) & (absmax < np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ok, squares / absmax, f(0)).astype(np.float32)[:, None]

    half = f(0.5)
    c_new = np.minimum(np.sqrt(np.abs(m) * gain(m_squares, m_absmax)) + half, f(127))
    c_new = c_new.astype(np.int32)
    c_new = np.where(m < 0, -c_new, c_new)
    noise = reference.state_noise(k["noise_key"], padded).reshape(-1, BLOCK)
    r = (noise >> np.uint32(8)).astype(np.float32) * f(2.0 ** -24)
    u_new = np.minimum(np.sqrt(s * gain(s_squares, s_absmax)) + r, f(255)).astype(np.int32)
    param[...] = q.reshape(-1)[:n]
    state["exp_avg"][...] = c_new.reshape(-1)[:n].astype(np.int8)
    state["exp_avg_sq"][...] = u_new.reshape(-1)[:n].astype(np.uint8)
    state["exp_avg_absmax"][...] = m_absmax
    state["exp_avg_sq_absmax"][...] = s_absmax


def decode(state):
    """``(m, v)`` in float32 from the 8-bit state, as the kernel decodes them."""
    f = np.float32
    scale = np.repeat(state["exp_avg_absmax"] / f(M_LEVELS * M_LEVELS), BLOCK)
    n = state["exp_avg"].shape[0]
    c = state["exp_avg"].astype(np.float32)
    u = state["exp_avg_sq"].astype(np.float32)
    s_unit = np.repeat(state["exp_avg_sq_absmax"] / f(S_LEVELS * S_LEVELS), BLOCK)[:n]
    s = (u * u) * s_unit
    return (c * np.abs(c)) * scale[:n], s * s


@kernel
def no_arithmetic(param, grad, exp_avg, exp_avg_sq):
    """The 8-bit step's loads and stores without its arithmetic: reads ``param``,
    ``grad``, ``exp_avg`` (int8), ``exp_avg_sq`` (uint8); writes the three others (the
    state bytes swap; ``param`` takes a compare-and-select with ``grad``)."""
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        param[i] = p if p > g else g
        c = exp_avg[i]
        exp_avg[i] = np.int8(exp_avg_sq[i])
        exp_avg_sq[i] = np.uint8(c)


def eight_bit_call(size, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size, dtype=np.float32)
    grad = rng.standard_normal(size, dtype=np.float32) * np.float32(0.1)
    state = new_state(size)
    step(param, grad, state, 1)          # non-zero codes and scales
    args = (param, grad, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_absmax"],
            state["exp_avg_sq_absmax"], unused(np.uint16),
            *scalars(cases.STEP, **HYPER).values())
    twin = adam8bit.variant(zero_grad=False, write_copy=False).parallel
    return lambda: twin(*args)


def ceiling_8bit_call(size, seed=0):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size, dtype=np.float32)
    grad = rng.standard_normal(size, dtype=np.float32)
    m = rng.integers(-127, 128, size, dtype=np.int8)
    v = rng.integers(0, 256, size, dtype=np.uint8)
    return lambda: no_arithmetic.parallel(param, grad, m, v)


def torch_call(size, seed=0):
    import torch
    generator = torch.Generator().manual_seed(seed)
    param = torch.nn.Parameter(torch.randn(size, generator=generator))
    param.grad = torch.randn(size, generator=generator) * 0.1
    opt = torch.optim.Adam([param], lr=HYPER["lr"], fused=True)
    return opt.step


def calls(size, torch=True):
    """name -> one call, for every implementation (torch's only when it imports)."""
    found = {"fp32": cases.kernel_call(cases.CASES["adam"], size, "float32", "parallel"),
             "bf16 state": cases.kernel_call(cases.CASES["adam-bf16state"], size,
                                             "float32", "parallel"),
             "8-bit": eight_bit_call(size),
             "ceiling 8-bit": ceiling_8bit_call(size),
             "ceiling fp32": ceiling.ceiling_call(cases.CASES["adam"], size, "float32",
                                                  "parallel")}
    if torch:
        try:
            found["torch fused"] = torch_call(size)
        except ImportError:
            pass
    return found


def rows(sizes=SIZES, threads=None, repeat=measure.REPEAT, min_time=measure.MIN_TIME,
         torch=True):
    """One row per size: seconds per call of each implementation, interleaved."""
    import numba
    out = []
    with measure.threads(threads):
        for size in sizes:
            made = calls(size, torch)
            seconds = measure.interleaved(made, repeat, min_time)
            del made
            out.append({"size": size, "threads": numba.get_num_threads(),
                        "seconds": seconds})
    return out


def report(found):
    from .report import fmt_size, fmt_time, table
    names = list(found[0]["seconds"])
    headers = ["size", "thr", *names, "fp32/8-bit", "bf16/8-bit", "8-bit of ceiling",
               "8-bit ns/el", "8-bit GB/s", "fp32 GB/s"]
    body = []
    for row in found:
        sec, size = row["seconds"], row["size"]
        body.append([fmt_size(size), row["threads"], *(fmt_time(sec[n]) for n in names),
                     f"{sec['fp32'] / sec['8-bit']:.2f}",
                     f"{sec['bf16 state'] / sec['8-bit']:.2f}",
                     f"{sec['ceiling 8-bit'] / sec['8-bit']:.2f}",
                     f"{sec['8-bit'] / size * 1e9:.3f}",
                     f"{BYTES['8-bit'] * size / sec['8-bit'] / 1e9:.1f}",
                     f"{BYTES['fp32'] * size / sec['fp32'] / 1e9:.1f}"])
    return table(headers, body, [">"] * len(headers))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastopt.bench.eight_bit",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e7,5e7", help="comma-separated sizes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=measure.REPEAT)
    parser.add_argument("--min-time", type=float, default=measure.MIN_TIME)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    found = rows(sizes, args.threads, args.repeat, args.min_time, not args.no_torch)
    print(report(found))
    print("\nmedian of interleaved rounds; x/8-bit: x's time over the 8-bit kernel's "
          "(above 1: 8-bit is faster); of ceiling: the 8-bit ceiling's time over the "
          "kernel's; bytes per element: fp32 28, bf16 state 20, 8-bit 16.06")


if __name__ == "__main__":
    main()
