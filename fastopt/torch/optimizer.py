"""The base class: a ``torch.optim.Optimizer`` that steps with fastopt's NumPy rule classes.

The formulas, validation and scalar precomputation live in :mod:`fastopt.optim` (one
source of truth): for each group this class calls the rule's ``check_group``,
``state_names``, ``initial_value`` and ``kernel_args`` on zero-copy NumPy views
(``tensor.numpy()``) of the flat tensors a :class:`~fastopt.torch.buckets.Bucket` owns.
"""

import math
import numbers

import torch

from ..optim.loop import loop_scale
from ..validation import as_floats, check_loop_options
from .buckets import Bucket, check_tensor


def _plain(value):
    """Python numbers for one-element tensors (torch allows a tensor ``lr``, ``betas``)."""
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


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


class Optimizer(torch.optim.Optimizer):
    """Shared machinery of ``fastopt.torch``'s optimizers (see the package docstring).

    Subclasses set ``rule`` (a :mod:`fastopt.optim` class), ``has_step`` (whether
    torch.optim keeps ``state['step']`` for the rule) and ``eager_state`` (whether torch
    creates the state at construction, as Adagrad does).
    """

    rule = None
    has_step = True
    eager_state = False

    #: ``torch.amp.GradScaler.step`` hands the scaling to ``step``: it sets ``grad_scale``
    #: (a tensor) and ``found_inf`` before calling it and deletes both after.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, *, clip_grad_norm=None, grad_scale=1.0,
                 skip_if_nonfinite=False):
        check_loop_options(clip_grad_norm, grad_scale, skip_if_nonfinite)
        self._buckets = []  # one list of Buckets per param group
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
        super().__init__(params, defaults)

    @property
    def grad_scale(self):
        """The loss scale gradients are divided by (a float option, default 1.0), or,
        inside ``torch.amp.GradScaler.step``, the tensor GradScaler set.

        Setting a number sets the option (validated at the next ``step``). Setting a
        tensor, as GradScaler does, overrides the option until ``del opt.grad_scale``
        (GradScaler deletes it after the step), which restores the option untouched."""
        amp = self._amp_grad_scale
        return self._loss_scale if amp is None else amp

    @grad_scale.setter
    def grad_scale(self, value):
        if torch.is_tensor(value):
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
        """A bare instance of the group's rule class: fastopt.optim's rule methods read only
        class attributes and their arguments, never state set by ``__init__``."""
        rule = self.rule
        return rule.__new__(rule)

    def _hyperparameters(self, group):
        """The group's hyperparameters validated by the rule, then as Python floats
        (``validation.as_floats``: the scalar arithmetic runs in float64)."""
        plain = {k: _plain(v) for k, v in group.items() if k != "params"}
        for key in ("differentiable", "capturable"):
            if plain.get(key):
                raise ValueError(f"{self._owner} does not support {key}=True (its kernels "
                                 "update CPU buffers in place, outside autograd and graphs)")
        if callable(plain.get("lr")):  # fastopt.optim's schedule form; torch has schedulers
            raise TypeError(f"{self._owner}: lr must be a number (or a one-element tensor); "
                            "for a schedule use torch.optim.lr_scheduler")
        rule = self._rule_for(plain)
        rule.check_group(plain)
        return rule, as_floats(plain)

    # --- groups ---------------------------------------------------------------------

    def add_param_group(self, param_group):
        """Add a param group (as torch.optim), copying its params into flat buffers."""
        first = sum(len(g["params"]) for g in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for i, p in enumerate(group["params"]):
                check_tensor(p, f"params[{first + i}]", self._owner)
            rule, plain = self._hyperparameters(group)
        except Exception:
            self.param_groups.pop()
            raise
        buckets, by_dtype = [], {}
        for i, p in enumerate(group["params"]):
            by_dtype.setdefault(p.dtype, []).append(i)
        for members in by_dtype.values():
            bucket = Bucket([group["params"][i] for i in members],
                            [first + i for i in members])
            buckets.append(bucket)
            if self.eager_state:
                names = rule.state_names(plain)
                for name in names:
                    bucket.state_buffer(name).fill_(rule.initial_state(name, plain))
                for i, p in enumerate(bucket.params):
                    bucket.register(i, self.state[p], names, self.has_step)
        self._buckets.append(buckets)

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

        Per group and dtype, one kernel call on the flat buffers when every parameter has
        a gradient and the same step count; one call per contiguous run of such params
        otherwise. Gradients not bound to the flat gradient buffer (allocated by autograd
        after ``zero_grad(set_to_none=True)``, or set by hand) are first copied into it
        and then bound to it. Returns ``closure()``'s loss when a closure is given.

        Atomic as :meth:`fastopt.optim.Optimizer.step`: every group is validated and
        every kernel call's arguments (scalars cast with overflow checked) are computed
        before any parameter, state or step count is written; a refused step changes
        none of them (gradients may have been gathered into the flat gradient buffer and
        rebound to it, which leaves their values as they were).

        Loop options as :meth:`fastopt.optim.Optimizer.step`: the rule sees
        ``grad / grad_scale * clip`` (one factor in the kernel call); with
        ``clip_grad_norm`` or ``skip_if_nonfinite``, one read pass over exactly the
        gradients used this step gives their global norm and finiteness first. A step
        skipped (``skip_if_nonfinite`` and an Inf/NaN, or GradScaler's ``found_inf``
        non-zero) writes no param, state or step count; ``last_step_skipped`` says so.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip, skip = self.clip_grad_norm, self.skip_if_nonfinite
        check_loop_options(clip, self._loss_scale, skip)
        grad_scale = self._loss_scale if self._amp_grad_scale is None else _amp_value(
            self._amp_grad_scale, "grad_scale", self._owner)
        found_inf = getattr(self, "found_inf", None)   # set by GradScaler.step
        found_inf = found_inf is not None and _amp_value(found_inf, "found_inf", self._owner)
        rules = [self._hyperparameters(group) for group in self.param_groups]
        plans = []
        for (rule, plain), buckets in zip(rules, self._buckets):
            names = rule.state_names(plain)
            for bucket in buckets:
                runs = bucket.plan(names, self.state, self.has_step, self._owner)
                plans.append((bucket, runs, rule, plain, names))
        if found_inf:
            self.last_step_skipped, self.last_grad_norm = True, None
            return loss
        scale, norm = loop_scale(
            lambda: [piece for bucket, runs, *_ in plans
                     for piece in bucket.grad_pieces(runs)],
            clip, grad_scale, skip)
        calls = []
        if scale is not None:
            for bucket, runs, rule, plain, names in plans:
                sign = -scale if plain.get("maximize", False) else scale
                calls.append((bucket, rule, bucket.prepare(runs, rule, plain, names, sign)))
        # Nothing can fail from here on: run the kernels, advance the steps.
        self.last_step_skipped, self.last_grad_norm = scale is None, norm
        for bucket, rule, prepared in calls:
            bucket.run(prepared, rule.kernel, self.state, self.has_step)
        return loss

    def zero_grad(self, set_to_none: bool = False):
        """Reset gradients, keeping them bound to the flat gradient buffer by default.

        * ``zero_grad()`` / ``zero_grad(set_to_none=False)``: zero the flat gradient
          buffer (one ``memset`` per group and dtype) and keep every existing ``p.grad``
          bound to its view of it, so the next backward accumulates in place and the next
          ``step`` is one kernel call. This is torch's ``set_to_none=False`` behaviour:
          a param whose ``.grad`` is ``None`` stays ``None``; a param that had a gradient
          and gets none from the next backward is stepped with a zero gradient.
          **torch.optim's default is** ``set_to_none=True``.
        * ``zero_grad(set_to_none=True)``: torch's semantics exactly: every ``p.grad``
          becomes ``None``; params that get no gradient from the next backward are skipped
          by ``step``. The next ``step`` copies the freshly allocated gradients into the
          flat buffer once (and binds them to it).
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
        saved["state"] = {
            index: {k: v.clone() if torch.is_tensor(v) else v for k, v in entry.items()}
            for index, entry in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict):
        """Load a ``state_dict`` (this class's or torch.optim's), then copy the state into
        the flat buffers. Shapes are checked before anything is loaded."""
        self._check_state_shapes(state_dict)
        super().load_state_dict(state_dict)
        for buckets in self._buckets:
            for bucket in buckets:
                for i, p in enumerate(bucket.params):
                    bucket.adopt(i, self.state.get(p), self.has_step, self._owner)

    def _check_state_shapes(self, state_dict):
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            return  # torch.optim's load_state_dict raises, saying what differs
        ids = [i for s in saved_groups for i in s["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for position, (index, p) in enumerate(zip(ids, params)):
            for key, value in (state_dict["state"].get(index) or {}).items():
                if key == "step":
                    ok = isinstance(value, numbers.Real) or (
                        torch.is_tensor(value) and value.numel() == 1)
                    shape = "a number" if ok else tuple(getattr(value, "shape", ()))
                else:
                    ok = not torch.is_tensor(value) or value.shape == p.shape
                    shape = tuple(getattr(value, "shape", ()))
                if not ok:
                    raise ValueError(
                        f"{self._owner}.load_state_dict: state[{index}][{key!r}] has shape "
                        f"{shape}, params[{position}] has {tuple(p.shape)}")
