"""Guard the kernels' vectorization on x86: each float32 kernel, compiled afresh with
its twin's own options, must use packed SIMD on ymm/zmm registers (``vsqrtps`` and
``vdivps`` for the rules that take a square root, packed multiply or FMA for SGD) and
never widen float32 to float64 (``vcvtps2pd``/``vcvtss2sd``), the promotion that halves
the SIMD width (see DESIGN.md, Kernels).

Numba will not disassemble code loaded from its cache, so each twin is recompiled
uncached from its own Python function and target options.

The assembly shows that a vector loop exists, not that a call takes it: LLVM guards the
vector loop with a run-time check that the array arguments do not overlap. A second test
checks that no kernel call from the optimizers passes overlapping arrays (no timing: the
machines that run the tests are shared and noisy; speed is in ``fastopt bench`` and asv).
"""

import platform
import re

import numba
import pytest

import fastopt
from cases import CASES, RULES, case_id
from fastopt.bench import cases as bench_cases

X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386", "x86")


def _has_avx2():
    try:
        from llvmlite import binding
        return bool(binding.get_host_cpu_features().get("avx2"))
    except Exception:  # pragma: no cover - no feature query: assume a modern x86 host
        return True


pytestmark = [
    pytest.mark.skipif(not X86, reason="x86-only: checks AVX2/AVX-512 instructions"),
    pytest.mark.skipif(X86 and not _has_avx2(), reason="host CPU has no AVX2"),
]

PACKED = r"[^\n]*%[yz]mm"
NEEDED = {
    "sqrt": [rf"\bvsqrtps\b{PACKED}", rf"\bvdivps\b{PACKED}"],
    "fma": [rf"\b(vmulps|vfn?m(add|sub)\d+ps)\b{PACKED}"],
}
#: One case per kernel (adamw shares adam's kernel) and what its loop must contain.
KERNELS = {"sgd": "fma", "adagrad": "sqrt", "rmsprop": "sqrt", "adam": "sqrt"}


def _assembly(variant, twin, args):
    """The assembly of ``variant``'s ``twin``, compiled afresh (uncached) for ``args``."""
    dispatcher = getattr(variant, twin)
    options = {k: v for k, v in dispatcher.targetoptions.items()
               if k not in ("cache", "nopython")}
    fresh = numba.njit(**options)(dispatcher.py_func)
    fresh(*args)
    (signature,) = fresh.signatures
    return fresh.inspect_asm(signature)


def _assert_vectorized(asm, needed, what):
    for pattern in needed:
        assert re.search(pattern, asm), f"{what}: no {pattern!r} in the assembly"
    widened = re.findall(r"\bv?cvt(ps2pd|ss2sd)\b[^\n]*", asm)
    assert not widened, f"{what} widens float32 to float64: {widened[:3]}"


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("rule", list(KERNELS))
def test_float32_kernel_vectorized(rule, twin):
    case = bench_cases.CASES[rule]
    variant, args = case.kernel.resolve(bench_cases.kernel_args(case, 64, "float32"))
    _assert_vectorized(_assembly(variant, twin, args), NEEDED[KERNELS[rule]],
                       f"{rule} ({twin})")


#: What the half-precision loads and stores compile to, vectorized: bf16 widens by a
#: packed 16-bit left shift and narrows by a packed right shift of the rounded bits;
#: float16 converts with F16C's packed ``vcvtph2ps`` / ``vcvtps2ph``.
HALF_NEEDED = {
    "bfloat16": [rf"\bvpslld\b{PACKED}", rf"\bvpsrld\b{PACKED}"],
    "float16": [rf"\bvcvtph2ps\b{PACKED}", rf"\bvcvtps2ph\b{PACKED}"],
}


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("fmt", list(HALF_NEEDED))
@pytest.mark.parametrize("rule", [r for r in KERNELS if r in bench_cases.MIXED_RULES])
def test_mixed_kernel_vectorized(rule, fmt, twin):
    """The fp32-master variant with a half gradient and a half copy vectorizes like the
    float32 kernel: packed arithmetic, packed conversions, no float64."""
    case = bench_cases.CASES[rule]
    variant, args = case.kernel.resolve(bench_cases.mixed_kernel_args(case, 64, fmt, fmt))
    assert variant.flags["write_copy"]
    _assert_vectorized(_assembly(variant, twin, args),
                       NEEDED[KERNELS[rule]] + HALF_NEEDED[fmt], f"{rule} {fmt} ({twin})")


#: bfloat16 state: loads widen by a packed shift, the noise hash multiplies packed 32-bit
#: integers, stores add the noise and shift back.
#: Options that give a rule all of its state buffers.
STATEFUL = {"sgd": {"momentum": 0.9}, "rmsprop": {"centered": True, "momentum": 0.9}}
STATE_NEEDED = [rf"\bvpslld\b{PACKED}", rf"\bvpmulld\b{PACKED}", rf"\bvpsrld\b{PACKED}"]


