"""Half-precision loads and stores inside the kernels: ``widen``, ``narrow_to`` and
``store_state`` (with ``state_noise``).

Numba's CPU target has no 16-bit float type (a ``float16`` array argument raises
``NotImplementedError``) and no bfloat16 at all, so half-precision buffers travel as
16-bit integer views of their bits, and the kernel's dispatch on argument types picks
the conversion, with no compile-time option and one body per rule:

* ``uint16`` holds **bfloat16** bits (``ml_dtypes.bfloat16`` arrays ``.view(np.uint16)``;
  ``torch.bfloat16`` tensors ``.view(torch.int16).numpy().view(np.uint16)``).
* ``int16`` holds **float16** bits (``np.float16`` arrays ``.view(np.int16)``;
  ``torch.float16`` tensors ``.view(torch.int16).numpy()``).
* ``float32`` and ``float64`` are themselves.

``widen(x)`` turns one loaded element into a float: bf16 bits shifted into the top half
of a float32 (exact), float16 by LLVM's ``fpext half to float`` (exact; ``vcvtph2ps``),
float32/float64 unchanged. ``narrow_to(out, x)`` turns a float32 value into ``out``'s
element type, rounding to nearest even as ``torch``'s ``.to(torch.bfloat16)`` /
``.to(torch.float16)`` and NumPy's casts do (bitwise, for every value but NaN, whose
payload bits are implementation-defined: torch's own vector and scalar paths disagree):

* bf16: the integer rounding ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``; a NaN
  keeps its sign and top payload bits and is made quiet (``| 0x40``), as ``ml_dtypes``
  and ``vcvtneps2bf16`` do, so it never rounds into an infinity.
* float16: LLVM's ``fptrunc float to half`` (``vcvtps2ph``, round to nearest even;
  overflow gives Inf, NaN stays a quiet NaN).

**Low-precision state** (``state_dtype="bfloat16"``): a state buffer of ``uint16`` holds
bfloat16 bits; the kernel loads it with ``widen``, computes in float32 and stores with
``store_state(out, x, noise)``, which rounds *stochastically*: 16 random bits are added
to the low half of ``x``'s float32 bits before they are cut off, so ``x`` rounds up with
probability equal to its distance from the lower neighbour (unbiased: ``E[stored] = x``).
Round-to-nearest would stall: an update smaller than half a bf16 ulp of ``v`` would never
land. The bits come from ``state_noise(noise_key, i)``, a counter-based hash
(``lowbias32``) of the element index ``i`` and a per-call key the front ends derive from
the step number and which buffer is stepped (:func:`noise_key`): no state, no order, so the
result is bitwise the same for any thread count and on every run. A kernel stores its
first state buffer with the low 16 bits and its second with the high 16
(:func:`high_half`; :func:`store_pair` stores such a pair); a third takes :func:`more_noise`, except amsgrad's running maximum,
which shares the second's, so a new maximum is stored exactly as the second moment it
equals. Float32/float64 state buffers
store ``x`` as it is, and LLVM drops the unused hash.

Every integer step is wrapped in ``np.uint32`` (Numba widens unsigned arithmetic to 64
bits otherwise, and the 64-bit lanes halve the vector width). The float16 conversions
need F16C on x86 (every AVX2 CPU has it); elsewhere LLVM calls its runtime helpers.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

#: The integer view each half-precision format travels in (see the module docstring).
BF16_BITS = np.dtype(np.uint16)
FP16_BITS = np.dtype(np.int16)


@intrinsic
def float32_from_bits(typingctx, bits):
    """Reinterpret a ``uint32`` as the float32 with those bits (an LLVM ``bitcast``)."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def bits_from_float32(typingctx, value):
    """Reinterpret a float32 as the ``uint32`` with its bits (an LLVM ``bitcast``)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def float32_from_fp16_bits(typingctx, bits):
    """The float32 equal to the float16 whose bits are the ``int16`` ``bits`` (exact)."""
    if bits != types.int16:
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())
    return types.float32(types.int16), codegen


@intrinsic
def fp16_bits_from_float32(typingctx, value):
    """The bits (``int16``) of float32 ``value`` rounded to float16, nearest even."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))
    return types.int16(types.float32), codegen


