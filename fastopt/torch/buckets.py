"""Buckets: one param group's parameters of one dtype, rebound to views of one flat tensor.

At construction every parameter's values are copied into the bucket's flat parameter
tensor and the parameter is rebound to a view of it (``p.data = flat[a:b].view_as(p)``),
as FSDP's and DeepSpeed's flat parameters do. The bucket also owns a flat gradient tensor
(gradients are pointed at its views, so autograd accumulates into them), one flat tensor
per state buffer (``exp_avg``, ...), and one step count per parameter. The optimizer's
``state[p]`` entries hold views of these, in ``torch.optim``'s layout.

A step over a bucket is one kernel call when every parameter has a gradient and the same
step count (the usual case); otherwise one call per contiguous run of parameters that do.
"""

import torch

from ..flat import offsets
from ..kernels.reductions import block_table
from ..optim.segments import SegmentStep

SUPPORTED = (torch.float32, torch.float64)
SUPPORTED_TEXT = "dense (strided) float32/float64 CPU tensors"


def describe(tensor):
    """``'a sparse_coo float32 tensor on cpu'``: what a tensor is, for error messages."""
    layout = "" if tensor.layout == torch.strided else str(tensor.layout).replace(
        "torch.", "") + " "
    dtype = str(tensor.dtype).replace("torch.", "")
    return f"a {layout}{dtype} tensor on {tensor.device}"


def check_tensor(tensor, what, owner):
    """Raise ``TypeError`` unless ``tensor`` is a dense float32/float64 CPU tensor."""
    if (tensor.layout != torch.strided or tensor.device.type != "cpu"
            or tensor.dtype not in SUPPORTED):
        raise TypeError(f"{owner} supports {SUPPORTED_TEXT}; {what} is {describe(tensor)}")


