"""The benchmark cases: one per rule, read by ``fastopt bench`` and by the asv suite.

A :class:`Case` says which configuration of a rule is measured (``options``, PyTorch's
names and defaults), the kernel's array arguments in order (so the bytes it moves per
element follow from them), and the kernel's scalar arguments for that configuration.
The ``*_call`` functions build fresh buffers and return a no-argument function that
runs one step of: the kernel (:func:`kernel_call`), the whole ``opt.step()``
(:func:`step_call`), the NumPy reference (:func:`reference_call`) or ``torch.optim``
(:func:`torch_call`). Each call owns its buffers, so measurements do not share memory.
"""

import inspect
from dataclasses import dataclass, field
from functools import partial

import numpy as np

import fastopt
from fastopt import precision, reference, threads
from fastopt.optim.segments import SegmentStep
from fastopt.rules import RULES as REGISTRY

#: Default sizes and dtypes of the benchmarks (``fastopt bench`` and asv).
SIZES = (1_000, 100_000, 1_000_000, 10_000_000)
DTYPES = ("float32", "float64")

#: The step count whose scalars the kernel calls use (a step past the first, where
#: every rule runs its steady-state update: momentum buffers exist, bias corrections < 1).
STEP = 10

#: The whole-step workloads compared with torch: one small tensor (Python overhead), and
#: 200 tensors totalling 1e6 elements (100 layers of a (100, 99) weight and a (100,) bias).
STEP_SHAPES = [(1_000,)]
MODEL_SHAPES = [(100, 99), (100,)] * 100

#: The fastopt.torch comparison: an MLP-shaped model of 50 tensors (25 layers of a
#: (w, w) weight and a (w,) bias), ~1e5, ~1e6 and ~1e7 parameters.
ADAPTER_WIDTHS = {"mlp 1e5": 63, "mlp 1e6": 200, "mlp 1e7": 632}


def mlp_shapes(width, layers=25):
    return [(width, width), (width,)] * layers


#: The loop-feature comparison: one flat buffer of each size; gradients 0.1 * N(0, 1), so
#: their norm (~30 at 1e5, ~300 at 1e7) is above ``LOOP_MAX_NORM`` and clipping is active.
LOOP_SIZES = (1_000_000, 10_000_000)
LOOP_MAX_NORM = 1.0
LOOP_VARIANTS = ("step", "clip", "zero_fused", "zero_separate")


#: torch.optim implementations: name -> constructor keywords.
TORCH_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True},
               "single": {"foreach": False}}


class Unavailable(NotImplementedError):
    """A baseline this process cannot run (torch missing, or an implementation torch
    lacks for a rule). A ``NotImplementedError``, so asv skips the benchmark."""


#: Options the bench sets beyond a rule's defaults (plain SGD touches no state buffer).
BENCH_OPTIONS = {"sgd": {"momentum": 0.9}}


