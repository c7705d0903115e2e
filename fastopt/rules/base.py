"""The rule contract: what an update rule is, once, for every front end.

A :class:`Rule` is stateless. It says, for one update rule:

* ``name`` (the registry key: ``fastopt.rules.RULES[name]``, ``reference.RULES[name]``,
  ``fastopt bench --rules name``), ``class_name`` (``fastopt.<class_name>`` and
  ``fastopt.torch.<class_name>``) and ``torch_class`` (the ``torch.optim`` class it
  matches, or ``None``);
* ``defaults``: every hyperparameter with torch's keyword name and default;
* :meth:`check`: validation of a group's hyperparameters (``fastopt.validation``);
* :meth:`state_names` and :meth:`initial_state`: the state buffers (torch's keys) a group
  needs and what each starts at;
* :meth:`options`: the kernel's compile-time options for a group, by name;
* :meth:`scalars`: the kernel's scalars for step ``t``, by name, derived in float64 from
  the group (``grad_factor`` excepted: the front end adds it), and ``sources``, which
  hyperparameter each scalar is blamed on when it overflows the buffers' dtype;
* ``kernel``: its :class:`~fastopt.kernels.config.Kernel`, called by name through the
  kernel's :class:`~fastopt.kernels.binding.Binding`;
* ``per_tensor``: whether the update reads reductions over each parameter tensor (LAMB's
  trust ratio): then :meth:`bind` gives the kernel variant ``over(sizes)``, the member
  sizes of the buffer, which the front ends pass (``sizes=``; elementwise rules ignore it,
  and ``fastopt.torch`` does not even compute it for them); with ``member_shapes`` the
  variant is ``over(shapes)``, the members' shapes (``shapes=``: Adafactor's factors);
* :meth:`state_shape`: the shape of a state buffer's per-param view (the param's unless
  a rule says otherwise: Adafactor's ``row_var`` is ``(*lead, rows, 1)``; ``None``: the
  param has no such state). The front ends lay each flat state buffer out from these
  shapes (:meth:`state_layout`), once per segment or bucket and name;
* :meth:`dtype_scalars`: scalars that depend on the buffers' dtype (Adafactor's
  ``eps1=None``: the dtype's machine epsilon), filled in by :meth:`values`;
* low-precision state: a rule whose kernel takes the scalar ``noise_key`` (its stores go
  through :func:`~fastopt.kernels.halves.store_state`) has the hyperparameter
  ``state_dtype`` (``None``: the params' dtype; ``"bfloat16"``: every state buffer in
  bfloat16, rounded stochastically on store), added to its ``defaults`` here, checked by
  :meth:`validate`; :meth:`state_dtype` and :meth:`initial_fill` say what the front ends
  allocate, and :meth:`values` takes the step's ``noise_key``.

The NumPy optimizers (:mod:`fastopt.optim`), ``fastopt.torch``, the bench, the asv suite,
the demo and the tests read the registry (:mod:`fastopt.rules`); nothing restates a rule.
A subclass with a ``name`` registers itself when its module is imported.
"""

import math

import numpy as np

from ..incoming import plain_value
from ..kernels.halves import BF16_BITS, noise_key
from ..precision import bf16_bits
from ..validation import cast_columns, cast_scalars, check_bool, check_real, short_repr

#: name -> the :class:`Rule` instance, in the order the rule modules define them.
REGISTRY = {}

#: The values of ``state_dtype`` (a rule with low-precision state): the params' dtype, or
#: bfloat16 with stochastic rounding (float32 params or master weights only).
STATE_DTYPES = (None, "bfloat16")

_NOTHING = frozenset()


