"""Buckets: one param group's parameters of one dtype, rebound to slices of one flat tensor.

At construction every parameter's values are copied into the bucket's flat parameter
tensor and the parameter is rebound to its slice of it, as FSDP's and DeepSpeed's flat
parameters do. The bucket also owns a flat gradient tensor (gradients are pointed at its
slices, so autograd accumulates into them), one flat tensor per state buffer
(``exp_avg``, ...), and one step count per parameter. The optimizer's ``state[p]`` entries
hold slices of these, in ``torch.optim``'s layout.

Each slice is a tensor with a storage object of its own (:func:`slices`): a non-owning
view of exactly its bytes of the flat memory, which it keeps alive. So tools that tell
tied weights by their storage (safetensors, accelerate's ``save_state``, ``torch.save``)
see separate, non-overlapping tensors, while the kernel still updates the whole flat
buffer in one call.

A step over a bucket is one kernel call when every parameter's gradient is its view of the
flat gradient buffer and all have the same step count. A gradient autograd allocated itself
(after ``zero_grad()``, which sets grads to ``None`` as torch's does) is read where it lies
(no gather copy): for an elementwise rule, the params at one step number, above the
parallel threshold in all, are stepped by one kernel call that reads each gradient by its
address (:mod:`fastopt.kernels.gathered`); otherwise with one kernel call per param over
its slice of the flat buffers. Where the bucket's such gradients are many and small
(``GATHER_BELOW_ONE_CALL`` elements on average for the one-call path, ``GATHER_BELOW``
otherwise) they are instead gathered with one ``torch._foreach_copy_`` and stepped as flat
runs: one copy costs less than reading each in place there.
"""

import operator
from functools import partial

import numpy as np
import torch

from ..flat import offsets
from ..kernels import config, gathered, hostpool
from ..kernels.halves import noise_key
from ..kernels.reductions import block_table
from ..precision import tensor_view
from ..rules.base import ScalarsAhead

SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SUPPORTED_TEXT = "dense (strided) float32/float64/bfloat16/float16 CPU tensors"

#: Half-precision parameter dtypes: trained over a float32 master the bucket keeps, with
#: the kernels reading the half gradient and writing the half copy in the same pass. Their
#: NumPy views are the kernels' bit views (:func:`fastopt.precision.tensor_view`).
HALF = (torch.bfloat16, torch.float16)

#: Foreign gradients (allocated by autograd) averaging fewer elements than this are
#: gathered into the flat gradient buffer in one copy rather than read in place with one
#: kernel call each (a call costs ~5 us of Python; a copy ~0.4 ns per element).
GATHER_BELOW = 1 << 16
#: The same where one kernel call reads the foreign gradients in place
#: (:mod:`fastopt.kernels.gathered`, elementwise rules): a gradient costs ~2.5 us of Python
#: to read in place, ~0.2 ns per element to copy (50 tensors: 1e5 elements gathered 0.19
#: ms against 0.37 ms read in place; 1e6 elements 0.86 ms against 0.59 ms).
GATHER_BELOW_ONE_CALL = 1 << 14


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


def slices(flat, shapes, offsets):
    """Tensors over ``flat[a:b]`` for consecutive ``offsets`` ``a, b``, with ``shapes``,
    each with its own storage object covering exactly its slice of ``flat``'s memory
    (``torch.from_numpy`` of a NumPy view): its ``untyped_storage()`` starts at the
    slice and is ``(b - a) * itemsize`` bytes long, so no two share a storage, none
    overlaps another, and ``torch.save`` of one writes only its bytes. The memory is
    ``flat``'s, not a copy; each slice keeps it alive (through the NumPy view). A shape
    ``None`` (a param without that state: Adafactor's) gives ``None``."""
    if flat.dtype in HALF:   # NumPy has no bfloat16: slice the int16 bits, view them back
        array = flat.view(torch.int16).numpy()
        return [None if shape is None else
                torch.from_numpy(array[a:b].reshape(tuple(shape))).view(flat.dtype)
                for shape, a, b in zip(shapes, offsets, offsets[1:])]
    array = flat.numpy()
    return [None if shape is None else torch.from_numpy(array[a:b].reshape(tuple(shape)))
            for shape, a, b in zip(shapes, offsets, offsets[1:])]