@dataclass(frozen=True)
class Case:
    """One rule's benchmark configuration: the rule's defaults updated with ``options``.
    Everything else is read from the rule (:mod:`fastopt.rules`):

    * ``arrays``: the kernel's array arguments in order, by PyTorch's names; ``None`` for
      an argument this configuration leaves untouched (passed an empty array).
    * ``torch_impls``: the ``torch.optim`` implementations that exist for the rule on CPU.
    """

    rule: str
    options: dict = field(default_factory=dict)
    #: The case's name in ``CASES`` and in the tables: the rule's, or a variant's
    #: (``"adam-amsgrad"``, :data:`VARIANTS`).
    name: str = ""

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", self.rule)

    @property
    def spec(self):
        """The :class:`~fastopt.rules.base.Rule`."""
        return REGISTRY[self.rule]

    @property
    def optimizer(self):
        return fastopt.optim.CLASSES[self.spec.class_name]

    @property
    def kernel(self):
        return self.spec.kernel

    @property
    def torch_class(self):
        return self.spec.torch_class

    @property
    def reference(self):
        return reference.RULES[self.rule]

    @property
    def torch_impls(self):
        """``fused``/``foreach`` where torch's class takes that keyword, ``single`` always;
        none for a rule torch lacks (or without torch)."""
        if self.torch_class is None:
            return ()
        try:
            torch = import_torch()
        except Unavailable:
            return ()
        taken = inspect.signature(getattr(torch.optim, self.torch_class).__init__).parameters
        return tuple(impl for impl in ("fused", "foreach") if impl in taken) + ("single",)

    @property
    def hyperparameters(self):
        """Every hyperparameter: the optimizer's defaults updated with ``options``."""
        return {**self.spec.defaults, **self.options}

    @property
    def arrays(self):
        """The bench's buffers are 1-D: a state a 1-D param lacks (the rule's
        ``state_shape`` is ``None``: Adafactor's ``row_var``, ``col_var``) is untouched."""
        spec, group = self.spec, self.hyperparameters
        names = [name for name in spec.state_names(group)
                 if spec.state_shape(name, group, (2,)) is not None]
        return ("param", "grad", *(name if name in names else None
                                   for name in self.kernel.binding.buffers), None)

    @property
    def state(self):
        """State buffers the kernel updates, by PyTorch's names."""
        return tuple(a for a in self.arrays if a not in (None, "param", "grad"))

    @property
    def reads(self):
        return tuple(a for a in self.arrays if a is not None)

    @property
    def writes(self):
        return ("param",) + self.state

    @property
    def baseline_options(self):
        """``options`` as the baselines (the NumPy reference, ``torch.optim``) take them:
        without fastopt's own ``state_dtype`` (they keep float32 state: what a user of
        bf16 state would otherwise run)."""
        return {k: v for k, v in self.options.items() if k != "state_dtype"}

    def supports(self, dtype):
        """Whether the case runs on ``dtype`` params (bf16 state: float32 only)."""
        return not self.options.get("state_dtype") or np.dtype(dtype) == np.float32

    def bytes_per_element(self, dtype):
        """Bytes the kernel must move per element: each buffer read once, each buffer
        written once (fp32 Adam: reads p, g, m, v and writes p, m, v: 28 B; with bf16
        state, 2 bytes per state element: 20 B)."""
        size = np.dtype(dtype).itemsize
        state = 2 if self.options.get("state_dtype") == "bfloat16" else size
        return sum(state if name in self.state else size
                   for name in self.reads + self.writes)

    def label(self):
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({options})"


CASES = {name: Case(name, BENCH_OPTIONS.get(name, {})) for name in REGISTRY}

#: The rules, one case each: what ``fastopt bench`` and asv run by default.
RULES = tuple(CASES)

#: Option variants whose kernel is another compile-time variant (other loads and stores,
#: another loop), benchmarked on request (``fastopt bench --rules adam-amsgrad``) and in
#: asv's ceiling track: issue 14's "every option variant".
VARIANTS = {
    "sgd-nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "rmsprop-centered": ("rmsprop", {"centered": True}),
    "rmsprop-momentum": ("rmsprop", {"momentum": 0.9}),
    "rmsprop-nesterov": ("rmsprop", {"momentum": 0.9, "nesterov": True}),
    "adam-amsgrad": ("adam", {"amsgrad": True}),
    # low-precision state (issue 13): against fp32-state "adam" in the same run
    "adam-bf16state": ("adam", {"state_dtype": "bfloat16"}),
}
CASES.update({name: Case(rule, options, name) for name, (rule, options) in VARIANTS.items()})


# --- buffers and calls ------------------------------------------------------------------

