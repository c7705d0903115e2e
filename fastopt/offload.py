"""One-call optimizer steps for engines that manage their own buffers (ZeRO-Offload style).

An offload engine keeps float32 master weights and optimizer state on the CPU, receives
half-precision gradients from the accelerator, and sends a half-precision copy of the
updated weights back. :func:`step` does the CPU part for any rule of the registry
(:func:`adam_step` is its Adam/AdamW form, shaped as DeepSpeed's CPU Adam call), in one
pass over memory: it reads the gradient in its own format (float32, bfloat16 or float16)
with the loss scale and clip factor folded in, updates the master and the state, and
writes the bf16/fp16 copy (rounded to nearest even, as torch's ``.to()``) in the same
loop. For Adam with bf16 gradients and a bf16 copy that is 28 bytes moved per element,
where unscale + fp32 step + cast move 42. :func:`init_state` makes a rule's state.

Buffers are NumPy arrays or CPU torch tensors, used in place through zero-copy views:
bfloat16 as ``ml_dtypes.bfloat16`` arrays or ``torch.bfloat16`` tensors, float16 as
``np.float16`` / ``torch.float16`` (see :mod:`fastopt.precision`).
"""

import numpy as np

from .incoming import step_count
from .kernels.halves import noise_key
from .precision import HALF_FORMATS, kernel_view
from .precision import _ml_dtypes as ml_dtypes
from .rules import RULES
from .rules.base import state_dtype_name
from .threads import StepTwins
from .validation import as_floats, check_bool, check_real

#: The gradient factor's name in this entry's arguments, for an overflow message.
_FACTOR_SOURCE = ("loss_scale", "clip_factor / loss_scale")


