"""The base class: a ``torch.optim.Optimizer`` that steps with fastopt's rules.

The formulas, validation and scalar precomputation live in the rule
(:mod:`fastopt.rules`, one source of truth): for each group this class calls the rule's
``check``, ``state_names``, ``initial_value``, ``values`` and ``call`` on zero-copy NumPy
views (``tensor.numpy()``) of the flat tensors a :class:`~fastopt.torch.buckets.Bucket` owns.
"""

import functools
import itertools
import math
import operator

import numpy as np
import torch

from ..incoming import plain_value, state_array, step_count
from ..kernels import hostpool
from ..optim.loop import loop_scale
from ..rules.base import state_dtype_name
from ..threads import StepTwins
from ..validation import as_floats, check_loop_options, check_real
from .buckets import HALF, Bucket, check_tensor


#: The NumPy dtype of each supported torch dtype (for ``validation.cast_scalars``).
#: (half-precision params: float32, the dtype of their master and state)
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                 torch.bfloat16: np.dtype(np.float32), torch.float16: np.dtype(np.float32)}


def _amp_value(value, name, owner):
    """GradScaler's ``grad_scale`` (finite, > 0) or ``found_inf`` as a Python float."""
    if torch.is_tensor(value) and value.numel() != 1:
        raise ValueError(f"{owner}: {name} must be a one-element tensor or a number, got a "
                         f"tensor of shape {tuple(value.shape)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a one-element tensor or a number, got "
                        f"{value!r}") from None
    if name == "grad_scale" and not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{owner}: Invalid grad_scale: {number!r} (GradScaler's scale must "
                         "be finite and > 0)")
    return number


def _copied(value):
    """A ``state_dict()['state']`` value with its tensors cloned: a param's entry (a dict),
    or whatever a user stored under a key of their own (``opt.state['key'] = 1``, which
    torch.optim's ``state_dict`` passes through as it is)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value.clone() if torch.is_tensor(value) else value


def _hooked_step(step):
    """``step`` wrapped as ``torch.optim.Optimizer.profile_hook_step`` wraps it: a profiler
    range ``Optimizer.step#<class>.step``, the global and the optimizer's step pre-hooks
    (which may replace the arguments), ``_optimizer_step_code``, then the post-hooks, in
    torch's order. The one difference is the range: torch's ``record_function`` costs
    about 5 us of Python per step (0.1 ms on the cold caches of a training loop, more than
    the rest of a steady step), torch's own C ``_RecordFunctionFast`` 0.2 us, and the
    profiler records both alike. Where this torch lacks either, torch's wrapper is used."""
    try:
        from torch._C._profiler import _RecordFunctionFast as record
        from torch.optim.optimizer import (_global_optimizer_post_hooks as global_post,
                                           _global_optimizer_pre_hooks as global_pre)
    except ImportError:
        return torch.optim.Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        self = args[0]
        with record(f"Optimizer.step#{type(self).__name__}.step"):
            for pre_hook in itertools.chain(global_pre.values(),
                                            self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(f"{step} must return None or a tuple of "
                                           f"(new_args, new_kwargs), but got {result}.")
            out = step(*args, **kwargs)
            self._optimizer_step_code()
            for post_hook in itertools.chain(self._optimizer_step_post_hooks.values(),
                                             global_post.values()):
                post_hook(self, args, kwargs)
            return out

    return wrapper


def _signed(factor, group):
    """The gradient factor a group's kernel call takes: negated with ``maximize``."""
    return -factor if group.get("maximize", False) else factor


def _immutable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, tuple) and all(_immutable(v) for v in value)