def make_arrays(shapes, dtype, seed=0):
    """Parameters (standard normal) and gradients (0.1 * standard normal) of ``shapes``."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    grads = [(0.1 * rng.standard_normal(shape)).astype(dtype) for shape in shapes]
    return params, grads


def kernel_args(case, size, dtype, seed=0):
    """The kernel's full argument tuple (its options last, in ``Kernel.flags`` order) over
    fresh buffers of ``size`` elements, at step :data:`STEP` with every state buffer
    allocated (the steady-state update), as the optimizer itself builds it (the rule's
    ``prepare``: one source of the scalars)."""
    _check_supported(case, dtype)
    (param,), (grad,) = make_arrays([(size,)], dtype, seed)
    flat = fastopt.flatten([param])
    flat.grads[0][...] = grad
    opt = case.optimizer(flat, **case.options)
    (seg,), group = opt._segments[0], opt.param_groups[0]
    state, _ = opt.new_state(seg.param, seg.state, group, seg)
    steady = SegmentStep(seg.param, state, STEP, frozenset())   # momentum buffers exist
    variant, args = opt.rule.prepare(steady, group, seg.own_grad, 1.0)
    return (*args, *variant.flags.values())


#: Rules whose kernel reads half-precision gradients and writes a half copy.
MIXED_RULES = RULES


def mixed_kernel_args(case, size, grad_format, copy_format, seed=0):
    """:func:`kernel_args` over a float32 master and state, with the gradient in
    ``grad_format`` (``"float32"``, ``"bfloat16"``, ``"float16"``, as the kernels' view)
    and, unless ``copy_format`` is ``None``, a half copy written in the same pass."""
    args = list(kernel_args(case, size, "float32", seed))
    names = list(inspect.signature(case.kernel.body).parameters)
    grad_at = names.index("grad")
    args[grad_at] = precision.encode(args[grad_at], grad_format)
    if copy_format is not None:
        args[names.index("param_copy")] = np.zeros(size, precision.KERNEL_DTYPES[copy_format])
        flags = case.kernel.flags
        args[len(args) - len(flags) + flags.index("write_copy")] = True
    return tuple(args)


def mixed_bytes_per_element(case, grad_format, copy_format):
    """Bytes the mixed kernel moves per element: the float32 kernel's, with the gradient
    read in its own format and the copy written (bf16 grad and copy, Adam: 28 B)."""
    half = {None: 0, "float32": 4, "bfloat16": 2, "float16": 2}
    return case.bytes_per_element("float32") - 4 + half[grad_format] + half[copy_format]


def kernel_call(case, size, dtype, twin=None, seed=0):
    """Run the kernel once per call. ``twin``: ``"serial"``, ``"parallel"``, or ``None``
    to let the :class:`~fastopt.kernels.Kernel` pick by size (as the optimizers do)."""
    variant, args = case.kernel.resolve(kernel_args(case, size, dtype, seed))
    func = variant if twin is None else getattr(variant, twin)
    return partial(func, *args)


def step_call(case, shapes, dtype, seed=0):
    """``opt.step()`` of ``case.optimizer`` over ``fastopt.flatten`` of ``shapes``."""
    _check_supported(case, dtype)
    params, grads = make_arrays(shapes, dtype, seed)
    flat = fastopt.flatten(params)
    for view, grad in zip(flat.grads, grads):
        view[...] = grad
    return settled(case.optimizer(flat, **case.options).step)


def _check_supported(case, dtype):
    if not case.supports(dtype):
        raise Unavailable(f"{case.name} runs on float32 params only, not {dtype}")


def settled(call):
    """``call`` after :data:`SETTLE` calls: a step timed past the probe in which fastopt
    chooses its serial or parallel twin by timing the loop (:mod:`fastopt.threads`), so
    the timing is of the twin it settled on, not of the probe's mixture of both."""
    for _ in range(SETTLE):
        call()
    return call


def reference_call(case, size, dtype, seed=0):
    """One step of the NumPy reference (:mod:`fastopt.reference`), carrying its state."""
    (param,), (grad,) = make_arrays([(size,)], dtype, seed)
    carry = {"param": param, "state": {}}

    def call():
        carry["param"], carry["state"] = case.reference(
            carry["param"], grad, carry["state"], **case.baseline_options)
    return call


def import_torch():
    """``torch``, or raise :class:`Unavailable` (torch is an optional dependency)."""
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"torch is not installed ({exc})") from None
    return torch


def torch_call(case, shapes, dtype, impl, seed=0):
    """``torch.optim.<Rule>(..., fused/foreach).step`` over tensors of ``shapes``; raises
    :class:`Unavailable` where torch or that implementation is missing."""
    if impl not in case.torch_impls:
        raise Unavailable(f"torch.optim.{case.torch_class} has no {impl} implementation")
    torch = import_torch()
    params, grads = make_arrays(shapes, dtype, seed)
    tensors = []
    for param, grad in zip(params, grads):
        tensor = torch.from_numpy(param).requires_grad_(True)
        tensor.grad = torch.from_numpy(grad)
        tensors.append(tensor)
    optimizer = getattr(torch.optim, case.torch_class)(
        tensors, **case.baseline_options, **TORCH_IMPLS[impl])
    return optimizer.step