def step(rule, master, grad, state, *, step, out=None, loss_scale=1.0, clip_factor=1.0,
         stream=0, **hyperparameters):
    r"""One step of any rule of the registry over flat buffers, in place, in one pass.

    ``rule``: a registry name (``"adam"``, ``"adamw"``, ``"sgd"``, ``"lion"``, ...;
    :data:`fastopt.rules.RULES`). ``master``: the float32 (or float64) parameters, written.
    ``grad``: the gradient in float32, bfloat16 or float16 (only float32 over a float64
    master), read only, divided by ``loss_scale`` then multiplied by ``clip_factor`` (and
    negated for ``maximize``), as the optimizers' ``grad_scale``. ``state``: a dict of the
    rule's state buffers by torch's names, exactly those the rule needs for these
    hyperparameters (:func:`init_state` makes them), each of the master's dtype, shaped
    as the rule keeps it for a tensor of the master's shape (the master's own, or
    Adafactor's factored ``row_var``/``col_var`` for a matrix), written. ``step``: the step number, counted from 1 (the caller counts). ``out``:
    ``None``, or a bfloat16/float16 buffer of the master's shape receiving the updated
    master rounded to nearest even (torch's ``.to()``), in the same pass. The rule's
    hyperparameters by keyword, with its defaults (``lr``, ``betas``, ...).

    Low-precision state: with ``state_dtype="bfloat16"`` (rules whose ``defaults`` have
    it: every elementwise rule, not LAMB or Adafactor) every state buffer is bfloat16 (over a
    float32 master), computed in float32 and rounded stochastically on store, with
    random bits from (``step``, ``stream``, the element index): ``stream`` (an int >= 0)
    tells apart the engine's buffers, so that each gets its own bits; the same call
    gives the same bits, bitwise, for any thread count.

    Threads: the calls of one ``stream`` choose between the kernel's serial and parallel
    twin by timing the loop around them (:class:`fastopt.threads.StepTwins`, as the
    optimizers do; ``FASTOPT_PARALLEL``); the results are bitwise the same either way.
    Two threads calling with the same ``stream`` at once get a ``RuntimeError`` before
    anything is written (give each buffer its own ``stream``).

    The scalars are the optimizers' (the rule's ``scalars``, derived in float64 and cast
    to the master's dtype), so ``master`` and ``state`` are bitwise what ``fastopt``'s
    optimizer of that rule gives on the widened gradient with ``grad_scale=loss_scale``.
    A per-tensor rule (LAMB, Adafactor) takes the master as one tensor of its shape. Every argument is
    checked before anything is written (``TypeError``/``ValueError`` naming it).
    """
    spec = RULES.get(rule) if isinstance(rule, str) else None
    if spec is None:
        raise ValueError(f"rule: {rule!r} is not one of {sorted(RULES)}")
    unknown = sorted(set(hyperparameters) - set(spec.defaults))
    if unknown:
        raise TypeError(f"{spec.class_name} got unexpected keyword argument(s) {unknown}; "
                        f"it takes {sorted(spec.defaults)}")
    master_v = _buffer(master, "master", ("float32", "float64"), writes=True)
    n, shape = master_v.size, master.shape
    grad_formats = ("float32", *HALF_FORMATS) if master_v.dtype == np.float32 else (
        "float64",)
    grad_v = _buffer(grad, "grad", grad_formats, shape=shape)
    group = {**spec.defaults, **hyperparameters}
    if "state_dtype" in group:   # torch.bfloat16 / ml_dtypes.bfloat16 as its name
        group["state_dtype"] = state_dtype_name(group["state_dtype"])
    if callable(group["lr"]):
        raise TypeError(f"lr must be a real number (evaluate a schedule first), "
                        f"got {group['lr']!r}")
    spec.validate(group)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of the rule's state buffers by name, got "
                        f"{type(state).__name__}")
    shapes = _state_shapes(spec, group, shape)
    names = tuple(shapes)
    if set(state) != set(names):
        raise ValueError(f"state must hold exactly {list(names)} for {spec.class_name} "
                         f"with these hyperparameters; got {sorted(state, key=str)}")
    fmt = "float32" if master_v.dtype == np.float32 else "float64"
    if spec.state_dtype(group, master_v.dtype) != master_v.dtype:
        if fmt != "float32":
            raise TypeError(f"state_dtype={group['state_dtype']!r} needs a float32 master")
        fmt = group["state_dtype"]
    buffers = {name: _buffer(state[name], name, (fmt,), shape=shapes[name], writes=True)
               for name in names}
    named = [("master", master_v), ("grad", grad_v), *buffers.items()]
    if out is not None:
        if master_v.dtype != np.float32:
            raise TypeError("out: a half copy needs a float32 master")
        named.append(("out", _buffer(out, "out", HALF_FORMATS, shape=shape, writes=True)))
    _check_disjoint(named)
    t = step_count(step, "step", 1)
    stream = step_count(stream, "stream", 0)
    loss_scale = check_real(loss_scale, "loss_scale", 0.0, low_open=True, finite=True)
    clip_factor = check_real(clip_factor, "clip_factor", 0.0, finite=True)
    group = as_floats(group)
    # As the optimizers' loop options: 1/loss_scale, then times the clip factor (float64).
    factor = 1.0 / loss_scale * clip_factor
    if group.get("maximize", False):
        factor = -factor
    fresh = frozenset(names) if t == 1 else frozenset()   # the state starts at step 1
    values = spec.values(group, t, fresh, factor, master_v.dtype,
                         spec.ordered_sources(grad_factor=_FACTOR_SOURCE),
                         noise_key=noise_key(t, stream) if fmt == "bfloat16" else 0.0)
    copy = named[-1][1].reshape(n) if out is not None else None
    variant, args = spec.call(master_v.reshape(n), grad_v.reshape(n),
                              {name: b.reshape(-1) for name, b in buffers.items()}, values,
                              group, copy=copy, sizes=(n,) if spec.per_tensor else None,
                              shapes=(tuple(shape),) if spec.member_shapes else None)
    twins = _TWINS.get(stream)
    if twins is None:
        twins = _TWINS.setdefault(stream, StepTwins(f"fastopt.offload (stream={stream})"))
    twins.enter(n)   # refuses a concurrent call on the same stream; picks the twin
    try:
        variant(*args)
    finally:
        twins.leave()


