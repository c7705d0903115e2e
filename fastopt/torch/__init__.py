"""``fastopt.torch``: drop-in ``torch.optim`` optimizers on fastopt's kernels, for CPU.

    import fastopt.torch
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)   # as torch.optim.Adam
    for x, y in data:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()          # one kernel call per param group and dtype

``SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW`` subclass ``torch.optim.Optimizer``
with torch's constructor signatures and defaults (RMSprop adds fastopt's ``nesterov`` and
``eps_in_sqrt``). The update rules are fastopt's (:mod:`fastopt.optim`, one source of
truth), run on zero-copy NumPy views of CPU tensors. torch is optional
(``pip install fastopt[torch]``) and only this package imports it.

**Supported tensors**: dense float32/float64 CPU tensors. CUDA, sparse, complex and
float16/bfloat16 params (or sparse gradients) raise ``TypeError`` naming what is supported.

**Flat storage.** At construction each param group's params are copied, per dtype, into
one flat tensor and rebound to views of it (``p.data = flat[a:b].view_as(p)``), as FSDP's
and DeepSpeed's flat parameters do; user code does not change. Replacing a param's
``.data`` afterwards (``module.to(...)``, ``load_state_dict(assign=True)``,
``share_memory()``) detaches it from the buffer: ``step`` then raises ``RuntimeError``.

**Gradients.** Each bucket owns a flat gradient tensor. A gradient autograd allocated
elsewhere is copied into it at ``step`` (one extra copy) and ``p.grad`` is rebound to its
view, so later backward passes accumulate in place and ``step`` runs on the fast path
(``p.grad.data_ptr()`` is the view's address: nothing to copy).

**zero_grad** defaults to ``set_to_none=False`` (torch.optim's default is ``True``): it
zeroes the flat gradient buffer and keeps the grads bound to it. A param whose grad is
``None`` (never had one) stays ``None`` and is skipped, as in torch; a param that had a
gradient and receives none from the next backward is stepped with a zero gradient (as torch
with ``set_to_none=False``). ``zero_grad(set_to_none=True)`` is torch's behaviour exactly.

**Params without a gradient** in a step (``requires_grad=False``, unused in the graph,
``grad`` set to ``None``) are skipped, as torch does: the kernel runs once per contiguous
run of params that have a gradient and the same step count.

**state_dict** has torch.optim's layout and keys (``step`` a 0-d float32 tensor, float64
if torch's default dtype is float64; SGD keeps no step). ``state[p]`` entries are views of
the flat state buffers; ``state_dict()`` returns copies. ``load_state_dict`` accepts
torch.optim's checkpoints (and torch.optim accepts ours) and copies the state into the flat
buffers; state set directly in ``state[p]`` (as ``ZeroRedundancyOptimizer`` does) is
adopted the same way at the next step.

Works with ``torch.optim.lr_scheduler`` (hyperparameters are read from the group at every
step; a one-element tensor ``lr`` is read as a number), ``add_param_group``,
``torch.nn.utils.clip_grad_norm_``, ``DistributedDataParallel`` and
``torch.distributed.optim.ZeroRedundancyOptimizer(optimizer_class=fastopt.torch.Adam)``.
"""

import torch as _torch  # noqa: F401  (fails early, with torch's message, if absent)

from .optimizer import Optimizer
from .rules import SGD, Adagrad, Adam, AdamW, RMSprop

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