class Rule:
    """Base class of every rule; see the module docstring for the contract."""

    name = None
    class_name = None
    torch_class = None
    kernel = None
    defaults = {}
    #: Whether torch.optim keeps ``state["step"]`` for the rule (SGD does not).
    counts_steps = True
    #: Whether the update depends on reductions over each parameter tensor: the kernel's
    #: variants then have ``over(sizes)`` (:class:`~fastopt.kernels.lamb.LambStep`).
    per_tensor = False
    #: With ``per_tensor``: whether the kernel's variants take ``over(shapes)`` (the
    #: members' shapes, tuples) rather than ``over(sizes)``.
    member_shapes = False
    #: Scalar name -> ``(hyperparameter, formula)``: the message of an overflow of the
    #: buffers' dtype (``validation.cast_scalars``). A scalar not listed is blamed on itself,
    #: ``grad_factor`` on the loop option ``grad_scale``.
    sources = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name") is not None:
            REGISTRY[cls.name] = cls()

    def __init__(self):
        #: The kernel's :class:`~fastopt.kernels.binding.Binding` (its arguments by name).
        self.binding = self.kernel.binding if self.kernel is not None else None
        self._ordered_sources = self.ordered_sources() if self.kernel is not None else None
        #: Whether the rule's state views have shapes of their own (:meth:`state_shape`
        #: overridden); False: every state buffer is laid out as the params.
        self.shaped_state = type(self).state_shape is not Rule.state_shape
        self._dtype_dependent = type(self).dtype_scalars is not Rule.dtype_scalars
        #: Whether the rule can keep its state in bfloat16 (its kernel takes ``noise_key``).
        self.low_precision_state = (self.binding is not None
                                    and "noise_key" in self.binding.scalars)
        if self.low_precision_state and "state_dtype" not in self.defaults:
            self.defaults = {**type(self).defaults, "state_dtype": None}

    def __repr__(self):
        return f"<fastopt rule {self.name}>"

    # --- what each rule says ------------------------------------------------------

    def check(self, group):
        """Validate a group's hyperparameters; raise ``TypeError``/``ValueError``
        naming the hyperparameter (rule-specific)."""

    def state_names(self, group):
        """The state buffers a group needs, by torch's names, in the kernel's order."""
        return ()

    def initial_state(self, name, group):
        """The value state buffer ``name`` starts at (zeros unless a rule says so)."""
        return 0.0

    def state_shape(self, name, group, shape):
        """The shape of state ``name``'s view for a param of ``shape`` (a tuple), or
        ``None`` when such a param has no ``name`` state (not in its state dict entry, no
        elements in the flat buffer). The param's shape unless a rule says otherwise;
        it may read only group keys a step cannot change (the front ends cache it)."""
        return shape

    def state_layout(self, name, group, shapes):
        """``(state shapes, offsets)`` of the flat state buffer ``name`` over members of
        ``shapes`` (the params' shapes, in order): each member's :meth:`state_shape`
        (``None``: no state) and the ``len(shapes) + 1`` offsets of the members' views
        in the buffer (the last one its length)."""
        out, offsets = [], [0]
        for shape in shapes:
            found = self.state_shape(name, group, tuple(shape))
            found = None if found is None else tuple(int(n) for n in found)
            out.append(found)
            offsets.append(offsets[-1] + (0 if found is None else math.prod(found)))
        return out, offsets

    def dtype_scalars(self, named, dtype):
        """``named`` (scalar name -> value, from :meth:`scalars`) completed with the
        values that depend on the buffers' ``dtype`` (a NumPy dtype); as it is unless a
        rule says otherwise."""
        return named

    def options(self, group):
        """The kernel's own compile-time options for ``group``: name -> bool."""
        return {}

    def scalars(self, group, t, fresh):
        """The kernel's scalars for step ``t`` (from 1) by name, as Python floats derived
        in float64, except ``grad_factor``. ``fresh``: the state names allocated for this
        step (a rule whose first step differs reads it)."""
        raise NotImplementedError

    def step_scalars(self, group, t):
        """The scalars of :meth:`scalars` that change with the step ``t``, by name (the
        rest are the same at every step with no fresh state: ``scalars(group, t, fresh)
        == {**scalars(group, 1, fresh), **step_scalars(group, t)}`` for a ``fresh`` with
        no state name, checked for every rule by ``tests/test_scalars_ahead.py``), or
        ``None``: the rule does not say, and :meth:`values_ahead` computes all of them
        each step. ``{}``: none changes. :meth:`scalars` takes these from here, so each
        formula is written once."""
        return None

    #: Per-parameter scalar state torch keeps as 0-d tensors (NAdam's ``mu_product``,
    #: ASGD's ``eta`` and ``mu``): derived from the step count by :meth:`scalar_state`,
    #: written into state dicts, recomputed (never read) on load.
    scalar_state_names = ()

    def scalar_state(self, group, t):
        """The :attr:`scalar_state_names` values after step ``t`` (0: before the first)."""
        return {}

    def rule_keys(self):
        """Group keys that say which variant of a rule wrote a state dict (torch's
        ``decoupled_weight_decay``), with this rule's values."""
        return {}

    # --- derived: the same for every rule ----------------------------------------

    def validate(self, group):
        """:meth:`check`, then the keys every rule of its kind shares (``state_dtype``)."""
        self.check(group)
        if self.low_precision_state:
            value = group["state_dtype"]
            if value not in STATE_DTYPES:
                raise ValueError(f"Invalid state_dtype: {short_repr(value)} (one of "
                                 f"{list(STATE_DTYPES)}: None keeps the state in the "
                                 "params' dtype)")

    def state_dtype(self, group, dtype):
        """The NumPy dtype of the kernel's view of ``group``'s state buffers over params
        (or master weights) of ``dtype``: ``dtype``, or ``uint16`` (bfloat16 bits) with
        ``state_dtype="bfloat16"``."""
        if self.low_precision_state and group["state_dtype"] == "bfloat16":
            return BF16_BITS
        return dtype

    def initial_fill(self, name, dtype, group):
        """:meth:`initial_value` as an element of the state buffer :meth:`state_dtype`
        gives (bfloat16 bits rounded to nearest even, for low-precision state)."""
        value = self.initial_value(name, dtype, group)
        if self.state_dtype(group, dtype) is BF16_BITS:
            return bf16_bits(np.float32(value))[()]
        return value

    def initial_value(self, name, dtype, group):
        """:meth:`initial_state` as a scalar of ``dtype`` (``ValueError`` if it does not
        fit: ``validation.cast_scalars``)."""
        value, = cast_scalars(dtype, [self.initial_state(name, group)],
                              [(f"initial {name}", f"initial {name}")])
        return value

    def values(self, group, t, fresh, grad_factor, dtype, sources=None, noise_key=0.0):
        """The kernel's scalars for step ``t``, in its order, cast to ``dtype`` with the
        overflow check (``ValueError`` naming the hyperparameter; ``sources``: another
        :meth:`ordered_sources`, for an entry whose arguments have other names).
        ``noise_key``: the stochastic rounding's key for low-precision state
        (:func:`fastopt.kernels.halves.noise_key`), passed to kernels that take one."""
        named = self.scalars(group, t, fresh)
        named["grad_factor"] = grad_factor
        if self.low_precision_state:
            named["noise_key"] = noise_key
        if self._dtype_dependent:
            named = self.dtype_scalars(named, dtype)
        return cast_scalars(dtype, self.binding.ordered_scalars(named),
                            sources or self._ordered_sources)

    def values_ahead(self, group, first, count, grad_factor, dtype, noise_keys=None,
                     base=None):
        """:meth:`values` of steps ``first`` .. ``first + count - 1`` with no fresh state, in
        a list, the casts done by column (:func:`~fastopt.validation.cast_columns`):
        bitwise what :meth:`values` gives each step. ``noise_keys``: a function of the
        step giving its noise key (low-precision state). Stops before the first step whose
        scalars would raise, and never raises: that step computes its own.

        Where the rule says which scalars move with the step (:meth:`step_scalars`), the
        others are taken from ``base`` (another step's :meth:`values` for the same group,
        gradient factor and dtype; step ``first``'s by default) and only these are
        computed for each step (Adam: two of twelve; SGD: none)."""
        binding, keyed = self.binding, self.low_precision_state
        try:
            moving = None if self._dtype_dependent else self.step_scalars(group, first)
            if moving is not None and base is None:   # the rest from one step's values
                base = self.values(group, first, _NO_FRESH, grad_factor, dtype,
                                   noise_key=0.0 if noise_keys is None else noise_keys(first))
        except Exception:   # noqa: BLE001 (step first's error: raised at that step)
            return []
        columns = {}
        try:
            if moving is None:   # every scalar, each step
                for t in range(first, first + count):
                    named = self.scalars(group, t, _NO_FRESH)
                    named["grad_factor"] = grad_factor
                    if keyed:
                        named["noise_key"] = 0.0 if noise_keys is None else noise_keys(t)
                    if self._dtype_dependent:
                        named = self.dtype_scalars(named, dtype)
                    if len(named) != len(binding.scalars):
                        break   # (Binding.ordered_scalars says why, at that step)
                    for name, value in zip(binding.scalars, binding._pick(named)):
                        columns.setdefault(name, []).append(value)
            else:
                names = [*moving, *(("noise_key",) if keyed and noise_keys else ())]
                if not set(names) <= set(binding.scalars):
                    return []   # (the step's own values say why)
                for name in names:
                    columns[name] = []
                for t in range(first, first + count):
                    named = self.step_scalars(group, t) if moving else {}
                    if keyed and noise_keys:
                        named["noise_key"] = noise_keys(t)
                    for name in names:
                        columns[name].append(named[name])
        except Exception:   # noqa: BLE001, S110 (step t's error: raised at that step)
            pass
        if moving is not None:
            columns = {name: columns.get(name, value)
                       for name, value in zip(binding.scalars, base)}
        return cast_columns(dtype, [columns.get(name, []) for name in binding.scalars],
                            count)

    def ordered_sources(self, **overrides):
        """Per kernel scalar, in order, ``(hyperparameter, formula)`` for an overflow
        message: :attr:`sources`, then ``overrides`` (scalar name -> pair)."""
        known = {"grad_factor": ("grad_scale", "1 / grad_scale"),
                 "noise_key": ("state_dtype", "the stochastic rounding's key"),
                 **self.sources, **overrides}
        return tuple(known.get(name, (name, name)) for name in self.kernel.binding.scalars)

    def bind(self, param, grad, state, group, zero_grad=False, copy=None, sizes=None,
             shapes=None):
        """``(variant, arrays)``: the kernel variant for ``group``'s options and the
        array arguments over these buffers (``state``: name -> 1-D buffer), in order.
        ``sizes``: the element counts of the tensors laid end to end in ``param`` (a tuple
        of ints, in order; ``None``: one tensor), read by a :attr:`per_tensor` rule only;
        ``shapes``: their shapes (a tuple of tuples), read by a :attr:`member_shapes`
        rule only."""
        binding = self.binding
        variant = binding.variant(self.options(group), zero_grad, copy is not None)
        if self.per_tensor:
            variant = variant.over(shapes if self.member_shapes else sizes)
        return variant, binding.arrays(param, grad, state, copy)

    def call(self, param, grad, state, values, group, zero_grad=False, copy=None,
             sizes=None, shapes=None):
        """``(variant, args)``: the kernel call over these buffers (``state``: name ->
        1-D buffer) with the scalars :meth:`values` gave; run it as ``variant(*args)``.
        ``sizes``, ``shapes``: as :meth:`bind`."""
        variant, arrays = self.bind(param, grad, state, group, zero_grad, copy, sizes,
                                    shapes)
        return variant, arrays + values

    def prepare(self, step, group, grad, grad_factor, zero_grad=False, copy=None,
                sizes=None, shapes=None):
        """:meth:`call` for a :class:`~fastopt.optim.segments.SegmentStep` ``step``
        (its ``param``, ``state``, ``step`` number and ``fresh`` names); ``sizes``,
        ``shapes``: as :meth:`bind`."""
        values = self.values(group, step.step, step.fresh, grad_factor, step.param.dtype)
        return self.call(step.param, grad, step.state, values, group, zero_grad, copy,
                         sizes, shapes)

    def check_rule_keys(self, group, where):
        """Raise ``ValueError`` if ``group`` (a saved param group) holds a
        :meth:`rule_keys` key with another value: a state dict of another rule."""
        for key, value in self.rule_keys().items():
            if key in group:
                saved = plain_value(group[key], key)
                if type(saved) is not type(value) or saved != value:
                    raise ValueError(f"{where} has {key}={short_repr(saved)}, but "
                                     f"{self.class_name} has {key}={value!r} (a state "
                                     "dict of another rule?)")