def overlaps(start, end, spans):
    """Whether bytes ``[start, end)`` overlap any ``(first, stop)`` of ``spans``."""
    return any(start < stop and first < end for first, stop in spans)


def scalar_dtype():
    """The dtype torch.optim gives ``state['step']`` (float32 unless the default is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Bucket:
    """Flat storage for ``params`` (one dtype, already checked); ``indices`` are their
    positions among all the optimizer's params (for error messages)."""

    def __init__(self, params, indices, stream=0):
        self.params, self.indices = list(params), list(indices)
        #: The bucket's number in its optimizer: which random bits its low-precision
        #: state rounds with (:func:`~fastopt.kernels.halves.noise_key`).
        self.stream = stream
        #: ``torch.bfloat16`` when the group keeps its state in bfloat16 (the rule's
        #: ``state_dtype``, set by :meth:`use_rule`), else ``None`` (the params' dtype).
        self.state_dtype = None
        #: Whether the rule updates each element on its own (:meth:`use_rule`): then runs
        #: of params step in one call (:meth:`_combined`); block tables by run boundaries.
        self.elementwise = False
        self._tables = {}
        self.sizes = tuple(p.numel() for p in self.params)
        self.offsets = offsets(self.sizes)
        dtype, total = self.params[0].dtype, self.offsets[-1]
        self.param = torch.empty(total, dtype=dtype)
        self.grad = torch.zeros(total, dtype=dtype)
        with torch.no_grad():
            for p, a, b in zip(self.params, self.offsets, self.offsets[1:]):
                self.param[a:b].copy_(p.detach().reshape(-1))
            for p, view in zip(self.params, self._views(self.param)):
                p.data = view    # its own storage over its slice of the flat buffer
        self.grad_views = self._views(self.grad)
        self.param_addresses = [p.data_ptr() for p in self.params]
        self.grad_addresses = [g.data_ptr() for g in self.grad_views]
        #: Half-precision params: the float32 master the kernels update (``master``,
        #: per-param views in ``master_views``, saved in ``state[p]["master"]``), and the
        #: params' bits, written in the same pass (``np_copy``). None for float32/64.
        self.half = dtype in HALF
        self.master = self.param.float() if self.half else None
        self.master_views = self._views(self.master) if self.half else None
        self.np_copy = tensor_view(self.param) if self.half else None
        self.np_param = (self.master if self.half else self.param).numpy()
        self.np_grad = tensor_view(self.grad)
        self.np_shapes = [tuple(p.shape) for p in self.params]
        self._gathered = []   # (index, foreign gradient) the next grads() copies in
        self._addresses = []  # the data address of each run's gradient (grads())
        self.steps = torch.zeros(len(self.params), dtype=scalar_dtype())
        self.np_steps = self.steps.numpy()
        self.step_views = [self.steps[i] for i in range(len(self.params))]  # 0-d views
        self.state = {}      # name -> flat tensor
        self.np_state = {}   # name -> its NumPy view
        self.state_views = {}  # name -> per-param shaped views
        self.known = [None] * len(self.params)  # (entry, keys, values) last registered
        #: The rule's per-param scalar state (NAdam's ``mu_product``): one entry per param
        #: in a tensor per name, 0-d views in the ``state[p]`` entries, as torch keeps it.
        self.scalar_names = ()
        self.np_scalars, self.scalar_views = {}, {}
        #: The rule and (plain) group whose :meth:`~fastopt.rules.base.Rule.state_shape`
        #: lays the state buffers out (:meth:`use_rule`); ``None``: as the params.
        self.rule = self.group = None
        self._layouts = {}   # state name -> (per-param state shapes, offsets)
        self._names_of = {}  # (i, names) -> the names param i has state for
        #: The last step's plan, when the next may repeat it (:meth:`steady`): a
        #: :class:`_Steady`, set by :meth:`run` from what :meth:`prepare` or
        #: :meth:`steady` left in ``_pending``; ``None`` after anything that could change
        #: the plan from outside (:meth:`adopt`).
        self._steady = self._pending = None

    def use_rule(self, rule, group):
        """Lay out state buffers by ``rule``'s :meth:`state_shape
        <fastopt.rules.base.Rule.state_shape>` for ``group`` (set once, before any state
        exists), and keep its scalar state names."""
        self.scalar_names = rule.scalar_state_names
        self.elementwise = not (rule.per_tensor or rule.shaped_state)
        if group.get("state_dtype") == "bfloat16":
            self.state_dtype = torch.bfloat16
        if rule.shaped_state:
            self.rule, self.group = rule, group

    def state_layout(self, name):
        """``(shapes, offsets)`` of the flat state buffer ``name``: the per-param view
        shapes (``None``: no such state) and the ``len(params) + 1`` offsets; the params'
        own for a rule whose state is shaped as its params. Cached per name."""
        found = self._layouts.get(name)
        if found is None:
            if self.rule is None:
                found = (self.np_shapes, self.offsets)
            else:
                shapes, offsets = self.rule.state_layout(name, self.group, self.np_shapes)
                found = (shapes, offsets)
            self._layouts[name] = found
        return found

    def state_offsets(self, name):
        """The offsets of the params' views in the flat state buffer ``name``."""
        return self.offsets if self.rule is None else self.state_layout(name)[1]

    def names_of(self, i, names):
        """The names among ``names`` that param ``i`` has state for (all of them unless
        the rule's :meth:`state_shape <fastopt.rules.base.Rule.state_shape>` says
        ``None`` for some)."""
        if self.rule is None:
            return names
        key = (i, tuple(names))
        found = self._names_of.get(key)
        if found is None:
            found = self._names_of[key] = tuple(
                n for n in names if self.state_layout(n)[0][i] is not None)
        return found

    def expected_shape(self, i, name):
        """The shape ``state[p][name]`` must have for param ``i`` (``None``: it has no
        such state)."""
        if self.rule is None:
            return self.np_shapes[i]
        return self.state_layout(name)[0][i]

    def _views(self, flat):
        """Per-param slices of a flat tensor, shaped like the params, each with its own
        storage object (:func:`slices`)."""
        return slices(flat, [p.shape for p in self.params], self.offsets)

    # --- state buffers and torch.optim's per-param entries ------------------------

    def state_buffer(self, name):
        """The flat state tensor ``name``, allocated (zeros) on first use (float32 for
        half-precision params: the state lives with the master)."""
        if name not in self.state:
            like = self.master if self.half else self.param
            dtype = self.state_dtype or like.dtype
            if self.rule is None:
                flat = torch.zeros(like.shape, dtype=dtype)
                views = self._views(flat)
            else:
                shapes, offsets = self.state_layout(name)
                flat = torch.zeros(offsets[-1], dtype=dtype)
                views = slices(flat, shapes, offsets)
            self.state[name], self.np_state[name] = flat, tensor_view(flat)
            self.state_views[name] = views
        return self.state[name]

    def register(self, i, entry, names, has_step):
        """Point ``entry`` (``state[p]``) at the bucket's views for ``names``, step and the
        rule's scalar state."""
        if has_step:
            entry["step"] = self.step_views[i]
        if self.half:
            entry["master"] = self.master_views[i]
        for name in self.scalar_names:
            if name not in self.np_scalars:
                held = torch.zeros(len(self.params), dtype=scalar_dtype())
                self.np_scalars[name] = held.numpy()
                self.scalar_views[name] = [held[j] for j in range(len(self.params))]
            entry[name] = self.scalar_views[name][i]
        for name in names:
            self.state_buffer(name)
            view = self.state_views[name][i]
            if view is not None:   # None: the param has no such state (Adafactor's)
                entry[name] = view
        self.known[i] = (entry, tuple(entry), tuple(entry.values()))

    def is_known(self, i, entry):
        """Whether ``entry`` is the very ``state[p]`` dict this bucket registered, still
        holding the very same objects under the same keys (nothing set from outside)."""
        known = self.known[i]
        return (known is not None and known[0] is entry and len(entry) == len(known[1])
                and all(map(operator.is_, map(entry.get, known[1]), known[2])))

    def adopt(self, i, entry, has_step, owner):
        """Copy a ``state[p]`` entry that is not ours (loaded from a checkpoint, or set by
        ``ZeroRedundancyOptimizer.load_state_dict``) into the flat buffers and point it at
        their views. An empty or missing entry means no state: the step count restarts."""
        p = self.params[i]
        self._steady = None
        if self.half:   # the master restarts from the param, unless the entry holds one
            master = entry.get("master") if entry else None
            with torch.no_grad():
                self.master_views[i].copy_(p.detach() if master is None else master)
        if not entry:
            self.np_steps[i] = 0
            self.known[i] = None
            return
        for key in list(entry):
            value = entry[key]
            if key == "master" and self.half:
                continue    # copied above
            if key == "step":
                self.np_steps[i] = float(value)
            elif key in self.scalar_names:
                continue   # recomputed from the step at the next step (the rule's)
            elif value is None:
                del entry[key]
            elif torch.is_tensor(value):
                want = self.expected_shape(i, key)
                if want is None:
                    raise ValueError(f"{owner}: state[{self.indices[i]}][{key!r}]: the param "
                                     f"(shape {tuple(p.shape)}) has no {key!r} state")
                if tuple(value.shape) != tuple(want):
                    raise ValueError(f"{owner}: state[{self.indices[i]}][{key!r}] has shape "
                                     f"{tuple(value.shape)}, " + (
                                         f"the param has {tuple(p.shape)}"
                                         if tuple(want) == tuple(p.shape) else
                                         f"the param's {key!r} state (param shape "
                                         f"{tuple(p.shape)}) has {tuple(want)}"))
                self.state_buffer(key)
                self.state_views[key][i].copy_(value)
        if has_step and "step" not in entry:
            self.np_steps[i] = 0
        names = [k for k, v in entry.items() if k not in ("step", "master")
                 and k not in self.scalar_names and torch.is_tensor(v)]
        self.register(i, entry, names, has_step)

    # --- one step ------------------------------------------------------------------

    def keeps(self, group_state_dtype):
        """Whether the state is kept as a group's ``state_dtype`` says (it cannot change
        after construction)."""
        return self.state_dtype == (torch.bfloat16 if group_state_dtype == "bfloat16"
                                    else None)

    def steady(self, names, state, rule, group, grad_factor):
        """The step :meth:`prepare` would return, without :meth:`plan` and :meth:`grads`,
        when this step repeats the last one's plan: the same params have a gradient, each
        one autograd allocated (dense, contiguous, the param's dtype and shape, outside
        the bucket's buffers), every param still in the flat buffer and its ``state[p]``
        entry the one the bucket registered, untouched; the last step one kernel call per
        step number among them (usually one) with no state to create (:class:`_Steady`). ``None`` otherwise, and then
        the full path runs (and raises, where something is wrong): this one only looks,
        and writes nothing.

        Why: inside a training loop this Python runs on caches that backward has just
        emptied, at about 10x its warm cost (six params: 0.35 ms for plan, grads and
        prepare against 0.04 ms warm). So it does as little as it can: the kernel call is
        the last one's with the new gradient addresses, its variant and arrays kept while
        the group is the same object (:meth:`Optimizer._step_hyperparameters
        <fastopt.torch.optimizer.Optimizer._step_hyperparameters>` keeps it while no value
        changed), its scalars computed ahead for the next steps (:meth:`_Steady.values`).
        """
        memo = self._steady
        if memo is None or memo.names != names or not self.keeps(group.get("state_dtype")):
            return None   # (plan refuses a state_dtype changed after construction)
        dtype, addresses, spans = self.param.dtype, {}, memo.spans
        for i, (p, has) in enumerate(zip(self.params, memo.has)):
            grad = p.grad
            if grad is None:
                if has:
                    return None
                continue
            # torch keeps a .grad on the param's device; requires_grad (create_graph)
            # changes nothing for a kernel that reads it
            if (not has or grad.layout is not torch.strided or grad.dtype is not dtype
                    or grad.shape != self.np_shapes[i] or not grad.is_contiguous()
                    or p.data_ptr() != self.param_addresses[i]):
                return None
            start = grad.data_ptr()
            if overlaps(start, start + memo.nbytes[i], spans) or \
                    not self.is_known(i, state.get(p)):
                return None
            addresses[i] = start
        if group is not memo.group or grad_factor != memo.factor:
            memo.bind(self, rule, group, grad_factor)
        calls, launches = [], []
        for call in memo.calls:   # one per step number among the params
            t = call.step + 1
            values = call.values(rule, group, grad_factor, t, self.np_param.dtype)
            if values is None or call.call is None:
                return None   # the full path raises its error
            held = rule.scalar_state(group, t)
            calls += [([i, i + 1, call.step, (), None], {}, None, held)
                      for i in call.members]
            keys = None if self.state_dtype is None else self.run_keys(t, call.members)
            launches.append((partial(call.call, [addresses[i] for i in call.members],
                                     values, keys), call.indices))
        self._pending = memo
        return calls, launches

    def plan(self, names, state, has_step, owner, group_state_dtype=None):
        """Check the gradients; return the runs ``[first, stop, step, fresh, grad]``: the
        params ``first..stop-1`` that have a gradient, the same step count and the same
        missing state names. ``grad`` is ``None`` when their gradients are the views of
        the flat gradient buffer (one kernel call over the run), or else, for a run of one
        param, its gradient (detached) as autograd put it, read there by :meth:`grads` (no
        gather copy; a non-contiguous one is copied into the flat buffer at step time).
        Many small foreign gradients (on average under ``GATHER_BELOW_ONE_CALL`` or
        ``GATHER_BELOW`` elements, see the module docstring) are instead gathered into the
        flat gradient buffer by :meth:`grads` with one ``torch._foreach_copy_`` and stepped
        as flat runs: one copy costs less than reading each in place there. ``p.grad`` is
        never rebound. Writes nothing."""
        if not self.keeps(group_state_dtype):
            raise ValueError(f"{owner}: state_dtype: a param group's state_dtype is "
                             f"{group_state_dtype!r}, but its state is kept in "
                             f"{'bfloat16' if self.state_dtype else 'the params dtype'}; "
                             "state_dtype cannot change after construction")
        # bf16 state counts steps for its random bits even where torch keeps no step (SGD)
        counts = has_step or self.state_dtype is not None
        taken = []   # (index, step, fresh, foreign tensor or None), params with a gradient
        wanted = frozenset(names)
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if p.data_ptr() != self.param_addresses[i]:
                raise RuntimeError(
                    f"{owner}: params[{self.indices[i]}] no longer lives in the optimizer's "
                    "flat buffer (its .data was replaced, e.g. by module.to(), "
                    "load_state_dict(assign=True), share_memory() or another fastopt "
                    "optimizer); create the optimizer after such changes")
            foreign = None
            if grad is not self.grad_views[i]:
                foreign = self._foreign(i, grad, owner)
            entry = state.get(p)
            own = names if self.rule is None else self.names_of(i, names)
            if self.is_known(i, entry):
                complete = (wanted if own is names else frozenset(own)).issubset(
                    self.known[i][1])
            else:
                self.adopt(i, entry, has_step, owner)
                complete = False
            step = int(self.np_steps[i]) if counts else 0
            fresh = () if complete else tuple(n for n in own if not entry or n not in entry)
            taken.append((i, step, fresh, foreign))
        foreign_sizes = [f.numel() for *_, f in taken if f is not None]
        below = (GATHER_BELOW_ONE_CALL if self.elementwise and self.state_dtype is None
                 else GATHER_BELOW)   # one call can read them where they lie (prepare)
        gather = len(foreign_sizes) > 1 and sum(foreign_sizes) < below * len(foreign_sizes)
        self._gathered = []
        runs, previous = [], None
        for i, step, fresh, foreign in taken:
            if gather and foreign is not None:
                self._gathered.append((i, foreign))
                foreign = None
            last = runs[-1] if runs and previous == i - 1 else None
            if (foreign is None and last is not None and last[4] is None
                    and last[2] == step and last[3] == fresh):
                last[1] = i + 1
            else:
                runs.append([i, i + 1, step, fresh, foreign])
            previous = i
        return runs

    def _foreign(self, i, grad, owner):
        """A gradient that is not param ``i``'s view of the flat gradient buffer, checked
        (a dense CPU tensor of the param's dtype and shape) and detached; ``None`` when it
        is that view's memory after all (another tensor object over it)."""
        if (grad.layout is not torch.strided or not grad.is_cpu
                or grad.dtype is not self.param.dtype):
            check_tensor(grad, f"the gradient of params[{self.indices[i]}]", owner)
        if grad.dtype is not self.param.dtype or grad.shape != self.np_shapes[i]:
            raise TypeError(f"{owner}: the gradient of params[{self.indices[i]}] is "
                            f"{grad.dtype} {tuple(grad.shape)}, the param is "
                            f"{self.params[i].dtype} {self.np_shapes[i]}")
        if grad.data_ptr() == self.grad_addresses[i] and grad.is_contiguous():
            return None
        return grad.detach() if grad.requires_grad else grad

    def grads(self, runs):
        """The 1-D NumPy gradient of each run, in order: a view of the flat gradient
        buffer (gathered foreign gradients copied into it first, in one call), or of the
        array autograd allocated (zero-copy, read in place). A non-contiguous gradient, or
        one lying in the bucket's own param or state memory (set by hand; copied so no
        kernel reads what it writes), is copied into its slot of the flat gradient buffer
        first. Call once per step, after every check passed."""
        if self._gathered:
            torch._foreach_copy_([self.grad_views[i] for i, _ in self._gathered],
                                 [tensor for _, tensor in self._gathered])
        out = []
        spans = None
        base, itemsize = self.grad.data_ptr(), self.grad.element_size()
        addresses = self._addresses = []   # of each run's gradient, for the one-call path
        for first, stop, _, _, foreign in runs:
            a, b = self.offsets[first], self.offsets[stop]
            array = None if foreign is None else tensor_view(foreign)
            if array is not None:
                if spans is None:
                    spans = self._spans()
                start = foreign.data_ptr()
                end = start + array.nbytes
                if array.flags.c_contiguous and not overlaps(start, end, spans):
                    out.append(array.reshape(-1))
                    addresses.append(start)
                    continue
                self.np_grad[a:b].reshape(array.shape)[...] = array
            out.append(self.np_grad[a:b])
            addresses.append(base + a * itemsize)
        return out

    def _spans(self):
        """``(first byte, one past the last)`` of the bucket's flat param, state and master
        memory: a gradient overlapping them is copied before the kernels run."""
        flats = (self.param, *self.state.values(), *((self.master,) if self.half else ()))
        return [(flat.data_ptr(), flat.data_ptr() + flat.nbytes) for flat in flats]

    def grad_pieces(self, runs, grads):
        """The gradients of ``runs`` (from :meth:`grads`) as ``norm_and_finite`` takes
        them: each with the block table of its params."""
        return [(grad, block_table(self.sizes[first:stop]))
                for (first, stop, *_), grad in zip(runs, grads)]

    def prepare(self, runs, grads, rule, group, names, grad_factor):
        """The kernel calls of one step over ``runs`` (gradients ``grads``, from
        :meth:`grads`): ``(calls, launches)``. ``calls``: per run, ``(run, initial values
        of its fresh state buffers, (variant, arguments) or ``None``, the rule's scalar
        state after the step)``, from the rule (:class:`~fastopt.rules.base.Rule`) over
        1-D NumPy views of the flat buffers; the scalars are computed and cast once per
        step number. ``launches``: ``(call, param indices)`` per set of runs stepped by
        one kernel call (:meth:`_launch`; their entries in ``calls`` have no kernel call
        of their own). Raises before anything is written (a scalar that overflows the
        dtype, say); writes nothing but zero-filled flat state buffers no entry points at
        yet."""
        for name in names:
            self.state_buffer(name)
        together = {}   # (step, fresh) -> [(run, grad, address)]: may share one call
        for run, grad, address in zip(runs, grads, self._addresses):
            together.setdefault((run[2], run[3]), []).append((run, grad, address))
        calls, launches = [], []
        dtype = self.np_param.dtype
        per_tensor = rule.per_tensor
        self._pending = None
        # (step, member params) of each launch, while the plan may be repeated (Steady)
        repeatable = [] if not self._gathered and all(
            run[4] is not None and run[1] == run[0] + 1 for run in runs) else None
        for (step, fresh), members in together.items():
            initial = {name: rule.initial_fill(name, dtype, group) for name in fresh}
            values = rule.values(group, step + 1, frozenset(fresh), grad_factor, dtype)
            held = rule.scalar_state(group, step + 1)
            launch = self._launch(members, rule, group, names, values)
            if launch is not None:
                launches.append(launch)
                calls += [(run, initial, None, held) for run, _, _ in members]
                if repeatable is not None and not fresh:
                    repeatable.append((step, [run[0] for run, _, _ in members]))
                else:
                    repeatable = None
                continue
            repeatable = None
            for run, grad, _ in members:
                first, stop = run[0], run[1]
                a, b = self.offsets[first], self.offsets[stop]
                if self.state_dtype is not None:   # bf16 state: each run its own bits
                    values = rule.values(group, step + 1, frozenset(fresh), grad_factor,
                                         dtype, noise_key=noise_key(
                                             step + 1, (self.stream << 32) + first))
                if self.rule is None:
                    state = {name: self.np_state[name][a:b] for name in names}
                else:   # the state's own layout (Adafactor's factors)
                    state = {}
                    for name in names:
                        offsets = self.state_offsets(name)
                        state[name] = self.np_state[name][offsets[first]:offsets[stop]]
                copy = self.np_copy[a:b] if self.half else None
                sizes = shapes = None
                if per_tensor:   # LAMB's norms, Adafactor's factors
                    sizes = self.sizes[first:stop]
                    shapes = tuple(self.np_shapes[first:stop])
                calls.append((run, initial, rule.call(
                    self.np_param[a:b], grad, state, values, group, copy=copy, sizes=sizes,
                    shapes=shapes), held))
        if repeatable:
            self._pending = _Steady(self, names, repeatable)
        return calls, launches

    def _launch(self, members, rule, group, names, values):
        """One kernel call for the runs of ``members`` (``(run, grad, its address)`` at
        one step number with the same fresh state), :mod:`fastopt.kernels.gathered` (the flat
        buffers walked in blocks, each run's gradient read where it lies), as
        ``(call, the params' indices)``; the parallel driver runs on torch's own OpenMP team
        where there is one (:mod:`fastopt.kernels.hostpool`; then also for one run, and,
        in a bucket above the parallel threshold, for few elements: the serial driver).
        ``None`` where that does not apply: without such a team, one run; fewer elements
        than the parallel threshold (in a bucket below it, with a team); a per-tensor rule
        or state of its own layout (a kernel over whole tensors). bf16 state always takes
        this path, its random bits by block (:meth:`run_keys`)."""
        if not self.elementwise:
            return None
        team = hostpool.torch_team()
        low = self.state_dtype is not None   # bf16 state: always here (its random bits)
        if len(members) < 2 and team is None and not low:
            return None
        offsets = self.offsets
        key = tuple((run[0], run[1]) for run, _, _ in members)
        table = self._tables.get(key)
        if table is None:
            starts = [offsets[first] for first, _ in key]
            stops = [offsets[stop] for _, stop in key]
            count = sum(stops) - sum(starts)
            # few elements: one call of the variant's serial twin (compiled once, cached
            # on disk), unless the bucket is large enough to run parallel at all, where
            # this is a lagging param's call of a steady plan (the same driver, serial)
            if count < config.PARALLEL_THRESHOLD and not low and (
                    team is None or self.np_param.shape[0] < config.PARALLEL_THRESHOLD):
                return None
            if len(self._tables) > 64:   # params that get gradients change: keep it small
                self._tables.clear()
            table = self._tables[key] = (gathered.block_table(starts, stops), np.concatenate(
                [np.arange(first, stop) for first, stop in key]), count)
        grads = [grad for _, grad, _ in members]
        addresses = [address for _, _, address in members]
        state = {name: self.np_state[name] for name in names}
        copy = self.np_copy if self.half else None
        variant, args = rule.call(self.np_param, grads[0], state, values, group, copy=copy)
        rest, noise = args[2:], None
        if low:   # each run's key; each block's from it (gathered, halves.block_key)
            step = members[0][0][2] + 1
            rest = (self.run_keys(step, [run[0] for run, _, _ in members]), *rest)
            noise = rule.binding.scalars.index("noise_key")
        return partial(gathered.run, variant, self.np_param, grads, table[0], rest,
                       addresses, team, table[2], noise), table[1]

    def run_keys(self, step, firsts):
        """The low-precision state's noise key of each run starting at param ``firsts[k]``
        at step ``step`` (:func:`~fastopt.kernels.halves.noise_key` of the step and the
        run's stream, ``(bucket stream << 32) + first``), int64: block ``b`` of a run
        rounds with ``block_key(run key, b)`` (blocks of ``gathered.BLOCK``)."""
        return np.array([noise_key(step, (self.stream << 32) + first) for first in firsts],
                        dtype=np.int64)

    def run(self, prepared, state, has_step):
        """Run the kernel calls :meth:`prepare` planned: fill fresh state, advance steps,
        set the scalar state, register the state entries."""
        calls, launches = prepared
        steady, self._pending = self._pending, None
        if steady is not None:
            for call in steady.calls:
                call.step += 1
        self._steady = steady
        counts = has_step or self.state_dtype is not None
        if counts:
            for _, indices in launches:   # the params' step counts, all at once
                self.np_steps[indices] += 1
        for (first, stop, step, fresh, _), initial, kernel, held in calls:
            for name in fresh:
                offsets = self.state_offsets(name)
                self.np_state[name][offsets[first]:offsets[stop]] = initial[name]
            if kernel is not None:
                kernel[0](*kernel[1])
                if counts:
                    self.np_steps[first:stop] += 1
            if fresh or (has_step and step == 0):
                for i in range(first, stop):
                    self.register(i, state[self.params[i]], fresh, has_step)
            for name, value in held.items():
                self.np_scalars[name][first:stop] = value
        for launch, _ in launches:   # many runs at once, their fresh state filled above
            launch()

    def zero_grad(self, set_to_none):
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        self.grad.zero_()
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not None and p.grad is not view:
                p.grad = view