#: stream -> its :class:`~fastopt.threads.StepTwins`: whether the calls on one of the
#: engine's buffers run the serial or the parallel twin, chosen by timing the loop
#: (call to call), as the optimizers choose; inside a training loop the host's threads
#: are hot, and the parallel twin often buys nothing there (``fastopt bench --mixed``).
_TWINS = {}


_any_step = step   # adam_step's keyword ``step`` hides the function inside it


def init_state(rule, master, **hyperparameters):
    """The state buffers :func:`step` needs for ``rule`` with these hyperparameters: NumPy
    arrays of the master's dtype and shape, each filled with the rule's initial value
    (zeros; Adagrad's ``initial_accumulator_value``, Rprop's ``step_size = lr``);
    ``ml_dtypes.bfloat16`` arrays with ``state_dtype="bfloat16"`` (rounded to nearest)."""
    spec = RULES.get(rule) if isinstance(rule, str) else None
    if spec is None:
        raise ValueError(f"rule: {rule!r} is not one of {sorted(RULES)}")
    master_v = _buffer(master, "master", ("float32", "float64"))
    group = {**spec.defaults, **hyperparameters}
    if "state_dtype" in group:   # torch.bfloat16 / ml_dtypes.bfloat16 as its name
        group["state_dtype"] = state_dtype_name(group["state_dtype"])
    spec.validate(group)
    group = as_floats(group)
    dtype = spec.state_dtype(group, master_v.dtype)
    if dtype != master_v.dtype and master_v.dtype != np.float32:
        raise TypeError(f"state_dtype={group['state_dtype']!r} needs a float32 master")
    out = {name: np.full(shape, spec.initial_fill(name, master_v.dtype, group), dtype)
           for name, shape in _state_shapes(spec, group, master_v.shape).items()}
    if dtype != master_v.dtype:
        bfloat16 = ml_dtypes().bfloat16
        out = {name: array.view(bfloat16) for name, array in out.items()}
    return out


def _state_shapes(spec, group, shape):
    """name -> shape of each state buffer ``spec`` keeps for a tensor of ``shape`` (the
    param's, or the rule's own: Adafactor's factored ``row_var``/``col_var``): the rule's
    :meth:`~fastopt.rules.base.Rule.state_layout` of one member."""
    found = {name: spec.state_layout(name, group, (tuple(shape),))[0][0]
             for name in spec.state_names(group)}
    return {name: own for name, own in found.items() if own is not None}


