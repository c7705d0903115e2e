"""The steady step of a ``flatten()`` loop: the last step's plan, repeated.

A training loop over :func:`fastopt.flatten` buffers calls ``opt.step()`` with the same
groups, the same state buffers and the same gradient views every time; only the step
number moves. :meth:`Optimizer.step <fastopt.optim.Optimizer.step>` then needs none of its
planning (gradients resolved, groups resolved, state looked up, arguments bound): after a
step that could be repeated, :class:`SteadyPlan` keeps what it bound, and the next step,
if nothing it depends on changed, computes the step's scalars (the same
:class:`~fastopt.rules.base.ScalarsAhead` the full step reads) and runs the same kernel
calls. Anything else (gradients passed in, a group value replaced, a list edited in
place, a clip or non-finite check, a schedule, new or loaded state, another group, a
changed ``zero_grad``) takes the full step, which raises where it raises.

At 1e3 elements the full step's Python is most of the step (5 us against a 0.5 us
kernel call); the steady step is what the small-model loop pays.
"""

from ..kernels import config

__all__ = ["ParamGroup", "SteadyPlan"]


class ParamGroup(dict):
    """A param group of the NumPy front end: a ``dict`` that counts the writes made to it
    (``version``: every method that adds, replaces or removes an entry bumps it), so that
    a step can see in O(1) that no value was replaced since the last one (a group's
    values compared one by one cost 0.2 us of a 2.5 us step at 1e3 elements). Values
    edited in place (a list) are not writes: :class:`SteadyPlan` makes no plan while a
    group holds a list. Nor is ``dict.__setitem__(group, key, value)`` called on
    ``dict`` itself; and a group replaced by a plain dict steps by the full step only."""

    version = 0   # (a class default: unpickling sets the items before the attributes)

    def _written(method):   # noqa: N805 (a decorator for the methods below)
        def written(self, *args, **kwargs):
            self.version += 1
            return method(self, *args, **kwargs)
        written.__name__, written.__doc__ = method.__name__, method.__doc__
        return written

    __setitem__ = _written(dict.__setitem__)
    __delitem__ = _written(dict.__delitem__)
    __ior__ = _written(dict.__ior__)
    update = _written(dict.update)
    setdefault = _written(dict.setdefault)
    pop = _written(dict.pop)
    popitem = _written(dict.popitem)
    clear = _written(dict.clear)
    del _written