class _Steady:
    """A bucket's last plan, which :meth:`Bucket.steady` checks the next step against:
    the state ``names``, which params had a gradient (``has``), the byte spans of the
    bucket's buffers a gradient must not overlap, and one :class:`_SteadyCall` per step
    number among them (usually one: every param at the same step; a param that once had no
    gradient lags one step behind from then on, in a call of its own)."""

    def __init__(self, bucket, names, calls):
        self.names = tuple(names)
        chosen = {i for _, members in calls for i in members}
        self.has = tuple(i in chosen for i in range(len(bucket.params)))
        self.spans = [*bucket._spans(), (bucket.grad.data_ptr(),
                                         bucket.grad.data_ptr() + bucket.grad.nbytes)]
        itemsize = bucket.grad.element_size()
        self.nbytes = [size * itemsize for size in bucket.sizes]
        self.calls = [_SteadyCall(bucket, step, members) for step, members in calls]
        self.group = self.factor = None

    def bind(self, bucket, rule, group, factor):
        """Each call's kernel for ``group`` (its variant by the group's options) and
        ``factor`` (the gradient's)."""
        state = {name: bucket.np_state[name] for name in self.names}
        copy = bucket.np_copy if bucket.half else None
        variant, arrays = rule.bind(bucket.np_param, bucket.np_grad, state, group,
                                    copy=copy)
        self.group, self.factor = group, factor
        for call in self.calls:
            call.bind(bucket, rule, group, factor, variant, arrays[2:])