class ScalarsAhead:
    """One segment's (or bucket's) kernel scalars for its coming steps, computed ahead
    by :meth:`Rule.values`: a step's scalars cost a handful of float64 operations and a
    checked cast (about 2 us warm, and ten times that on the cold caches a training loop
    leaves after backward), the same for every step but for ``t``. While the group is the
    same object (both front ends keep one validated snapshot per group while no value
    changes) with the same gradient factor, dtype and noise stream, the first step
    computes its own only and the next computes ``AHEAD`` steps at once; a new group, a
    schedule that changes ``lr`` each step, starts over, one step at a time. Exactly the
    values :meth:`Rule.values` gives each step: the same function of the same numbers."""

    #: Steps computed at once while the group stays the same.
    AHEAD = 64

    __slots__ = ("_group", "_key", "_values", "_first")

    def __init__(self):
        self._group = self._key = self._values = None
        self._first = 0

    def values(self, rule, group, t, grad_factor, dtype, stream=None):
        """:meth:`Rule.values` of ``rule`` for ``group`` at step ``t`` with no fresh
        state; ``stream``: the low-precision state's noise stream (``noise_key(t,
        stream)``), or ``None``. Raises what :meth:`Rule.values` raises for step ``t``
        (a later step's error is left for that step)."""
        cached = (grad_factor, dtype, stream)
        ahead, first = self._values, self._first
        if ahead is not None and group is self._group and cached == self._key:
            if first <= t < first + len(ahead):
                return ahead[t - first]
            count = self.AHEAD
        else:
            count = 1
        key = 0.0 if stream is None else noise_key(t, stream)
        computed = [rule.values(group, t, _NO_FRESH, grad_factor, dtype, noise_key=key)]
        if count > 1:   # the rest cast by column (never raising: a step's error waits)
            keys = None if stream is None else (lambda step: noise_key(step, stream))
            computed += rule.values_ahead(group, t + 1, count - 1, grad_factor, dtype, keys,
                                          base=computed[0])
        self._group, self._key, self._values, self._first = group, cached, computed, t
        return computed[0]