class Optimizer(torch.optim.Optimizer):
    """Shared machinery of ``fastopt.torch``'s optimizers (see the package docstring).

    Subclasses set ``rule`` (a :class:`fastopt.rules.base.Rule`), ``has_step`` (whether
    torch.optim keeps ``state['step']`` for the rule) and ``eager_state`` (whether torch
    creates the state of the constructor's params at construction, as Adagrad does).
    """

    rule = None
    has_step = True
    eager_state = False

    #: True with ``fused=True``, as torch's fused optimizers: ``torch.amp.GradScaler.step``
    #: then hands the unscaling to ``step`` (it sets ``grad_scale``, a tensor, and
    #: ``found_inf`` before calling it and deletes both after). False by default, so
    #: GradScaler unscales the gradients itself and frameworks that clip them (Lightning
    #: under mixed precision) accept the optimizer, as they accept torch's unfused ones.
    _step_supports_amp_scaling = False

    def __init__(self, params, defaults, *, clip_grad_norm=None, grad_scale=1.0,
                 skip_if_nonfinite=False):
        check_loop_options(clip_grad_norm, grad_scale, skip_if_nonfinite)
        if "state_dtype" in defaults:   # torch.bfloat16 as its name
            defaults = {**defaults, "state_dtype": state_dtype_name(defaults["state_dtype"])}
        self._buckets = []  # one list of Buckets per param group
        self._twins, self._largest = StepTwins(self._owner), 0
        self._twins.host_team = hostpool.torch_team   # parallel on torch's own threads
        self._hyper_cache = {}   # id(group) -> (group, its values, _hyperparameters result)
        self._checked_options = None   # the loop options last validated, if immutable
        #: Loop options, optimizer-wide, as fastopt.optim's (change them between steps).
        self.clip_grad_norm = clip_grad_norm
        self._loss_scale = grad_scale      # the float option behind the grad_scale property
        self._amp_grad_scale = None        # GradScaler's tensor, during scaler.step only
        self.skip_if_nonfinite = skip_if_nonfinite
        #: Whether the last ``step`` was skipped (non-finite gradient or GradScaler's
        #: ``found_inf``).
        self.last_step_skipped = False
        #: Global L2 norm of the unscaled gradients at the last step, when computed.
        self.last_grad_norm = None
        if defaults.get("fused"):
            self._step_supports_amp_scaling = True
        # With eager_state, as torch.optim.Adagrad.__init__: state for every param given
        # to the constructor (frozen ones too); add_param_group's params get theirs at
        # their first step, as in torch.
        self._constructing = True
        try:
            super().__init__(params, defaults)
        finally:
            self._constructing = False

    @property
    def grad_scale(self):
        """The loss scale gradients are divided by (a float option, default 1.0), or,
        inside ``torch.amp.GradScaler.step``, the tensor GradScaler set.

        Setting a number sets the option (validated at the next ``step``). Setting a
        tensor, as GradScaler does, overrides the option until ``del opt.grad_scale``
        (GradScaler deletes it after the step), which restores the option untouched.
        Setting ``None`` (GradScaler's "already unscaled", as torch's fused optimizers
        read it) clears the override and leaves the option as it is."""
        amp = self._amp_grad_scale
        return self._loss_scale if amp is None else amp

    @grad_scale.setter
    def grad_scale(self, value):
        if value is None or torch.is_tensor(value):
            self._amp_grad_scale = value
        else:
            self._loss_scale = value

    @grad_scale.deleter
    def grad_scale(self):
        self._amp_grad_scale = None

    @property
    def _owner(self):
        return f"fastopt.torch.{type(self).__name__}"

    def _rule_for(self, group):
        """The group's :class:`~fastopt.rules.base.Rule` (the class's, unless a subclass
        chooses by a group key, as Adam by ``decoupled_weight_decay``)."""
        return self.rule

    def _hyperparameters(self, group):
        """The group's hyperparameters as plain numbers, validated by the rule (its
        ``check`` and ``rule_keys``: AdamW refuses ``decoupled_weight_decay``
        False), then as Python floats (``validation.as_floats``: the scalar arithmetic
        runs in float64). Keys that are not the class's hyperparameters (set by a
        framework or the user) pass as they are."""
        plain = {k: plain_value(v, k) if k in self.defaults else v
                 for k, v in group.items() if k != "params"}
        for key in ("differentiable", "capturable"):
            if plain.get(key):
                raise ValueError(f"{self._owner} does not support {key}=True (its kernels "
                                 "update CPU buffers in place, outside autograd and graphs)")
        if callable(plain.get("lr")):  # fastopt.optim's schedule form; torch has schedulers
            raise TypeError(f"{self._owner}: lr must be a number (or a one-element tensor); "
                            "for a schedule use torch.optim.lr_scheduler")
        rule = self._rule_for(plain)
        rule.validate(plain)
        rule.check_rule_keys(plain, f"{self._owner}: a param group")
        return rule, as_floats(plain)

    def _step_hyperparameters(self, group):
        """:meth:`_hyperparameters` for a step, reused while the group holds the very same
        immutable values (Python numbers, bools, strings, ``None``, tuples of them) as at
        its last validation: a scheduler or a user that sets a new value (a new object)
        triggers a full check, and a group holding a tensor or a list (which can change
        in place) is checked at every step."""
        values = tuple(group.values())
        cached = self._hyper_cache.get(id(group))
        if (cached is not None and cached[0] is group and len(cached[1]) == len(values)
                and all(map(operator.is_, cached[1], values))):
            return cached[2]
        result = self._hyperparameters(group)
        if all(_immutable(v) for k, v in group.items() if k != "params"):
            self._hyper_cache[id(group)] = (group, values, result)
        else:
            self._hyper_cache.pop(id(group), None)
        return result

    # --- groups ---------------------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a param group (as torch.optim), copying its params into flat buffers."""
        first = sum(len(g["params"]) for g in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "state_dtype" in group:   # torch.bfloat16 as its name (state dicts, checkpoints)
            group["state_dtype"] = state_dtype_name(group["state_dtype"])
        try:
            for i, p in enumerate(group["params"]):
                check_tensor(p, f"params[{first + i}]", self._owner)
            rule, plain = self._hyperparameters(group)
            if plain.get("state_dtype") is not None:
                for i, p in enumerate(group["params"]):
                    if p.dtype == torch.float64:
                        raise ValueError(
                            f"{self._owner}: state_dtype={plain['state_dtype']!r} keeps the "
                            "state of float32 params (or of half params' float32 master) "
                            f"in bfloat16; params[{first + i}] is float64")
            names = rule.state_names(plain) if self.eager_state else []
            # Checked casts, now, whether the state is made now (the constructor's params)
            # or at the group's first step (added groups, as torch.optim.Adagrad does).
            initial = {(p.dtype, name): float(rule.initial_value(name, _NUMPY_DTYPES[p.dtype],
                                                                 plain))
                       for p in group["params"] for name in names}
        except Exception:
            self.param_groups.pop()
            raise
        buckets, by_dtype = [], {}
        for i, p in enumerate(group["params"]):
            by_dtype.setdefault(p.dtype, []).append(i)
        for dtype, members in by_dtype.items():
            bucket = Bucket([group["params"][i] for i in members],
                            [first + i for i in members],
                            stream=sum(map(len, self._buckets)) + len(buckets))
            bucket.use_rule(rule, plain)
            buckets.append(bucket)
            if self.eager_state and self._constructing:
                for name in names:
                    bucket.state_buffer(name).fill_(initial[dtype, name])
                for i, p in enumerate(bucket.params):
                    bucket.register(i, self.state[p], names, self.has_step)
        self._buckets.append(buckets)
        self._largest = max([self._largest] + [b.param.numel() for b in buckets])

    def _patch_step_function(self):
        """torch.optim's, with :func:`_hooked_step` as the wrapper (torch's own calls this
        from ``__init__`` and ``__setstate__``)."""
        self._zero_grad_profile_name = (
            f"Optimizer.zero_grad#{type(self).__name__}.zero_grad")
        cls = type(self)
        if not getattr(cls.step, "hooked", None):
            cls.step = _hooked_step(cls.step)
            cls.step.hooked = True

    def __getstate__(self):
        raise TypeError(f"{self._owner} cannot be pickled or deep-copied (its params live in "
                        "its flat buffers); save and load state_dict() instead")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # a checkpoint from torch lacks fastopt's extras
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # --- stepping -------------------------------------------------------------------

    def step(self, closure=None):
        """One update of every parameter that has a gradient (``p.grad is not None``).

        Per group and dtype, one kernel call on the flat buffers for each contiguous run
        of params whose gradients are their views of the flat gradient buffer (after
        ``zero_grad(set_to_none=False)``) with the same step count; one call per param
        whose gradient autograd allocated (after ``zero_grad()``, torch's default), read
        in place. Everything is checked before any parameter or state is written.
        Returns ``closure()``'s loss when a closure is given.

        Atomic as :meth:`fastopt.optim.Optimizer.step`: every group is validated and
        every kernel call's arguments (scalars cast with overflow checked) are computed
        before any parameter, state or step count is written; a refused step changes
        none of them (a non-contiguous gradient may have been copied into the flat
        gradient buffer, which leaves its values as they were).

        Loop options as :meth:`fastopt.optim.Optimizer.step`: the rule sees
        ``grad / grad_scale * clip`` (one factor in the kernel call); with
        ``clip_grad_norm`` or ``skip_if_nonfinite``, one read pass over exactly the
        gradients used this step gives their global norm and finiteness first. A step
        skipped (``skip_if_nonfinite`` and an Inf/NaN, or GradScaler's ``found_inf``
        non-zero) writes no param, state or step count; ``last_step_skipped`` says so.
        """
        twins = self._twins
        twins.enter(self._largest)   # refuses a concurrent step; picks the twin
        try:
            return self._step(closure)
        finally:
            twins.leave()

    def _step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip, skip = self.clip_grad_norm, self.skip_if_nonfinite
        options = (clip, self._loss_scale, skip)
        checked = self._checked_options   # the same immutable objects: already valid
        if checked is None or not all(map(operator.is_, options, checked)):
            check_loop_options(*options)
            self._checked_options = options if all(map(_immutable, options)) else None
        grad_scale = self._loss_scale if self._amp_grad_scale is None else _amp_value(
            self._amp_grad_scale, "grad_scale", self._owner)
        found_inf = getattr(self, "found_inf", None)   # set by GradScaler.step
        found_inf = found_inf is not None and _amp_value(found_inf, "found_inf", self._owner)
        rules = [self._step_hyperparameters(group) for group in self.param_groups]
        plans, ready = [], []
        # Without clipping or skipping, the factor is known now: a bucket whose step
        # repeats its last plan is prepared without planning it again (Bucket.steady).
        factor = 1.0 / grad_scale if clip is None and not skip and not found_inf else None
        for (rule, plain), buckets in zip(rules, self._buckets):
            names = rule.state_names(plain)
            for bucket in buckets:
                if factor is not None:
                    prepared = bucket.steady(names, self.state, rule, plain,
                                             _signed(factor, plain))
                    if prepared is not None:
                        ready.append((bucket, rule, prepared))
                        continue
                runs = bucket.plan(names, self.state, self.has_step, self._owner,
                                   plain.get("state_dtype"))
                plans.append((bucket, runs, rule, plain, names))
        if found_inf:
            self.last_step_skipped, self.last_grad_norm = True, None
            return loss
        grads = [bucket.grads(runs) for bucket, runs, *_ in plans]
        scale, norm = loop_scale(
            lambda: [piece for (bucket, runs, *_), run_grads in zip(plans, grads)
                     for piece in bucket.grad_pieces(runs, run_grads)],
            clip, grad_scale, skip)
        calls = ready
        if scale is not None:
            for (bucket, runs, rule, plain, names), run_grads in zip(plans, grads):
                calls.append((bucket, rule, bucket.prepare(runs, run_grads, rule, plain,
                                                           names, _signed(scale, plain))))
        # Nothing can fail from here on: run the kernels, advance the steps.
        self.last_step_skipped, self.last_grad_norm = scale is None, norm
        for bucket, rule, prepared in calls:
            bucket.run(prepared, self.state, self.has_step)
        return loss

    def zero_grad(self, set_to_none: bool = True):
        """Reset gradients, as ``torch.optim.Optimizer.zero_grad``.

        * ``zero_grad()`` / ``zero_grad(set_to_none=True)`` (torch's default): every
          ``p.grad`` becomes ``None``, so a param that gets no gradient from the next
          backward is not updated by ``step`` (its momentum and moments do not move it).
          Autograd then allocates each gradient and ``step`` reads it where it lies, one
          kernel call per such param over its slice of the flat buffers (many small ones
          are gathered with one copy and stepped with one call),
          and backward writes each gradient once instead of adding it to a zeroed buffer.
        * ``zero_grad(set_to_none=False)``: zero the flat gradient buffer (one ``memset``
          per group and dtype) and bind every existing ``p.grad`` to its view of it, so
          the next backward accumulates in place and ``step`` is one kernel call per
          group and dtype. A param whose ``.grad`` is ``None`` stays ``None`` and is
          skipped; a param that had a gradient and gets none from the next backward is
          stepped with a zero gradient, as torch does with ``set_to_none=False``.
        """
        for buckets in self._buckets:
            for bucket in buckets:
                bucket.zero_grad(set_to_none)

    # --- checkpoints ----------------------------------------------------------------

    def state_dict(self):
        """``torch.optim``'s ``state_dict`` layout and keys (``step`` a 0-d float tensor,
        buffers shaped like the params), so checkpoints interchange with torch.optim's
        class. Unlike torch.optim, the tensors are copies, not the live (flat) state:
        a checkpoint never aliases this optimizer's buffers."""
        saved = super().state_dict()
        saved["state"] = {key: _copied(value) for key, value in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict):
        """Load a ``state_dict`` (this class's or torch.optim's), then copy the state into
        the flat buffers. Everything is checked first (:meth:`_check_loadable`): a refused
        load raises ``ValueError`` (``TypeError`` for a value of the wrong type) and changes
        nothing: groups, state, step counts and flat buffers stay as they were."""
        self._check_loadable(state_dict)
        # torch casts every floating state tensor to its param's dtype as it loads; for
        # half-precision params the master and the state are float32: keep the originals.
        originals = {}
        if any(bucket.half for buckets in self._buckets for bucket in buckets):
            params = [p for group in self.param_groups for p in group["params"]]
            ids = [i for group in state_dict["param_groups"] for i in group["params"]]
            for index, p in zip(ids, params):
                entry = state_dict["state"].get(index)
                if isinstance(entry, dict):
                    originals[p] = {k: v for k, v in entry.items()
                                    if k != "step" and torch.is_tensor(v)}
        own = [group.get("state_dtype") for group in self.param_groups]
        super().load_state_dict(state_dict)
        if "state_dtype" in self.defaults:   # the optimizer keeps its own; the state converts
            for group, value in zip(self.param_groups, own):
                group["state_dtype"] = value
        for buckets in self._buckets:
            for bucket in buckets:
                for i, p in enumerate(bucket.params):
                    entry = self.state.get(p)
                    if bucket.half and entry and p in originals:
                        entry.update(originals[p])
                    bucket.adopt(i, entry, self.has_step, self._owner)

    def _check_loadable(self, state_dict):
        """Check ``state_dict`` as torch's ``load_state_dict`` will install it: each saved
        group completed with this class's defaults (as ``__setstate__`` completes it) and
        validated as at construction (:meth:`_hyperparameters`); every ``step`` a whole
        number in [0, 2**53]; every state tensor dense, CPU, of a real dtype and shaped like
        its param or, for the rule's own state names, as its ``state_shape`` says (:mod:`fastopt.incoming`). Mismatched group or param counts are left to
        torch's own checks, which raise before anything is replaced."""
        owner = f"{self._owner}.load_state_dict"
        given = state_dict if isinstance(state_dict, dict) else {}
        saved_groups, state = given.get("param_groups"), given.get("state")
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(state, dict) or \
                not all(isinstance(s, dict) and isinstance(s.get("params"), (list, tuple))
                        for s in saved_groups):
            raise ValueError(f"{owner}: state_dict must be a dict with a 'state' dict and a "
                             "'param_groups' list of dicts with 'params' lists")
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return  # torch.optim's load_state_dict raises, saying what differs
        position = 0
        for saved, group in zip(saved_groups, self.param_groups):
            merged = {**self.defaults, **{k: v for k, v in saved.items()
                                          if k not in ("params", "param_names")}}
            rule, plain = self._hyperparameters(merged)
            names = rule.state_names(plain)
            for index, p in zip(saved["params"], group["params"]):
                # a half param's float32 master is state too (Bucket.adopt copies it)
                own = (*names, "master") if p.dtype in HALF else names
                self._check_entry(state.get(index), index, position, p, own, owner,
                                  rule.scalar_state_names, rule, plain)
                position += 1

    @staticmethod
    def _check_entry(entry, index, position, param, names, owner, scalar_names=(),
                     rule=None, group=None):
        """One saved ``state[index]`` entry against params[position] (see
        :meth:`_check_loadable`); an absent or empty entry is no state. A state tensor
        of the rule's ``names`` must have the shape of the ``rule``'s
        :meth:`~fastopt.rules.base.Rule.state_shape` for ``group`` (the param's unless
        the rule says otherwise); any other tensor the param's."""
        if entry is None:
            return
        if not isinstance(entry, dict):
            raise ValueError(f"{owner}: state[{index}] must be a dict, got "
                             f"{type(entry).__name__}")
        for key, value in entry.items():
            what = f"{owner}: state[{index}][{key!r}]"
            if key == "step":
                step_count(value, what, 0)
            elif key in scalar_names:   # NAdam's mu_product: a number, recomputed anyway
                check_real(plain_value(value, what), what)
            elif torch.is_tensor(value):
                shape = state_array(value, what).shape
                want = tuple(param.shape)
                if rule is not None and rule.shaped_state and key in names:
                    want = rule.state_shape(key, group, want)
                    if want is None:
                        raise ValueError(f"{what}: params[{position}] (shape "
                                         f"{tuple(param.shape)}) has no {key!r} state "
                                         "(saved by another rule?)")
                    want = tuple(want)
                    if shape != want:
                        raise ValueError(f"{what} has shape {shape}, the {key!r} state of "
                                         f"params[{position}] (shape {tuple(param.shape)}) "
                                         f"has {want}")
                if shape != want:
                    raise ValueError(f"{what} has shape {shape}, params[{position}] has "
                                     f"{tuple(param.shape)}")
            elif value is not None and key in names:
                raise TypeError(f"{what} must be a tensor, got {type(value).__name__}")