class _SteadyCall:
    """One kernel call of a :class:`_Steady` plan: its params (``members``), the step
    count they all have now (``step``), their block table, the call (:meth:`bind`, a
    :class:`~fastopt.kernels.gathered.Repeated`) and its scalars (:meth:`values`)."""

    def __init__(self, bucket, step, members):
        self.step, self.members = step, tuple(members)
        # the members' step counts: a slice when they are consecutive (all, usually)
        self.indices = (slice(members[0], members[-1] + 1)
                        if list(members) == list(range(members[0], members[-1] + 1))
                        else np.array(members, dtype=np.intp))
        key = tuple((i, i + 1) for i in members)
        self.table = bucket._tables[key][0]   # made by the launch that planned it
        self.call = None
        self.ahead = ScalarsAhead()

    def bind(self, bucket, rule, group, factor, variant, arrays):
        values = self.values(rule, group, factor, self.step + 1, bucket.np_param.dtype)
        noise = None
        if bucket.state_dtype is not None:   # the runs' noise keys, rewritten each step
            arrays = (np.zeros(len(self.members), dtype=np.int64), *arrays)
            noise = rule.binding.scalars.index("noise_key")
        #: The kernel call, run with each step's gradient addresses and scalars.
        self.call = None if values is None else gathered.Repeated(
            variant, bucket.np_param, self.table, arrays, values, bucket.np_grad.dtype,
            hostpool.torch_team(), noise)

    def values(self, rule, group, factor, t, dtype):
        """The kernel's scalars for step ``t`` (:class:`~fastopt.rules.base.ScalarsAhead`),
        or ``None`` if they raise (a scalar that overflows): the full path then raises the
        same error."""
        try:
            return self.ahead.values(rule, group, t, factor, dtype)
        except Exception:   # noqa: BLE001 (the full path raises it, with its message)
            return None