@register_jitable
def float32_from_bf16_bits(bits):
    """The float32 equal to the bfloat16 whose bits are the ``uint16`` ``bits`` (exact)."""
    return float32_from_bits(np.uint32(np.uint32(bits) << np.uint32(16)))


@register_jitable
def bf16_bits_from_float32(value):
    """The bits (``uint16``) of float32 ``value`` rounded to bfloat16, nearest even;
    a NaN stays a (quiet) NaN with its sign."""
    bits = bits_from_float32(value)
    high = np.uint32(bits >> np.uint32(16))
    rounded = np.uint32(np.uint32(bits + np.uint32(0x7FFF)) + np.uint32(high & np.uint32(1)))
    quiet_nan = np.uint32(high | np.uint32(0x40))
    return np.uint16(quiet_nan if value != value else np.uint32(rounded >> np.uint32(16)))


def widen(x):
    """One loaded gradient element as a float (see the module docstring); ``@njit`` only."""
    raise NotImplementedError("widen is for @njit code")


def narrow_to(out, x):
    """Float32 ``x`` as an element of array ``out`` (see the module docstring); ``@njit`` only."""
    raise NotImplementedError("narrow_to is for @njit code")


@overload(widen)
def _widen(x):
    if x in (types.float32, types.float64):
        return lambda x: x
    if x == types.uint16:
        return lambda x: float32_from_bf16_bits(x)
    if x == types.int16:
        return lambda x: float32_from_fp16_bits(x)
    return None


@overload(narrow_to)
def _narrow_to(out, x):
    if not isinstance(out, types.Array) or x != types.float32:
        return None
    if out.dtype == types.uint16:
        return lambda out, x: bf16_bits_from_float32(x)
    if out.dtype == types.int16:
        return lambda out, x: fp16_bits_from_float32(x)
    if out.dtype == types.float32:
        return lambda out, x: x
    return None