def _front_end_call(cls, params, **hyper):
    """``(variant, args)`` of the kernel call one step of ``cls(params, **hyper)`` makes."""
    import numpy as np

    from fastopt.kernels.config import Variant

    calls = []
    original = Variant.__call__

    def spy(self, *args):
        calls.append((self, args))
        return original(self, *args)

    Variant.__call__ = spy
    try:
        cls(params, **hyper).step([np.ones_like(p) for p in params])
    finally:
        Variant.__call__ = original
    (call,) = calls
    return call


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("rule", [r for r in KERNELS
                                  if fastopt.rules.RULES[r].low_precision_state])
def test_bf16_state_kernel_vectorized(rule, twin):
    """With ``state_dtype="bfloat16"`` the kernel vectorizes like the float32 one: packed
    arithmetic, packed loads, hash and stochastic-rounding stores, no float64."""
    import numpy as np

    cls = getattr(fastopt, fastopt.rules.RULES[rule].class_name)
    variant, args = _front_end_call(cls, [np.ones(64, np.float32)], state_dtype="bfloat16",
                                    **STATEFUL.get(rule, {}))
    held = [a for a in args if getattr(a, "dtype", None) == np.uint16 and a.size == 64]
    assert len(held) == {"sgd": 1, "adagrad": 1, "rmsprop": 3, "adam": 2}[rule]
    _assert_vectorized(_assembly(variant, twin, args), NEEDED[KERNELS[rule]] + STATE_NEEDED,
                       f"{rule} bf16 state ({twin})")


#: The norm pass squares in float64 (a float32 square can overflow): its lane loop must
#: widen with packed ``vcvtps2pd`` (after the packed half loads) and add in packed float64.
#: The 32- and 16-bit formats sum in float64 lanes (packed conversions and arithmetic);
#: float64 keeps eight scalar chains, measured faster there (``block_squares``).
NORM_NEEDED = {
    "float32": [rf"\bvcvtps2pd\b{PACKED}"],
    "bfloat16": [rf"\bvpslld\b{PACKED}", rf"\bvcvtps2pd\b{PACKED}"],
    "float16": [rf"\bvcvtph2ps\b{PACKED}", rf"\bvcvtps2pd\b{PACKED}"],
}
NORM_BITS = {"float32": "float32", "bfloat16": "uint16", "float16": "int16",
             "float64": "float64"}


@pytest.mark.parametrize("twin", ["serial", "parallel"])
@pytest.mark.parametrize("fmt", list(NORM_NEEDED))
def test_norm_pass_vectorized(fmt, twin):
    """``sum_squares`` (the global-norm pass) over 32- and 16-bit gradients compiles to
    packed float64 arithmetic."""
    import numpy as np

    from fastopt.kernels.reductions import block_table, sum_squares
    grad = np.ones(3 * 64 + 5, dtype=NORM_BITS[fmt])
    offsets, block_offsets = block_table((grad.shape[0],))
    args = (grad, offsets, block_offsets, np.empty(int(block_offsets[-1])), np.empty(1))
    asm = _assembly(sum_squares.variant(), twin, args)
    for pattern in NORM_NEEDED[fmt] + [rf"\b(vaddpd|vfn?m(add|sub)\d+pd)\b{PACKED}",
                                       rf"\b(vmulpd|vfn?m(add|sub)\d+pd)\b{PACKED}"]:
        assert re.search(pattern, asm), f"sum_squares {fmt} ({twin}): no {pattern!r}"


def _array_address_ranges(args):
    import numpy as np
    return [(a.__array_interface__["data"][0], a.nbytes, k)
            for k, a in enumerate(args) if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_no_kernel_call_passes_aliasing_arrays(case, monkeypatch):
    """LLVM guards each vector loop with a run-time check that no two array arguments
    overlap (each taken as ``n`` elements from its start); when it fails, the scalar loop
    runs (RMSprop fp32 ran 10x slower with ``param[:0]`` as its unused-state dummy, and
    its parallel twin 2.4x slower with one dummy for both unused buffers). So no kernel
    call from the optimizers may pass two arrays that start at the same address or
    overlap: unused state is ``kernels.unused(dtype, slot)``, separate allocations."""
    import numpy as np

    from fastopt.kernels.config import Variant

    calls = []
    original = Variant.__call__

    def spy(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(Variant, "__call__", spy)
    rule, options = case
    cls, _, lr = RULES[rule]
    flat = fastopt.flatten([np.ones((3, 4), np.float32), np.ones(5, np.float32)])
    cls(flat, lr=lr, **options).step()
    assert calls
    for args in calls:
        spans = sorted(_array_address_ranges(args))
        for (start, size, i), (nxt, _, j) in zip(spans, spans[1:]):
            assert nxt != start and nxt >= start + size, (
                f"{rule} {options}: kernel array arguments {i} and {j} alias")


@pytest.mark.parametrize("rule", [r for r, spec in fastopt.rules.RULES.items()
                                  if spec.low_precision_state])
def test_float32_state_kernel_drops_the_unused_noise_hash(rule):
    """With float32 state the stochastic rounding's hash is dead code: no packed 32-bit
    integer multiply survives, so float32 state pays nothing for bf16 state's support."""
    import numpy as np

    cls = getattr(fastopt, fastopt.rules.RULES[rule].class_name)
    variant, args = _front_end_call(cls, [np.ones(64, np.float32)], **STATEFUL.get(rule, {}))
    asm = _assembly(variant, "serial", args)
    assert not re.search(r"\bvpmulld\b", asm)
