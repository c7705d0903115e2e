"""The NumPy front end's optimizer: parameter intake, state, step counts, state_dict.

Every public optimizer class (``fastopt.Adam``, ...) is this class bound to one
:class:`~fastopt.rules.base.Rule` (``Optimizer.rule``), made from the registry by
:mod:`fastopt.optim`. What a rule is (defaults, validation, state names, options, the
scalars of a step, the kernel) lives in the rule; everything that is the same for every
rule lives here. ``step`` computes every segment's kernel call first, then runs them.
"""

import contextlib
import gc
import numbers
import operator

import numpy as np

from ..flat import Flat, check_float_array
from ..incoming import plain_value, state_array, step_count
from ..kernels.halves import BF16_BITS, noise_key
from ..precision import _ml_dtypes as ml_dtypes
from ..precision import bf16_bits, kernel_array
from ..rules.base import ScalarsAhead, state_dtype_name
from ..threads import StepTwins
from ..validation import as_floats, check_loop_options, check_real
from .loop import loop_scale
from .segments import build_segments, check_param
from .steady import ParamGroup, SteadyPlan, run_call

__all__ = ["Optimizer", "resolve_lr"]


def resolve_lr(group, steps_taken):
    """The group with a schedule's ``lr`` evaluated for this step (validated, a float)."""
    if not callable(group["lr"]):
        return group
    return {**group, "lr": check_real(group["lr"](steps_taken), "lr", 0.0)}