@register_jitable
def _mix32(x):
    """``lowbias32`` (C. Wellons' integer hash): a bijection of ``uint32`` with good
    avalanche: three shift-xors and two multiplies, all vectorizable."""
    x = np.uint32(x ^ np.uint32(x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x = np.uint32(x ^ np.uint32(x >> np.uint32(15)))
    x = np.uint32(x * np.uint32(0x846CA68B))
    return np.uint32(x ^ np.uint32(x >> np.uint32(16)))


@register_jitable
def state_noise(noise_key, i):
    """32 random bits (``uint32``) for element ``i`` of a call keyed by ``noise_key`` (a
    whole number below 2**24, passed as the kernel's float scalar):
    ``mix32((i * 0x9E3779B9) ^ mix32(key))``. Deterministic, stateless."""
    key = _mix32(np.uint32(noise_key))
    return _mix32(np.uint32(np.uint32(np.uint32(i) * np.uint32(0x9E3779B9)) ^ key))


@register_jitable
def high_half(noise):
    """The high 16 of ``noise``'s bits, as the low 16 (for a second state buffer)."""
    return np.uint32(noise >> np.uint32(16))


@register_jitable
def more_noise(noise):
    """32 more random bits from ``noise`` (one more ``mix32`` round): for a third state
    buffer that must not share the first two's bits."""
    return _mix32(np.uint32(noise ^ np.uint32(0x632BE5AB)))


@register_jitable
def bf16_bits_stochastic(value, noise):
    """The bits (``uint16``) of float32 ``value`` rounded to a bfloat16 neighbour by the
    low 16 bits of ``noise``: ``(bits + (noise & 0xFFFF)) >> 16``. Exact values stay
    exact, an infinity stays infinite, a NaN becomes a quiet NaN with its sign (never an
    infinity); a finite value at most one bf16 ulp below the largest may round up to Inf,
    as it should with that probability."""
    bits = bits_from_float32(value)
    rounded = np.uint32(bits + np.uint32(noise & np.uint32(0xFFFF)))
    quiet_nan = np.uint32(np.uint32(bits >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16(quiet_nan if value != value else np.uint32(rounded >> np.uint32(16)))


def store_state(out, x, noise):
    """``x`` as an element of state buffer ``out`` (see the module docstring); ``@njit``
    only."""
    raise NotImplementedError("store_state is for @njit code")


@overload(store_state)
def _store_state(out, x, noise):
    if not isinstance(out, types.Array):
        return None
    if out.dtype == types.uint16 and x == types.float32:
        return lambda out, x, noise: bf16_bits_stochastic(x, noise)
    if out.dtype == x and x in (types.float32, types.float64):
        return lambda out, x, noise: x
    return None


@register_jitable
def store_pair(first, x, second, y, noise_key, i):
    """``first[i] = x`` and ``second[i] = y`` through :func:`store_state`, the first with
    the low 16 of element ``i``'s random bits and the second with the high 16: the one
    place that says which state buffer of a kernel rounds with which bits."""
    noise = state_noise(noise_key, i)   # dead code (dropped) unless a buffer is bf16
    first[i] = store_state(first, x, noise)
    second[i] = store_state(second, y, high_half(noise))


@register_jitable
def block_key(key, block):
    """The noise key of block ``block`` of a call keyed ``key`` that is run in blocks
    (:mod:`fastopt.kernels.gathered`, ``fastopt.torch``'s low-precision state): ``key``
    for block 0, else ``mix32(key ^ (block * 0x85EBCA6B)) >> 8``, a whole number below
    2**24 like every key (exact as the kernels' float32 scalar). Each block's elements
    then take ``state_noise(block key, index within the block)``, so the bits do not
    depend on which thread runs a block."""
    if block == 0:
        return np.uint32(key)
    mixed = _mix32(np.uint32(np.uint32(key) ^ np.uint32(np.uint32(block) *
                                                         np.uint32(0x85EBCA6B))))
    return np.uint32(mixed >> np.uint32(8))


def noise_key(step, stream, seed=0):
    """The ``noise_key`` scalar of step ``step`` over buffer number ``stream`` (which
    segment or run of the optimizer: each gets its own bits) with ``seed``: a whole
    number below 2**24 (exact in float32), from a SplitMix64 finalizer of the three.
    Plain Python, for the front ends."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB
         ) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return float((x ^ (x >> 31)) >> 40)


@register_jitable
def gradient(g, grad_factor, weight_decay, p):
    """The gradient a rule sees, from one loaded gradient element ``g`` (any format
    :func:`widen` reads): ``widen(g) * grad_factor``, plus torch's coupled (L2) weight
    decay ``weight_decay * p``, with no such term when ``weight_decay`` is 0 (as torch:
    an infinite ``p`` would make ``0 * p`` NaN). Every elementwise kernel starts here."""
    g = widen(g) * grad_factor
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


@register_jitable
def lerp(start, end, coefficient):
    """torch's ``start.lerp_(end, w)`` for one element, as its CPU kernel computes it:
    ``start + w*(end - start)`` for ``w < 0.5``, ``end + (w - 1)*(end - start)`` from 0.5 on
    (the two differ in rounding, and for an infinite ``end``). The caller passes
    ``coefficient`` = ``w`` or ``w - 1`` (:func:`fastopt.rules.base.lerp_coefficient`), whose
    sign picks the formula. ``w`` must be in (0, 1]: ``w = 1`` (Adafactor's first step,
    ``beta1 = 0``) gives ``coefficient = 0`` and ``end``, as torch; ``w = 0`` would be
    read as 1 (no rule passes it: ``beta1 < 1``, ``t**beta2_decay > 0``)."""
    base = start if coefficient > 0 else end
    return base + coefficient * (end - start)
