"""``fastopt.torch``: drop-in ``torch.optim`` optimizers on fastopt's kernels, for CPU.

    import fastopt.torch
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)   # as torch.optim.Adam
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()          # one kernel call per param group and dtype

One class per rule of the registry (:mod:`fastopt.rules`: ``SGD``, ``Adagrad``,
``RMSprop``, ``Adam``, ``AdamW``, ``Adadelta``, ``Adafactor``, ``Adamax``, ``ASGD``,
``NAdam``, ``RAdam``, ``Rprop``, ``Lion``, ``LAMB``, ``Yogi``) subclasses
``torch.optim.Optimizer`` with torch's constructor signature (read from torch.optim;
RMSprop adds fastopt's ``nesterov`` and ``eps_in_sqrt``, every class the loop options;
Lion, LAMB and Yogi, which torch lacks, take their hyperparameters in the rule's order)
and defaults (:mod:`fastopt.torch.rules`). The update rules are the registry's (one source
of truth), run on zero-copy NumPy views of CPU tensors. torch is optional
(``pip install fastopt[torch]``) and only this package imports it.

**Supported tensors**: dense float32/float64/bfloat16/float16 CPU tensors. CUDA, sparse,
complex and other params (or sparse gradients) raise ``TypeError`` naming what is
supported. bfloat16/float16 params train over a float32 master the optimizer keeps (one
per group and dtype, with float32 state): each step reads the half gradient, updates the
master and the state, and writes the half params in the same pass; ``state[p]["master"]``
holds it (the param's shape), so state dicts and checkpoints carry it.

**Flat storage.** At construction each param group's params are copied, per dtype, into
one flat tensor and rebound to their slices of it, as FSDP's and DeepSpeed's flat
parameters do; user code does not change. Each slice (param, gradient, state buffer) is
a tensor with a storage object of its own, a non-owning view of exactly its bytes of the
flat memory (``torch.from_numpy`` of a NumPy view), which keeps that memory alive: tools
that tell tied weights by their storage see separate, non-overlapping tensors, so
``safetensors.torch.save_model``, accelerate's ``save_state`` and ``torch.save(p)``
(which writes only ``p``'s bytes) work as with torch.optim. Loading weights in place
(``model.load_state_dict``, ``safetensors.torch.load_model``, accelerate's
``load_state``) keeps them in the flat buffer. Replacing a param's ``.data`` afterwards
(``module.to(...)``, ``load_state_dict(assign=True)``, ``share_memory()``) detaches it
from the buffer: ``step`` then raises ``RuntimeError``.

**Gradients and zero_grad.** ``zero_grad()`` is torch's: ``set_to_none=True`` by default,
so a param that gets no gradient in a step is not updated (its momentum and moments do not
move it). Autograd then allocates each gradient, writing it once, and ``step`` reads it
where it lies: one kernel call per such param over its slice of the flat buffers, with no
gather copy (a bucket whose gradients are many and small, on average under 2^16 elements,
gathers them with one ``torch._foreach_copy_`` and takes one call; ``p.grad`` is never
rebound). ``zero_grad(set_to_none=False)`` zeroes the bucket's flat gradient tensor and
binds the grads to its views, so backward accumulates in place and ``step`` is one kernel
call per group and dtype; a param that had a gradient and receives none from the next
backward is then stepped with a zero gradient, as torch does with ``set_to_none=False``.
In a training loop the default is the faster of the two: accumulating into a zeroed
buffer costs backward an extra read and write of every gradient (README "Performance").

**Params without a gradient** in a step (``requires_grad=False``, unused in the graph,
``grad`` set to ``None``) are skipped, as torch does: the kernel runs once per contiguous
run of params that have a gradient and the same step count.

**state_dict** has torch.optim's layout and keys (``step`` a 0-d float32 tensor, float64
if torch's default dtype is float64; SGD keeps no step). ``state[p]`` entries are views of
the flat state buffers; ``state_dict()`` returns copies. ``load_state_dict`` accepts
torch.optim's checkpoints (and torch.optim accepts ours) and copies the state into the flat
buffers; state set directly in ``state[p]`` (as ``ZeroRedundancyOptimizer`` does) is
adopted the same way at the next step. Entries under keys that are not params
(``opt.state["key"] = 1``) pass through ``state_dict`` and ``load_state_dict`` as in
torch. Before torch replaces anything, ``load_state_dict``
validates the groups as they will be installed (as at construction: NaN or negative
``lr``, betas outside [0, 1), ...), every ``step`` (a whole number in [0, 2**53]) and
every state tensor (dense, CPU, real, the param's shape); a refused load raises and
changes nothing. ``AdamW`` refuses ``decoupled_weight_decay=False`` (torch.optim.AdamW
silently makes an Adam state dict decoupled); ``Adam`` takes the flag as torch's ``Adam``
does, as a hyperparameter. Validation sees the state dict as passed: a
``register_load_state_dict_pre_hook`` that changes it is not checked again.

**Loop options**, as :class:`fastopt.optim.Optimizer`'s: every class takes keyword-only
``clip_grad_norm=None`` (global L2 norm clipping, ``torch.nn.utils.clip_grad_norm_``'s
``min(1, max_norm / (norm + 1e-6))``), ``grad_scale=1.0`` (gradients are divided by this
loss scale) and ``skip_if_nonfinite=False`` (an Inf/NaN gradient skips the step); all three
are also attributes, changeable between steps, and are validated (``TypeError`` /
``ValueError`` naming the option) before anything is written. The rule sees
``grad / grad_scale * clip``: one factor folded into the kernel call, no extra pass. With
``clip_grad_norm`` or ``skip_if_nonfinite``, one deterministic read pass over exactly the
gradients the step uses (all groups; params without a gradient excluded) gives the norm
and finiteness first (:func:`fastopt.optim.loop.loop_scale`, shared with the NumPy
optimizers). A skipped step writes no param, state or step count. ``opt.last_step_skipped``
and ``opt.last_grad_norm`` (of the unscaled gradients; ``None`` when not computed) report
the last step.

**torch.amp.GradScaler.** By default GradScaler treats the classes as torch's unfused
ones: ``scaler.step(opt)`` unscales the gradients in place (or ``scaler.unscale_(opt)``
did), checks them for Inf/NaN and calls ``opt.step()`` only if finite. So frameworks that
clip the unscaled gradients under mixed precision (Lightning's ``gradient_clip_val`` with
``precision="16-mixed"``/``"bf16-mixed"``) accept them, as they accept torch's unfused
classes and refuse its fused ones. With ``fused=True`` (as torch's fused SGD, Adagrad,
Adam, AdamW; RMSprop has no ``fused`` in torch) the optimizer sets
``_step_supports_amp_scaling = True`` and ``scaler.step(opt)`` leaves the unscaling to it,
as with torch's fused Adam: it sets ``opt.grad_scale`` (a tensor) and ``opt.found_inf``
before calling ``opt.step()`` and deletes them after. ``step`` then skips the update when ``found_inf`` is non-zero (nothing
written; ``last_step_skipped`` is True) and otherwise folds ``1/grad_scale`` into the
kernel's factor: no unscaling pass, and ``p.grad`` keeps the *scaled* gradients after the
step (torch's fused Adam unscales them in place; call ``scaler.unscale_(opt)`` first when
you need them unscaled, e.g. to clip with ``clip_grad_norm_`` or to log, which works as with
any torch optimizer). ``grad_scale`` is therefore a property: setting a number sets the
float option; setting a tensor (GradScaler's protocol) overrides the option until
``del opt.grad_scale``, which restores the option untouched; setting ``None`` (what
GradScaler sets when it already unscaled the gradients) clears the override and leaves the
option. GradScaler multiplies its scale
by the option, so a hand-applied loss scale (``grad_scale=8.0`` with the loss multiplied by
8) combines with it correctly.

Works with ``torch.optim.lr_scheduler`` (hyperparameters are read from the group at every
step; a one-element tensor ``lr`` is read as a number, a tensor of other size is a
``ValueError`` as in torch), ``add_param_group``,
``torch.nn.utils.clip_grad_norm_``, ``DistributedDataParallel`` and
``torch.distributed.optim.ZeroRedundancyOptimizer(optimizer_class=fastopt.torch.Adam)``;
tested inside Hugging Face ``Trainer``, Lightning (clipping under mixed precision
included), accelerate (``save_state``/``load_state``) and ``torch.compile``
(``tests/frameworks``).
"""

import torch as _torch  # noqa: F401  (fails early, with torch's message, if absent)

from .optimizer import Optimizer
from .rules import CLASSES

globals().update(CLASSES)   # fastopt.torch.SGD, ...: one class per registered rule

__all__ = ["Optimizer", *CLASSES]