class Optimizer:
    """Base class. ``params`` is a list of float32/float64 NumPy arrays, a
    :func:`fastopt.flatten` result, or a list of param groups (dicts with ``"params"``
    and per-group hyperparameters), as in ``torch.optim``.

    The optimizer updates exactly the arrays it was given, in place; it never copies
    them. Arrays that are consecutive views of one buffer (``flatten``'s views, in order)
    are updated with one kernel call; other arrays with one call each.
    """

    defaults = {}
    #: The :class:`~fastopt.rules.base.Rule` this class steps with (set per class).
    rule = None

    def __init__(self, params, *, clip_grad_norm=None, grad_scale=1.0,
                 skip_if_nonfinite=False, **hyperparameters):
        unknown = sorted(set(hyperparameters) - set(type(self).defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) "
                            f"{unknown}; it takes {sorted(type(self).defaults)}")
        self.defaults = {**type(self).defaults, **hyperparameters}
        if "state_dtype" in self.defaults:   # ml_dtypes.bfloat16 as its name
            self.defaults["state_dtype"] = state_dtype_name(self.defaults["state_dtype"])
        self.param_groups, self._segments, self._flats = [], [], []
        self._params, self._last_grads, self._validated = [], None, None
        self._twins, self._largest = StepTwins(type(self).__name__), 0
        #: (group number, dtype, noise stream or None) -> the kernel scalars of the coming
        #: steps (:class:`~fastopt.rules.base.ScalarsAhead`), shared by those segments.
        self._aheads = {}
        self._spans_cache = None   # the params' and state's byte spans (aliasing checks)
        self._span_of = []   # per gradient position: (the last array there, its span)
        self._steady = None   # the last step's plan, while it can be repeated (.steady)
        #: Loop options, optimizer-wide (attributes: change them between steps freely).
        self.clip_grad_norm = clip_grad_norm
        self.grad_scale = grad_scale
        self.skip_if_nonfinite = skip_if_nonfinite
        self._check_loop_options()
        #: Whether the last ``step`` was skipped for a non-finite gradient.
        self.last_step_skipped = False
        #: Global L2 norm of the (unscaled) gradients at the last step, when it was computed.
        self.last_grad_norm = None
        groups = params
        if isinstance(params, Flat) or not isinstance(params, (list, tuple)) or (
                params and not isinstance(params[0], dict)):
            groups = [{"params": params}]
        groups = list(groups)
        if not groups:
            raise ValueError("params: optimizer got an empty parameter list")
        for group in groups:
            self.add_param_group(group)

    # --- groups and validation ---------------------------------------------------

    def _check_loop_options(self):
        check_loop_options(self.clip_grad_norm, self.grad_scale, self.skip_if_nonfinite)

    def _check_hyperparameters(self):
        """Validate the loop options and every group, skipping the work when nothing
        changed since the last successful check (a value replaced, or a list edited in
        place, triggers a full check). Returns the groups with every number as a Python
        float (:func:`fastopt.validation.as_floats`), for the step's arithmetic."""
        snapshot = [self.clip_grad_norm, self.grad_scale, self.skip_if_nonfinite]
        for group in self.param_groups:
            snapshot.append(len(group))
            snapshot.extend(group.values())
        old = self._validated
        if (old is not None and len(old[0]) == len(snapshot)
                and all(map(operator.is_, old[0], snapshot))
                and all(tuple(value) == frozen for value, frozen in old[1])):
            return old[2]   # the very same objects as last time, no list edited in place
        self._check_loop_options()
        for group, segments in zip(self.param_groups, self._segments):
            self.rule.validate(group)
            _check_held_state(self.rule, group, segments)
        lists = [(v, tuple(v)) for group in self.param_groups
                 for k, v in group.items() if k != "params" and isinstance(v, list)]
        self._validated = (snapshot, lists, [as_floats(group) for group in self.param_groups])
        return self._validated[2]

    def add_param_group(self, group):
        """Add a param group (dict with ``"params"``; missing keys take the defaults)."""
        params = group.get("params") if isinstance(group, dict) else None
        with _gc_paused(len(params) if isinstance(params, (list, tuple)) else 0):
            self._add_param_group(group)

    def _add_param_group(self, group):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("param group must be a dict with a 'params' entry")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param group has unknown keys: {sorted(unknown)}")
        params = flat = group["params"]
        if isinstance(params, Flat):
            self._flats.append(params)
            params = params.params
        elif isinstance(params, np.ndarray):
            raise TypeError("params must be a list of arrays, not one array: "
                            "wrap it as [array]")
        params = list(params)
        if not params:
            raise ValueError("params: optimizer got an empty parameter list")
        first = len(self._params)
        for i, array in enumerate(params):
            check_param(array, f"params[{first + i}]")
        self._check_overlap(self._params + params)
        group = ParamGroup({**self.defaults,
                            **{k: v for k, v in group.items() if k != "params"}})
        if "state_dtype" in group:   # the dtype itself (ml_dtypes.bfloat16) as its name
            group["state_dtype"] = state_dtype_name(group["state_dtype"])
        self.rule.validate(group)
        _check_state_dtype(group, params, first)
        group["params"] = params
        self.param_groups.append(group)
        self._params.extend(params)
        segments = build_segments(params, first)
        if isinstance(flat, Flat):
            for seg in segments:
                seg.own_grad = kernel_array(flat.grad_view_of(seg.param))
        self._segments.append(segments)
        self._largest = max([self._largest] + [seg.param.size for seg in segments])
        self._validated = self._spans_cache = None
        # What every step walks, computed once: (group number, segment) pairs, and the
        # segments' flatten() gradient views when every segment has one (else None).
        self._work = [(g, seg) for g, segs in enumerate(self._segments) for seg in segs]
        self._firsts = [seg.members[0][0] for _, seg in self._work]   # first param index
        #: Params in a segment with others (a flat buffer): their gradient cannot be None.
        self._shared = frozenset(m[0] for _, seg in self._work if len(seg.members) > 1
                                 for m in seg.members)
        for stream, (_, seg) in enumerate(self._work):   # whose random bits are whose
            seg.stream = stream
        self._own_views = ([seg.own_grad for _, seg in self._work] if all(
            seg.own_grad is not None for _, seg in self._work) else None)

    @staticmethod
    def _check_overlap(arrays):
        spans = sorted((a.__array_interface__["data"][0], a.nbytes, i)
                       for i, a in enumerate(arrays) if a.nbytes)
        for (start, size, i), (nxt, _, j) in zip(spans, spans[1:]):
            if nxt < start + size:
                i, j = sorted((i, j))
                raise ValueError(f"params[{i}] and params[{j}] share memory; each "
                                 "parameter must appear once")

    # --- stepping ----------------------------------------------------------------

    def _resolve_grads(self, grads):
        if grads is None:
            if not self._flats:
                raise TypeError("grads is required: pass a list of gradient arrays aligned "
                                "with params (step() without grads needs a flatten() result)")
            grads = [g for flat in self._flats for g in flat.grads]
            if len(grads) == len(self._params):
                return grads, False
            raise ValueError("grads: step() without grads needs every group to be a "
                             "flatten() result")
        if isinstance(grads, Flat):
            grads = grads.grads
        elif isinstance(grads, np.ndarray):
            raise TypeError("grads must be a list of arrays aligned with params, not one array")
        grads = list(grads)
        if len(grads) != len(self._params):
            raise ValueError(f"grads has {len(grads)} arrays, params has {len(self._params)}")
        return grads, True

    def _check_grads(self, grads, zero_grad):
        shared = self._shared
        for index, (grad, param) in enumerate(zip(grads, self._params)):
            name = f"grads[{index}]"
            if grad is None:
                if index in shared:
                    raise ValueError(f"{name} is None, but params[{index}] shares a flat "
                                     "buffer with others; pass zeros instead")
                continue
            check_float_array(grad, name)
            if grad.dtype != param.dtype:
                raise TypeError(f"{name} has dtype {grad.dtype}, params[{index}] has "
                                f"{param.dtype}")
            if grad.shape != param.shape:
                raise ValueError(f"{name} has shape {grad.shape}, params[{index}] has "
                                 f"{param.shape}")
            if not grad.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous")
            if zero_grad and not grad.flags.writeable:
                raise ValueError(f"{name} is read-only, so zero_grad=True cannot zero it")
        self._check_grad_aliasing(grads, zero_grad)

    def _check_grad_aliasing(self, grads, zero_grad):
        """Refuse a gradient that shares memory with any parameter or state buffer (not
        only its own: the kernels write params and state one segment after another, so a
        later segment would read an already-updated value), or, with ``zero_grad``,
        with another gradient.

        Vectorized: the params' and state's byte spans, disjoint, sorted and kept while the
        state buffers are the same objects (:meth:`_fixed_spans`), against the gradients'
        spans with one ``searchsorted``; only where something overlaps does the sweep of
        :meth:`_explain_aliasing` find what, for the message (1e5 arrays: 9 us per array
        with the sweep, every step)."""
        starts, ends = self._fixed_spans()
        spans = self._grad_spans(grads)
        if not spans:
            return
        grad_spans = np.array(spans, dtype=np.int64).reshape(-1, 2)
        grad_spans = grad_spans[grad_spans[:, 1] > grad_spans[:, 0]]   # empty: no bytes
        first, last = grad_spans[:, 0], grad_spans[:, 1]
        # the first fixed span ending after a gradient starts is the only one it can
        # overlap first (fixed spans are disjoint and sorted)
        k = np.searchsorted(ends, first, side="right")
        overlap = bool(np.any((k < len(starts)) &
                              (starts[np.minimum(k, len(starts) - 1)] < last))) \
            if len(starts) else False
        if zero_grad and not overlap and len(first) > 1:
            order = np.argsort(first, kind="stable")
            overlap = bool(np.any(first[order][1:] <
                                  np.maximum.accumulate(last[order])[:-1]))
        if overlap:
            self._explain_aliasing(grads, zero_grad)

    def _grad_spans(self, grads):
        """The byte spans of the gradients that are not None, reusing last step's span of
        an array that comes back (the same object: its memory cannot have moved while
        the optimizer holds it; ``__array_interface__`` builds a dict per call)."""
        cache = self._span_of
        if len(cache) != len(grads):
            cache = self._span_of = [(None, None)] * len(grads)
        spans = []
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            known = cache[i]
            if known[0] is not grad:
                known = cache[i] = (grad, _span(grad))
            spans.append(known[1])
        return spans

    def _fixed_spans(self):
        """Sorted ``(starts, ends)`` (int64) of the non-empty params, state buffers and
        masters: disjoint (the constructor refuses params that share memory, and the state
        is the optimizer's own), kept until a segment's state dict is replaced (a step
        that created state, a load, a new group: they reset ``_spans_cache``)."""
        if self._spans_cache is not None:
            return self._spans_cache
        segments = [seg for group in self._segments for seg in group]
        spans = [_span(p) for p in self._params]
        spans += [_span(buffer) for seg in segments for buffer in seg.state.values()]
        spans += [_span(seg.master) for seg in segments if seg.master is not None]
        spans = np.array(sorted(s for s in spans if s[1] > s[0]), dtype=np.int64)
        found = (spans[:, 0].copy(), spans[:, 1].copy()) if len(spans) else (
            np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._spans_cache = found
        return found

    def _explain_aliasing(self, grads, zero_grad):
        """The sorted sweep over named byte spans that finds what shares memory with what,
        and raises ``ValueError`` saying so (O(n log n); run when an overlap was found)."""
        spans = [(_span(p), f"the parameters (params[{i}])", False)
                 for i, p in enumerate(self._params)]
        spans += [(_span(buffer), f"optimizer state ({name!r} of params{seg.indices})", False)
                  for segments in self._segments for seg in segments
                  for name, buffer in seg.state.items()]
        spans += [(_span(seg.master), f"optimizer state ('master' of params{seg.indices})",
                   False) for segments in self._segments for seg in segments
                  if seg.master is not None]
        spans += [(_span(g), f"grads[{i}]", True) for i, g in enumerate(grads) if g is not None]
        furthest = {False: (0, None), True: (0, None)}  # kind -> (largest end so far, name)
        for (start, end), name, is_grad in sorted(s for s in spans if s[0][1] > s[0][0]):
            for other_is_grad in ((False, True) if zero_grad else (False,)) if is_grad else (True,):
                other_end, other = furthest[other_is_grad]
                if start < other_end:
                    grad, what = (name, other) if not other_is_grad else (other, name)
                    why = " (zero_grad=True would zero it before it is read)" if (
                        is_grad and other_is_grad) else ""
                    raise ValueError(f"{grad} shares memory with {what}{why}")
            if end > furthest[is_grad][0]:
                furthest[is_grad] = (end, name)

    def step(self, grads=None, *, zero_grad=False):
        """One update of every parameter.

        ``grads``: list of gradient arrays aligned with the params (``None`` skips a
        parameter that has no gradient, as torch does). Omit it when the optimizer was
        given ``flatten()`` results: their gradient buffers are read directly. Gradients
        that are consecutive views of one buffer are read in place; others are gathered
        into a scratch buffer first (one extra copy of the gradient).

        ``zero_grad=True`` writes zero to each gradient element after reading it, in the
        same pass.

        Atomic: everything that can fail is done before the first write. Every segment's
        kernel arguments (new state buffers, the step number, the scalars cast to the
        buffers' dtype with overflow checked) are computed first; only then are the step
        counts advanced and the kernels run. A refused step raises ``TypeError`` or
        ``ValueError`` and changes nothing: params, state, step counts, gradients,
        ``last_grad_norm``/``last_step_skipped``.

        In a ``flatten()`` loop (no ``grads``), a step whose groups, loop options, state
        buffers and ``zero_grad`` are the very objects of the step before repeats that
        step's plan (:mod:`fastopt.optim.steady`): the same kernel calls, with the step's
        scalars; bitwise the full step, which runs whenever anything changed.

        Every rule sees ``g = grad / grad_scale * clip`` (negated with ``maximize``), one
        factor folded into the kernel's ``grad_scale`` argument: no extra pass. With
        ``clip_grad_norm`` or ``skip_if_nonfinite`` set, one read pass over all gradients
        first computes their global L2 norm (``last_grad_norm``, of the unscaled
        gradients) and whether all are finite; ``clip = min(1, max_norm/(norm + 1e-6))``
        as ``torch.nn.utils.clip_grad_norm_``. With ``skip_if_nonfinite`` and an Inf/NaN
        gradient, nothing is written (params, state, step counts and gradients stay
        bitwise as they were) and ``last_step_skipped`` is True.
        """
        steady = self._steady
        if grads is None and steady is not None and steady.run(self, zero_grad):
            return   # the last step's plan, repeated (.steady)
        twins = self._twins
        twins.enter(self._largest)   # refuses a concurrent step; picks the twin
        try:
            if len(self._work) < GC_PAUSE_FROM:   # (no context manager's 1 us per step)
                self._step(grads, zero_grad)
            else:
                with _gc_paused(len(self._work)):
                    self._step(grads, zero_grad)
        finally:
            twins.leave()

    def _step(self, grads, zero_grad):
        work = self._work
        if grads is None and self._own_views is not None:
            views = self._own_views                        # flatten() buffers: no checks
            last_grads = self._last_grads
        else:
            grads, given = self._resolve_grads(grads)
            if given:
                self._check_grads(grads, zero_grad)
            last_grads = grads
            work = [w for w, first in zip(work, self._firsts) if grads[first] is not None]
            views = None
        groups = self._check_hyperparameters()
        resolved = [resolve_lr(groups[g], seg.step) for g, seg in work]
        if views is None:
            views = [seg.grad_view(grads) for _, seg in work]
        if zero_grad:
            _check_zeroable(work, views)
        scale, norm = loop_scale(lambda: [(view, seg.blocks) for (_, seg), view in
                                          zip(work, views)],
                                 self.clip_grad_norm, self.grad_scale, self.skip_if_nonfinite)
        calls = []
        if scale is not None:
            rule, aheads, names_of = self.rule, self._aheads, {}
            for (g, seg), group, grad in zip(work, resolved, views):
                target = seg.target   # the param, or a half param's float32 master
                names = names_of.get(id(group))   # this step's groups: alive, unchanged
                if names is None:
                    names = names_of[id(group)] = frozenset(rule.state_names(group))
                state, fresh = self.new_state(target, seg.state, group, seg, names)
                step = seg.step + 1
                sign = -scale if group["maximize"] else scale
                stream = seg.stream if group.get("state_dtype") else None
                if fresh:
                    values = rule.values(group, step, fresh, sign, target.dtype,
                                         noise_key=0.0 if stream is None else
                                         noise_key(step, stream))
                else:   # the same for each step but t: computed ahead, once for the
                    # group's segments of one dtype (and noise stream, with bf16 state)
                    key = (g, target.dtype, stream)
                    ahead = aheads.get(key)
                    if ahead is None:
                        ahead = aheads[key] = ScalarsAhead()
                    values = ahead.values(rule, group, step, sign, target.dtype, stream)
                bound = seg.bound   # the same group, state, gradient and zero_grad: reuse
                if not (bound is not None and bound[0] is group and bound[1] is state
                        and bound[2] is grad and bound[3] == zero_grad):
                    bound = (group, state, grad, zero_grad,
                             *rule.bind(target, grad, state, group, zero_grad, seg.copy,
                                        sizes=seg.sizes, shapes=seg.shapes))
                held = rule.scalar_state(group, step) if rule.scalar_state_names else None
                calls.append((seg, state, step, grad, bound, values, held))
        # Nothing can fail from here on: commit, then run the kernels.
        self._last_grads = last_grads
        self.last_step_skipped, self.last_grad_norm = scale is None, norm
        for seg, state, step, grad, bound, values, held in calls:
            if state is not seg.state:
                self._spans_cache = None   # new state buffers: new spans
            seg.state, seg.step, seg.bound, seg.held = state, step, bound, held
            run_call(seg, bound, values)
            if zero_grad and seg._gather is not None and (grad is seg._gather
                                                          or grad.base is seg._gather):
                for index in seg.indices:
                    grads[index].fill(0)
        self._steady = SteadyPlan.after(self, groups, resolved, calls, zero_grad, views) \
            if grads is None and scale is not None else None

    def zero_grad(self):
        """Zero the gradient buffers of the ``flatten()`` results given to the optimizer,
        or else the gradient arrays passed to the last ``step``."""
        if self._flats:
            for flat in self._flats:
                flat.zero_grad()
        elif self._last_grads is not None:
            for grad in self._last_grads:
                if grad is not None:
                    grad.fill(0)

    # --- state --------------------------------------------------------------------

    def new_state(self, param, state, group, segment=None, names=None):
        """``(state, fresh)``: ``state`` (a dict of buffers by name, not changed) plus a
        buffer like ``param`` (the segment's ``target``: a half param's float32 master)
        for every name the group needs that it lacks, filled with
        :meth:`Rule.initial_value <fastopt.rules.base.Rule.initial_value>`; ``fresh`` names
        those (an empty frozenset when none). For a rule whose state has shapes of its own
        (:meth:`Rule.state_shape <fastopt.rules.base.Rule.state_shape>`), each buffer has
        the length :meth:`Segment.state_members
        <fastopt.optim.segments.Segment.state_members>` gives for ``segment`` (the
        segment whose ``param`` this is; required then). ``names``: the group's state
        names as a frozenset, when the caller has them (a step, once per group): then a
        segment with every buffer costs one set comparison."""
        if names is not None and names <= state.keys():   # every buffer there already
            return state, _NOTHING
        fresh = _NOTHING
        rule = self.rule
        dtype = None
        for name in rule.state_names(group):
            if name not in state:
                if dtype is None:
                    dtype = rule.state_dtype(group, param.dtype)
                if not fresh:
                    state, fresh = dict(state), set()
                value = rule.initial_fill(name, param.dtype, group)
                if rule.shaped_state:
                    if segment is None:
                        raise TypeError(f"{type(self).__name__}.new_state needs the "
                                        "segment: the rule's state is not shaped as "
                                        "its params")
                    _, total = segment.state_members(rule, name, group)
                    state[name] = np.full(total, value, dtype=dtype)
                else:
                    state[name] = np.full(param.shape, value, dtype=dtype)
                fresh.add(name)
        return state, fresh

    @property
    def state(self):
        """Per-parameter state as PyTorch lays it out: index -> {"step", buffers...};
        the buffers are views of the optimizer's own memory (read-only use)."""
        return {index: entry for index, entry in self._state_entries(copy=False)}

    def _state_entries(self, copy):
        rule = self.rule
        for group, segments in zip(self.param_groups, self._segments):
            for seg in segments:
                if seg.step == 0:
                    continue
                layouts = {name: seg.state_members(rule, name, group)[0]
                           for name in seg.state}
                for k, member in enumerate(seg.members):
                    entry = {"step": seg.step}
                    for name, buffer in seg.state.items():
                        where = layouts[name][k]
                        if where is None:   # the param has no such state (Adafactor's)
                            continue
                        view = seg.member_view(buffer, where)
                        if view.dtype == BF16_BITS:   # bfloat16 state, as ml_dtypes'
                            view = view.view(ml_dtypes().bfloat16)
                        entry[name] = view.copy() if copy else view
                    if seg.held:   # the rule's scalar state (NAdam's mu_product)
                        entry.update(seg.held)
                    if seg.master is not None:   # a half param's float32 master
                        view = seg.member_view(seg.master, member)
                        entry["master"] = view.copy() if copy else view
                    yield member[0], entry

    def state_dict(self):
        """``{"state": {index: {"step": int, name: array}}, "param_groups": [...]}`` in
        ``torch.optim``'s layout; arrays are copies, so the dict is a snapshot. Each group
        also holds the rule's ``rule_keys()`` (``decoupled_weight_decay``, as torch writes it)."""
        groups, first = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           **self.rule.rule_keys(), "params": list(range(first, first + count))})
            first += count
        return {"state": dict(self._state_entries(copy=True)), "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` (ours or torch.optim's, same rule, same params).

        Every value is converted and checked before anything is written: the number of
        groups and params, the keys, the hyperparameters (as at construction), the rule
        (``decoupled_weight_decay`` must match), the step counts (whole, in [1, 2**53])
        and every state buffer (:func:`fastopt.incoming.state_array`: a real float or
        integer array or tensor, of its state's shape: the param's, or the rule's
        ``state_shape``, Adafactor's factors; cast to the param's dtype). ``state_dtype``
        stays the optimizer's own: state saved in another dtype is converted (bfloat16
        state from float32 is rounded to nearest; widening is exact). A
        refused load raises ``ValueError`` (``TypeError`` for a value of the wrong type)
        saying what differs, and changes nothing."""
        if not isinstance(state_dict, dict) or {"state", "param_groups"} - set(state_dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups, state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(state, dict):
            raise ValueError("state_dict['param_groups'] must be a list and "
                             "state_dict['state'] a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, the "
                             f"optimizer has {len(self.param_groups)}")
        new_groups = []
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"state_dict param group {g}"
            ids = saved.get("params") if isinstance(saved, dict) else None
            if not isinstance(ids, (list, tuple)) or not all(
                    isinstance(i, numbers.Integral) and not isinstance(i, bool)
                    for i in ids):
                raise ValueError(f"{where} must be a dict with a 'params' list of indices")
            if len(ids) != len(group["params"]):
                raise ValueError(f"{where} has {len(ids)} params, the optimizer's has "
                                 f"{len(group['params'])}")
            unknown = set(saved) - set(self.defaults) - {"params"}
            if unknown - _TORCH_ONLY_KEYS:
                raise ValueError(f"{where} has keys this rule does not know: "
                                 f"{sorted(unknown - _TORCH_ONLY_KEYS, key=str)} "
                                 "(another rule?)")
            self.rule.check_rule_keys(saved, where)
            known = {k: plain_value(v, k) for k, v in saved.items() if k in self.defaults}
            if "state_dtype" in known:
                known["state_dtype"] = state_dtype_name(known["state_dtype"])
            new = {**group, **known}
            self.rule.validate(new)   # a saved state_dtype must be valid, then it yields:
            if "state_dtype" in new:  # the optimizer keeps its own, the state converts
                new["state_dtype"] = group["state_dtype"]
            new_groups.append((new, [int(i) for i in ids]))
        all_ids = [i for _, ids in new_groups for i in ids]
        if len(set(all_ids)) != len(all_ids):
            raise ValueError("state_dict param_groups list a param index more than once")
        plan = []  # (segment, step, {name: [(member, array)]}, scalar state)
        rule = self.rule
        for (group, saved_ids), segments in zip(new_groups, self._segments):
            ids = dict(zip((m for seg in segments for m in seg.indices), saved_ids))
            names = rule.state_names(group)
            for seg in segments:
                entries = [state.get(ids[i], state.get(str(ids[i]))) for i in seg.indices]
                step, buffers = self._plan_segment(seg, entries, names, group)
                # the rule's scalar state (NAdam's mu_product): recomputed from the step
                held = rule.scalar_state(resolve_lr(as_floats(group), step - 1), step) \
                    if step and rule.scalar_state_names else None
                plan.append((seg, step, buffers, held, _plan_master(seg, entries)))
        for (group, _), old in zip(new_groups, self.param_groups):
            old.update({k: v for k, v in group.items() if k != "params"})
        for seg, step, buffers, held, master in plan:
            seg.step, seg.held = step, held
            seg.state = {}
            self._spans_cache = None
            for name, (total, parts) in buffers.items():
                seg.state[name] = np.empty(total, dtype=parts[0][1].dtype if parts
                                           else seg.target.dtype)
                for member, array in parts:
                    seg.member_view(seg.state[name], member)[...] = array
            if master is not None:
                seg.master[...] = master

    def _plan_segment(self, seg, entries, names, group=None):
        """``(step, {name: (length, [(state member, array)])})`` for one segment, every
        array converted (:func:`fastopt.incoming.state_array`), checked against the
        shape of its state (the param's, or the rule's :meth:`state_shape
        <fastopt.rules.base.Rule.state_shape>`) and cast to the segment's dtype, so that
        writing them cannot fail. ``group``: the (new) param group."""
        for index, entry in zip(seg.indices, entries):
            if entry is not None and not isinstance(entry, dict):
                raise ValueError(f"state_dict state[{index}] must be a dict, got "
                                 f"{type(entry).__name__}")
        present = [e for e in entries if e]
        if not present:
            return 0, {}
        if len(present) != len(entries):
            raise ValueError(f"state_dict has state for some of params {seg.indices} but "
                             "not all; they share one flat buffer and must step together")
        steps = {step_count(entry.get("step", 1),   # torch's SGD keeps no step
                            f"state_dict state[{index}]['step']", 1)
                 for index, entry in zip(seg.indices, entries)}
        if len(steps) != 1:
            raise ValueError(f"state_dict has different step counts {sorted(steps)} for "
                             f"params {seg.indices}, which share one flat buffer")
        buffers = {}
        rule = self.rule
        for name in names:
            parts = []
            where, total = seg.state_members(rule, name, group)
            for member, at, entry in zip(seg.members, where, entries):
                what = f"state_dict state[{member[0]}][{name!r}]"
                if at is None:   # the param has no such state (Adafactor's variance)
                    if entry.get(name) is not None:
                        raise ValueError(f"{what}: params[{member[0]}] of shape "
                                         f"{tuple(member[3])} has no {name!r} state "
                                         "(saved by another rule?)")
                    continue
                if name not in entry or entry[name] is None:
                    raise ValueError(f"state_dict state[{member[0]}] lacks {name!r} "
                                     "(saved by another rule or with other options?)")
                array = state_array(entry[name], what)
                if array.shape != tuple(at[3]):
                    if tuple(at[3]) == tuple(member[3]):
                        raise ValueError(f"{what} has shape {array.shape}, "
                                         f"params[{member[0]}] has {member[3]}")
                    raise ValueError(f"{what} has shape {array.shape}, the {name!r} state "
                                     f"of params[{member[0]}] (shape {tuple(member[3])}) "
                                     f"has {at[3]}")
                parts.append((at, held_state(array, seg.target.dtype,
                                             rule.state_dtype(group, seg.target.dtype))))
            buffers[name] = (total, parts)
        return steps.pop(), buffers


#: Keys torch.optim writes into param groups that fastopt's rules do not use.
_TORCH_ONLY_KEYS = {"foreach", "fused", "capturable", "differentiable", "initial_lr",
                    "decoupled_weight_decay"}


_NOTHING = frozenset()


def _check_state_dtype(group, params, first):
    """bfloat16 state (``state_dtype="bfloat16"``) is for float32 params, and needs
    ml_dtypes (the state dicts hold ``ml_dtypes.bfloat16`` arrays)."""
    if group.get("state_dtype") is None:
        return
    for i, array in enumerate(params):
        if array.dtype == np.float64:
            raise ValueError(f"state_dtype={group['state_dtype']!r} keeps the state of "
                             "float32 params (or of half params' float32 master) in "
                             f"bfloat16; params[{first + i}] is float64 (use "
                             "state_dtype=None)")
    ml_dtypes()


def _plan_master(seg, entries):
    """A half segment's float32 master after a load, or ``None`` (float params): each
    member's saved ``"master"`` (checked: a real array of the param's shape), or, where
    an entry has none (a ``torch.optim`` state dict of half params), the param widened."""
    if seg.master is None:
        return None
    master = seg.param.astype(np.float32)
    for member, entry in zip(seg.members, entries):
        saved = entry.get("master") if isinstance(entry, dict) else None
        if saved is None:
            continue
        what = f"state_dict state[{member[0]}]['master']"
        array = state_array(saved, what)
        if array.shape != tuple(member[3]):
            raise ValueError(f"{what} has shape {array.shape}, params[{member[0]}] has "
                             f"{tuple(member[3])}")
        with np.errstate(all="ignore"):
            seg.member_view(master, member)[...] = array.astype(np.float32)
    return master


def _check_held_state(rule, group, segments):
    """A group's ``state_dtype`` changed between steps (its buffers are held in another
    dtype) is a ``ValueError``: checked with the group's other values, whenever one of
    them changed (``Optimizer._check_hyperparameters``)."""
    if not rule.low_precision_state:
        return
    for seg in segments:
        want = rule.state_dtype(group, seg.target.dtype)
        for name, buffer in seg.state.items():
            if buffer.dtype != want:
                raise ValueError(
                    f"state_dtype: the group's state_dtype is {group['state_dtype']!r}, but "
                    f"its {name!r} state is held as {_held_as(buffer.dtype)}; "
                    "state_dtype cannot change between steps (load a state dict into an "
                    "optimizer made with the new state_dtype instead)")


def _held_as(dtype):
    return "bfloat16" if dtype == BF16_BITS else str(dtype)


def held_state(array, param_dtype, state_dtype):
    """A loaded state array (checked, any real dtype) as the optimizer holds it:
    ``state_dtype`` (from :meth:`Rule.state_dtype <fastopt.rules.base.Rule.state_dtype>`):
    the params' dtype (a cast; out-of-range values become inf, as torch), or bfloat16 bits
    (a bfloat16 array's bits as they are, anything else through float32 rounded to
    nearest even: exact for values a bfloat16 state held)."""
    with np.errstate(all="ignore"):
        if state_dtype != BF16_BITS:
            return array.astype(param_dtype)
        if array.dtype.name == "bfloat16":
            return array.view(BF16_BITS).copy()
        return bf16_bits(array.astype(np.float32))


#: Segments (or params) from which a step (or add_param_group) pauses Python's cyclic
#: garbage collector: with 1e5 arrays each step makes a few small objects per array, and
#: the collections they trigger walk every object alive, so time goes by the square of the
#: arrays (1e5 float32 arrays of 10: a step 0.92 s with the collector running, 0.55 s
#: paused; the constructor 1.07 s and 0.57 s). Nothing it would free is made in between:
#: the pause changes when garbage is found, never what.
GC_PAUSE_FROM = 256


@contextlib.contextmanager
def _gc_paused(count):
    """Pause the cyclic garbage collector while ``count >= GC_PAUSE_FROM``, and restore it
    as it was (another thread's pause included: only who disabled it enables it)."""
    paused = count >= GC_PAUSE_FROM and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _check_zeroable(work, views):
    """With ``zero_grad``, every gradient buffer the step reads must be writable."""
    for (_, seg), view in zip(work, views):
        if not view.flags.writeable:
            first, last = seg.indices[0], seg.indices[-1]
            name = f"grads[{first}]" if first == last else f"grads[{first}:{last + 1}]"
            raise ValueError(f"{name} is read-only, so zero_grad=True cannot zero it")


def _span(array):
    """``(first byte, one past the last byte)`` of a C-contiguous array."""
    start = array.__array_interface__["data"][0]
    return start, start + array.nbytes