def scalar_dtype():
    """The dtype torch.optim gives ``state['step']`` (float32 unless the default is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Bucket:
    """Flat storage for ``params`` (one dtype, already checked); ``indices`` are their
    positions among all the optimizer's params (for error messages)."""

    def __init__(self, params, indices):
        self.params, self.indices = list(params), list(indices)
        self.sizes = tuple(p.numel() for p in self.params)
        self.offsets = offsets(self.sizes)
        dtype, total = self.params[0].dtype, self.offsets[-1]
        self.param = torch.empty(total, dtype=dtype)
        self.grad = torch.zeros(total, dtype=dtype)
        with torch.no_grad():
            for p, a, b in zip(self.params, self.offsets, self.offsets[1:]):
                self.param[a:b].copy_(p.detach().reshape(-1))
                p.data = self.param[a:b].view_as(p)
        self.grad_views = self._views(self.grad)
        self.param_addresses = [p.data_ptr() for p in self.params]
        self.grad_addresses = [g.data_ptr() for g in self.grad_views]
        self.np_param, self.np_grad = self.param.numpy(), self.grad.numpy()
        self.steps = torch.zeros(len(self.params), dtype=scalar_dtype())
        self.np_steps = self.steps.numpy()
        self.step_views = [self.steps[i] for i in range(len(self.params))]  # 0-d views
        self.state = {}      # name -> flat tensor
        self.np_state = {}   # name -> its NumPy view
        self.state_views = {}  # name -> per-param shaped views
        self.known = [None] * len(self.params)  # (entry, items) last registered per param

    def _views(self, flat):
        """Per-param views of a flat tensor, shaped like the params."""
        return [flat[a:b].view_as(p)
                for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]

    # --- state buffers and torch.optim's per-param entries ------------------------

    def state_buffer(self, name):
        """The flat state tensor ``name``, allocated (zeros) on first use."""
        if name not in self.state:
            flat = torch.zeros_like(self.param)
            self.state[name], self.np_state[name] = flat, flat.numpy()
            self.state_views[name] = self._views(flat)
        return self.state[name]

    def register(self, i, entry, names, has_step):
        """Point ``entry`` (``state[p]``) at the bucket's views for ``names`` and step."""
        if has_step:
            entry["step"] = self.step_views[i]
        for name in names:
            self.state_buffer(name)
            entry[name] = self.state_views[name][i]
        self.known[i] = (entry, tuple(entry.items()))

    def is_known(self, i, entry):
        known = self.known[i]
        return (known is not None and known[0] is entry and len(entry) == len(known[1])
                and all(entry.get(k) is v for k, v in known[1]))

    def adopt(self, i, entry, has_step, owner):
        """Copy a ``state[p]`` entry that is not ours (loaded from a checkpoint, or set by
        ``ZeroRedundancyOptimizer.load_state_dict``) into the flat buffers and point it at
        their views. An empty or missing entry means no state: the step count restarts."""
        p = self.params[i]
        if not entry:
            self.np_steps[i] = 0
            self.known[i] = None
            return
        for key in list(entry):
            value = entry[key]
            if key == "step":
                self.np_steps[i] = float(value)
            elif value is None:
                del entry[key]
            elif torch.is_tensor(value):
                if value.shape != p.shape:
                    raise ValueError(f"{owner}: state[{self.indices[i]}][{key!r}] has shape "
                                     f"{tuple(value.shape)}, the param has {tuple(p.shape)}")
                self.state_buffer(key)
                self.state_views[key][i].copy_(value)
        if has_step and "step" not in entry:
            self.np_steps[i] = 0
        names = [k for k, v in entry.items() if k != "step" and torch.is_tensor(v)]
        self.register(i, entry, names, has_step)

    # --- one step ------------------------------------------------------------------

    def plan(self, names, state, has_step, owner):
        """Check and gather gradients; return the runs ``(first, stop, step, fresh)`` of
        consecutive params that have a gradient, the same step count and the same missing
        state names. Writes only gradients (and ``p.grad`` bindings), never params/state."""
        runs, open_run = [], False
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                open_run = False
                continue
            if p.data_ptr() != self.param_addresses[i]:
                raise RuntimeError(
                    f"{owner}: params[{self.indices[i]}] no longer lives in the optimizer's "
                    "flat buffer (its .data was replaced, e.g. by module.to(), "
                    "load_state_dict(assign=True), share_memory() or another fastopt "
                    "optimizer); create the optimizer after such changes")
            view = self.grad_views[i]
            if grad is not view:
                check_tensor(grad, f"the gradient of params[{self.indices[i]}]", owner)
                if grad.dtype != p.dtype or grad.shape != p.shape:
                    raise TypeError(f"{owner}: the gradient of params[{self.indices[i]}] is "
                                    f"{grad.dtype} {tuple(grad.shape)}, the param is "
                                    f"{p.dtype} {tuple(p.shape)}")
                if grad.data_ptr() != self.grad_addresses[i] or not grad.is_contiguous():
                    # Slow path: a gradient autograd (or the user) allocated elsewhere.
                    view.copy_(grad.detach())
                    p.grad = view
            entry = state.get(p)
            if not self.is_known(i, entry):
                self.adopt(i, entry, has_step, owner)
            step = int(self.np_steps[i]) if has_step else 0
            fresh = tuple(n for n in names if not entry or n not in entry)
            if open_run and runs[-1][2] == step and runs[-1][3] == fresh:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1, step, fresh])
                open_run = True
        return runs

    def grad_pieces(self, runs):
        """The gradients of ``runs`` as ``norm_and_finite`` takes them: 1-D views of the
        flat gradient with the block table of their params."""
        return [(self.np_grad[self.offsets[first]:self.offsets[stop]],
                 block_table(self.sizes[first:stop])) for first, stop, *_ in runs]

    def prepare(self, runs, rule, group, names, grad_scale):
        """The kernel calls of one step over ``runs``: per run, ``(run, initial values of
        its fresh state buffers, kernel arguments)``, from fastopt's scalar
        precomputation (``rule.kernel_args``) on 1-D NumPy views of the flat buffers.
        Raises before anything is written (a scalar that overflows the dtype, say);
        writes nothing but zero-filled flat state buffers no entry points at yet."""
        for name in names:
            self.state_buffer(name)
        calls = []
        for run in runs:
            first, stop, step, fresh = run
            a, b = self.offsets[first], self.offsets[stop]
            planned = SegmentStep(self.np_param[a:b],
                                  {name: self.np_state[name][a:b] for name in names},
                                  step + 1, frozenset(fresh))
            initial = {name: rule.initial_value(name, planned.param.dtype, group)
                       for name in fresh}
            calls.append((run, initial, rule.kernel_args(planned, group,
                                                         self.np_grad[a:b], grad_scale,
                                                         False)))
        return calls

    def run(self, calls, kernel, state, has_step):
        """Run the kernel calls :meth:`prepare` planned: fill fresh state, advance steps,
        register the state entries."""
        for (first, stop, step, fresh), initial, args in calls:
            a, b = self.offsets[first], self.offsets[stop]
            for name in fresh:
                self.np_state[name][a:b] = initial[name]
            kernel(*args)
            if has_step:
                self.np_steps[first:stop] += 1
            if fresh or (has_step and step == 0):
                for i in range(first, stop):
                    self.register(i, state[self.params[i]], fresh, has_step)

    def zero_grad(self, set_to_none):
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        self.grad.zero_()
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not None and p.grad is not view:
                p.grad = view