_NO_FRESH = frozenset()


def state_dtype_name(value):
    """``state_dtype`` as the groups hold it: ``"bfloat16"`` for the name or the dtype
    itself (``torch.bfloat16``, ``ml_dtypes.bfloat16``, its NumPy dtype), anything else
    as it is (:meth:`Rule.validate` refuses what is not in :data:`STATE_DTYPES`)."""
    if value is None or isinstance(value, str):
        return value
    if str(value) == "torch.bfloat16" or getattr(value, "__name__", None) == "bfloat16" \
            or getattr(value, "name", None) == "bfloat16":
        return "bfloat16"
    return value


def check_betas(group, key="betas"):
    """``group[key]`` is a pair of numbers, each in [0, 1) (torch's wording)."""
    betas = group[key]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{key} must be a pair of numbers, got {betas!r}")
    for i, beta in enumerate(betas):
        check_real(beta, f"beta parameter at index {i}", 0.0, 1.0, high_open=True)


def lerp_coefficient(weight):
    """torch's ``lerp(start, end, w)`` is ``start + w*(end - start)`` for ``w < 0.5`` and
    ``end + (w - 1)*(end - start)`` otherwise; the kernels that follow it take this
    coefficient, ``w`` or ``w - 1``, and read the branch from its sign
    (:func:`fastopt.kernels.halves.lerp`). Adam-like rules pass ``w = 1 - beta1``."""
    return weight if weight < 0.5 else weight - 1.0


def check_flags(group, *keys):
    """Each ``group[key]`` is a bool."""
    for key in keys:
        check_bool(group[key], key)