#: Steps a fastopt.torch case runs before it is timed: past the probe in which fastopt
#: chooses its serial or parallel twin by timing the loop (:mod:`fastopt.threads`).
SETTLE = threads.WARMUP + 2 * threads.BLOCK * threads.PROBES + 1


def adapter_call(case, shapes, dtype, seed=0):
    """``fastopt.torch.<Rule>.step`` over tensors of ``shapes`` (flattened by the adapter at
    construction), after :data:`SETTLE` steps. Each gradient is a tensor of its own, as
    autograd allocates it after ``zero_grad()`` (torch's default, ``set_to_none=True``):
    ``step`` reads it in place, one kernel call per tensor over its slice of the flat
    buffers."""
    torch = import_torch()
    import fastopt.torch as fastopt_torch

    params, grads = make_arrays(shapes, dtype, seed)
    tensors = [torch.from_numpy(p).requires_grad_(True) for p in params]
    optimizer = getattr(fastopt_torch, case.torch_class)(tensors, **case.options)
    for tensor, grad in zip(tensors, grads):
        tensor.grad = torch.from_numpy(grad)
    return settled(optimizer.step)


def backward_loop_call(case, shapes, dtype, impl, seed=0):
    """One training-loop iteration on tensors of ``shapes``: ``zero_grad()`` (torch's
    default, ``set_to_none=True``), the backward of a tiny loss (``sum(p.sum())``: a read
    of every param forward, a freshly allocated gradient of ones for each backward), then
    ``step()``; with ``fastopt.torch.<Rule>`` (``impl`` ``"adapter"``) or
    ``torch.optim.<Rule>`` of ``impl`` (``"fused"``, ...). Both sides pay the same
    forward and backward, so the difference is the step on autograd's own gradients.
    Warmed up past fastopt's twin choice (:mod:`fastopt.threads`: its probe alternates
    the serial and the parallel twin over the first few dozen steps), as in a training
    loop that has settled."""
    torch = import_torch()
    if impl == "adapter":
        import fastopt.torch as fastopt_torch
        make = partial(getattr(fastopt_torch, case.torch_class), **case.options)
    elif impl not in case.torch_impls:
        raise Unavailable(f"torch.optim.{case.torch_class} has no {impl} implementation")
    else:
        make = partial(getattr(torch.optim, case.torch_class), **case.baseline_options,
                       **TORCH_IMPLS[impl])
    params, _ = make_arrays(shapes, dtype, seed)
    tensors = [torch.from_numpy(p).requires_grad_(True) for p in params]
    optimizer = make(tensors)

    def iteration():
        optimizer.zero_grad()
        sum(tensor.sum() for tensor in tensors).backward()
        optimizer.step()
    for _ in range(SETTLE):
        iteration()
    return iteration


def loop_call(case, shapes, dtype, variant, seed=0):
    """``opt.step()`` over ``fastopt.flatten`` of ``shapes`` with a loop feature:
    ``"step"`` plain; ``"clip"`` with ``clip_grad_norm=LOOP_MAX_NORM`` (a norm pass, then
    the update with the coefficient folded in); ``"zero_fused"`` ``step(zero_grad=True)``;
    ``"zero_separate"`` ``step()`` then ``flat.zero_grad()`` (a separate zeroing pass)."""
    params, grads = make_arrays(shapes, dtype, seed)
    flat = fastopt.flatten(params)
    for view, grad in zip(flat.grads, grads):
        view[...] = grad
    extra = {"clip_grad_norm": LOOP_MAX_NORM} if variant == "clip" else {}
    opt = case.optimizer(flat, **case.options, **extra)
    if variant in ("step", "clip"):
        return settled(opt.step)
    if variant == "zero_fused":
        return settled(partial(opt.step, zero_grad=True))

    def step_then_zero():
        opt.step()
        flat.zero_grad()
    return settled(step_then_zero)


def torch_clip_call(case, shapes, dtype, seed=0):
    """``torch.nn.utils.clip_grad_norm_`` then ``torch.optim.<Rule>(fused=True).step``."""
    torch = import_torch()
    step = torch_call(case, shapes, dtype, "fused", seed)
    tensors = step.__self__.param_groups[0]["params"]

    def clip_then_step():
        torch.nn.utils.clip_grad_norm_(tensors, LOOP_MAX_NORM)
        step()
    return clip_then_step