class SteadyPlan:
    """What a full step bound, for the next ones: per segment ``(segment, its group's
    validated snapshot, the bound call, its ScalarsAhead, gradient factor, dtype, noise
    stream)``, and what the plan assumed: the optimizer's work list, its param groups
    and their versions (:class:`ParamGroup`: no write since the full step validated
    them), ``grad_scale`` (the same object) and ``zero_grad``."""

    __slots__ = ("work", "groups", "versions", "grad_scale", "zero_grad", "segments",
                 "views")

    def __init__(self, optimizer, zero_grad, segments, views):
        self.work, self.zero_grad = optimizer._work, zero_grad
        self.groups = tuple(optimizer.param_groups)
        self.versions = tuple(group.version for group in self.groups)
        self.grad_scale = optimizer.grad_scale
        self.segments, self.views = segments, views

    @classmethod
    def after(cls, optimizer, groups, resolved, calls, zero_grad, views):
        """The plan repeating a full step of ``optimizer`` that made ``calls`` (its
        ``(segment, state, step, grad, bound, values, held)`` tuples) over ``groups``
        (its validated snapshot; ``resolved``: with each segment's ``lr`` resolved), or
        ``None`` where the next step must plan again: a schedule, a loop option that
        reads the gradients, a list among the group values (it may be edited in place),
        state created by this step."""
        if len(calls) != len(optimizer._work) or _reads_gradients(optimizer) or any(
                type(group) is not ParamGroup or any(
                    isinstance(value, list) for key, value in group.items() if key != "params")
                for group in optimizer.param_groups):
            return None
        segments = []
        aheads = optimizer._aheads
        scale = 1.0 / optimizer.grad_scale
        for (g, seg), group, (_, state, _, _, bound, _, _) in zip(
                optimizer._work, resolved, calls):
            if group is not groups[g] or bound[1] is not state:   # a schedule's lr
                return None
            stream = seg.stream if group.get("state_dtype") else None
            ahead = aheads.get((g, seg.target.dtype, stream))
            if ahead is None:   # this step created the segment's state
                return None
            sign = -scale if group["maximize"] else scale
            segments.append((seg, group, bound, ahead, sign, seg.target.dtype, stream))
        return cls(optimizer, zero_grad, tuple(segments), views)

    def run(self, optimizer, zero_grad):
        """Step ``optimizer`` by this plan and return True, or return False (having
        written nothing) where the plan no longer holds: a loop option is not the very
        same object now, a param group was replaced or written to (:class:`ParamGroup`),
        or a segment's state was created or loaded since. Raises what the full step
        would raise (a concurrent step; a scalar that overflows at this step) before
        anything is written."""
        if (zero_grad != self.zero_grad or optimizer._work is not self.work
                or optimizer.grad_scale is not self.grad_scale
                or _reads_gradients(optimizer)):
            return False
        groups = optimizer.param_groups
        if len(groups) != len(self.groups):
            return False
        for group, planned, version in zip(groups, self.groups, self.versions):
            if group is not planned or group.version != version:
                return False
        twins = optimizer._twins
        small = optimizer._largest < config.PARALLEL_THRESHOLD   # enter() only locks then
        if not small:
            twins.enter(optimizer._largest)   # refuses a concurrent step; picks the twin
        elif not twins._busy.acquire(blocking=False):
            twins.enter(0)                    # raises, naming the two threads
        try:
            rule = optimizer.rule
            held_state = rule.scalar_state if rule.scalar_state_names else None
            calls = []
            for seg, group, bound, ahead, sign, dtype, stream in self.segments:
                if seg.bound is not bound or seg.state is not bound[1]:
                    return False   # state created or loaded since
                step = seg.step + 1
                calls.append((seg, bound, step,
                              ahead.values(rule, group, step, sign, dtype, stream),
                              None if held_state is None else held_state(group, step)))
            if zero_grad:
                for view in self.views:
                    if not view.flags.writeable:
                        return False   # the full step refuses it, naming the gradient
            optimizer.last_step_skipped = False
            optimizer.last_grad_norm = None
            serial = small or config.serial_chosen()
            for seg, bound, step, values, held in calls:
                seg.step = step
                seg.held = held
                entry = seg.entry
                if serial and entry is not None and entry[0] is bound:
                    entry[1](*bound[5], *values)   # (run_call's first case, inlined)
                else:
                    run_call(seg, bound, values)
            return True
        finally:
            if small:
                twins._busy.release()
            else:
                twins.leave()


def _reads_gradients(optimizer):
    """Whether a loop option makes the step read the gradients before it updates (a clip
    or the non-finite check: a norm pass, which the plan does not repeat); an option
    that is not its default object also counts, so the full step validates it."""
    return optimizer.clip_grad_norm is not None or optimizer.skip_if_nonfinite is not False


def run_call(seg, bound, values):
    """Run ``seg``'s bound kernel call with ``values``: through the serial twin's entry
    point (no type dispatch) when the serial twin runs, else through the variant."""
    entry = seg.entry
    if entry is not None and entry[0] is bound and (
            bound[5][0].shape[0] < config.PARALLEL_THRESHOLD or config.serial_chosen()):
        entry[1](*bound[5], *values)
        return
    bound[4](*bound[5], *values)
    if entry is None or entry[0] is not bound:
        seg.entry = _serial_entry(bound, values)


def _serial_entry(bound, values):
    """``(bound, the serial twin's entry point for its arguments)`` for a plain kernel
    variant whose serial twin is compiled for them (:meth:`Variant.serial_entry
    <fastopt.kernels.config.Variant.serial_entry>`), else ``None``."""
    variant = bound[4]
    if type(variant) is not config.Variant:   # a per-tensor rule's compound call
        return None
    entry = variant.serial_entry((*bound[5], *values))
    return None if entry is None else (bound, entry)