def adam_step(master, grad, exp_avg, exp_avg_sq, *, step, lr, betas=(0.9, 0.999),
              eps=1e-8, weight_decay=0.0, adamw=False, loss_scale=1.0, clip_factor=1.0,
              out=None, stream=0):
    r"""One Adam (or AdamW) step over flat buffers, in place, in one pass.

    For each element, with ``t = step`` (counted from 1) and ``s = clip_factor / loss_scale``::

        p = master * (1 - lr*weight_decay)     if adamw else master
        g = float32(grad) * s                  + (0 if adamw else weight_decay * p)
        exp_avg    = b1 * exp_avg    + (1 - b1) * g
        exp_avg_sq = b2 * exp_avg_sq + ((1 - b2) * g) * g
        master = p - (lr / (1 - b1**t)) * (exp_avg
                     / (sqrt(exp_avg_sq) / sqrt(1 - b2**t) + eps))
        out = round_to_nearest_even(master)    # bf16 or fp16, if ``out`` is given

    The bias corrections and ``s`` are computed in float64 once per call, then cast to
    float32 (:func:`fastopt.rules.adam.adam_scalars`, shared with :class:`fastopt.Adam`;
    a value beyond float32's range is a ``ValueError`` naming its argument, as
    :func:`fastopt.validation.cast_scalars` does for the optimizers), so ``master`` and the state are bitwise what ``fastopt.Adam`` / ``AdamW`` give on the
    widened gradient with ``grad_scale=loss_scale``; the copy is bitwise torch's
    ``master.to(torch.bfloat16)`` (or ``float16``), NaN staying NaN. Differences from
    ``torch.optim.Adam``: the order of float32 operations (results agree to rounding,
    not bitwise), and no ``amsgrad``/``maximize`` here.

    Args:
        master: float32, 1-D (or any shape, C-contiguous), written.
        grad: float32, bfloat16 or float16, the master's shape; read only. Inf and NaN
            propagate into the master, the state and the copy. Check first if needed:
            ``norm_and_finite([kernel_view(grad, "grad", ("bfloat16",))[0]])``
            (:mod:`fastopt.kernels.reductions`, :mod:`fastopt.precision`) reads the
            half bits directly, in one pass.
        exp_avg, exp_avg_sq: float32 state, the master's shape, written (zeros before
            the first step); or both bfloat16 (low-precision state, rounded
            stochastically on store: :func:`step`'s ``state_dtype="bfloat16"``).
        step: the step number, an int >= 1 (the caller counts).
        lr, betas, eps, weight_decay: as ``torch.optim.Adam`` / ``AdamW``.
        adamw: decoupled weight decay (AdamW) instead of Adam's L2 term.
        loss_scale: the gradient is divided by it (finite, > 0).
        clip_factor: then multiplied by it (finite, >= 0), e.g. ``min(1, max_norm / norm)``.
        out: ``None``, or a bfloat16/float16 buffer of the master's shape receiving the
            updated master, rounded to nearest even.
        stream: with bfloat16 state, which of the engine's buffers this is (an int >=
            0): each stream rounds with its own random bits.

    Every argument is checked before anything is written: ``TypeError`` for a wrong type
    or dtype, ``ValueError`` for a wrong shape, a non-contiguous or read-only buffer,
    buffers sharing memory, or a bad number; the message names the argument.

    An offload loop (torch model in bf16 on an accelerator; fp32 master and state in
    pinned CPU memory)::

        flat_params = torch.nn.utils.parameters_to_vector(model.parameters())
        master = flat_params.float().cpu()                 # fp32 master, kept here
        exp_avg, exp_avg_sq = torch.zeros_like(master), torch.zeros_like(master)
        grad_cpu = torch.empty_like(master, dtype=torch.bfloat16).pin_memory()
        copy_cpu = torch.empty_like(grad_cpu).pin_memory()
        for t, batch in enumerate(loader, start=1):
            (loss * scale).backward()
            grad_cpu.copy_(torch.cat([p.grad.flatten() for p in model.parameters()]))
            fastopt.offload.adam_step(master, grad_cpu, exp_avg, exp_avg_sq, step=t,
                                      lr=1e-4, weight_decay=0.01, adamw=True,
                                      loss_scale=scale, out=copy_cpu)
            torch.nn.utils.vector_to_parameters(copy_cpu.to(device), model.parameters())
            model.zero_grad(set_to_none=True)
    """
    master_v = _buffer(master, "master", ("float32",), writes=True)
    rule = "adamw" if check_bool(adamw, "adamw") else "adam"
    _, fmt = kernel_view(exp_avg, "exp_avg", ("float32", "bfloat16"))
    _any_step(rule, master_v, grad, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
              step=step, out=out, loss_scale=loss_scale, clip_factor=clip_factor, lr=lr,
              betas=betas, eps=eps, weight_decay=weight_decay, stream=stream,
              state_dtype="bfloat16" if fmt == "bfloat16" else None)


def _buffer(x, name, formats, shape=None, writes=False):
    """``x`` as the kernels' NumPy view, checked: format, shape, C-contiguous, writeable."""
    view, _ = kernel_view(x, name, formats)
    if shape is not None and tuple(view.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(view.shape)}; master has {tuple(shape)}")
    if not view.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writes and not view.flags.writeable:
        raise ValueError(f"{name} is read-only; it is written in place")
    return view


def _check_disjoint(named):
    """No two buffers may share memory (a write would change another's input)."""
    for i, (first, a) in enumerate(named):
        for second, b in named[i + 1:]:
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError(f"{first} and {second} share memory; each must be its "
                                 f"own buffer")

