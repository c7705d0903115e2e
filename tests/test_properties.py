"""Property tests (hypothesis): random sizes, hyperparameters and dtypes.

* Valid hyperparameters (within torch's valid ranges, narrowed where a rule would diverge
  numerically, e.g. RMSprop's alpha <= 1) on any size, including 0 and 1 element and odd
  sizes around SIMD widths: every rule via its optimizer equals ``fastopt.reference``
  within tests/test_reference.py's tolerances.
* Invalid hyperparameters (negative, NaN, betas outside [0, 1), RMSprop's alpha above 1,
  ints too large for a float, wrong types, bools): always the documented error
  (ValueError for a bad value, TypeError for a bad type), at construction and when set
  between steps, and then nothing is written.
* A finite lr or eps beyond float32's range: a ValueError naming it at the step of a
  float32 optimizer, nothing written; a float64 optimizer takes it.

``deadline=None``: the first example of a rule compiles (or loads) its kernel.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import OPTIONS, RULES, assert_unchanged, snapshot
from test_reference import TOL

SIMD_SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65]
sizes = st.one_of(st.sampled_from(SIMD_SIZES), st.integers(0, 300))
dtypes = st.sampled_from([np.float32, np.float64])


def unit(low, high):
    return st.floats(low, high, allow_nan=False, allow_subnormal=False)


@st.composite
def valid_options(draw, rule):
    """A valid hyperparameter set for ``rule`` (lr included)."""
    flag = st.booleans()
    if rule == "sgd":
        momentum = draw(st.one_of(st.just(0.0), unit(0.0, 0.99)))
        nesterov = momentum > 0 and draw(flag)
        options = dict(lr=draw(unit(0.0, 1.0)), momentum=momentum,
                       dampening=0.0 if nesterov else draw(unit(0.0, 1.0)),
                       weight_decay=draw(unit(0.0, 0.1)), nesterov=nesterov,
                       maximize=draw(flag))
    elif rule == "adagrad":
        options = dict(lr=draw(unit(0.0, 1.0)), lr_decay=draw(unit(0.0, 0.5)),
                       weight_decay=draw(unit(0.0, 0.1)),
                       initial_accumulator_value=draw(unit(0.0, 1.0)),
                       eps=draw(unit(1e-10, 1e-3)), maximize=draw(flag))
    elif rule == "rmsprop":
        momentum = draw(st.one_of(st.just(0.0), unit(0.0, 0.95)))
        options = dict(lr=draw(unit(0.0, 0.1)), alpha=draw(unit(0.5, 0.999)),
                       eps=draw(unit(1e-8, 1e-3)), weight_decay=draw(unit(0.0, 0.1)),
                       momentum=momentum, centered=draw(flag),
                       nesterov=momentum > 0 and draw(flag), eps_in_sqrt=draw(flag),
                       maximize=draw(flag))
    elif rule in ("adam", "adamw"):
        options = dict(lr=draw(unit(0.0, 0.1)),
                       betas=(draw(unit(0.0, 0.99)), draw(unit(0.0, 0.999))),
                       eps=draw(unit(1e-8, 1e-3)), weight_decay=draw(unit(0.0, 0.1)),
                       amsgrad=draw(flag), maximize=draw(flag))
    else:   # any other rule: a combination of its test matrix, at a random lr up to its own
        lr = RULES[rule][2]
        options = dict(draw(st.sampled_from(OPTIONS[rule])), lr=draw(unit(0.0, lr)))
    return options


@st.composite
def valid_problems(draw):
    rule = draw(st.sampled_from(list(RULES)))
    seed = draw(st.integers(0, 2**32 - 1))
    return rule, draw(valid_options(rule)), draw(sizes), draw(dtypes), seed


@settings(max_examples=60, deadline=None)
@given(valid_problems())
def test_every_rule_matches_the_reference(problem):
    rule, options, size, dtype, seed = problem
    cls, ref, _ = RULES[rule]
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    param = start.copy()
    opt = cls([param], **options)
    want, state = start.copy(), {}
    for grad in grads:
        opt.step([grad])
        want, state = ref(want, grad, state, **options)
        assert param.dtype == dtype
        np.testing.assert_allclose(param, want, **TOL[dtype])
    mine = opt.state_dict()["state"][0]
    for name, value in state.items():
        if name != "step":
            np.testing.assert_allclose(mine[name], value, **TOL[dtype], err_msg=name)


#: Per rule, the hyperparameters that are numbers >= 0 (SGD's dampening may be negative;
#: a negative default, Adafactor's beta2_decay, is a number <= 0) and the flags, from the
#: rules' defaults.
NUMBER_KEYS = {rule: [k for k, v in RULES[rule][0].defaults.items() if k != "dampening"
                      and isinstance(v, float) and v >= 0] for rule in RULES}
FLAG_KEYS = {rule: [k for k, v in RULES[rule][0].defaults.items() if isinstance(v, bool)]
             for rule in RULES}
negative = st.floats(max_value=-1e-300, allow_nan=False)
wrong_number_types = st.sampled_from(["0.1", None, [0.1], complex(0.1, 0), True, b"1",
                                      np.bool_(True)])
huge_ints = st.integers(min_value=2 ** 1024, max_value=2 ** 1100)   # beyond any float
wrong_flag_types = st.sampled_from(["yes", 1, 0.0, None, [True]])


@st.composite
def invalid_options(draw):
    """``(rule, {key: bad value}, expected error, the key the message must name)``."""
    rule = draw(st.sampled_from(list(RULES)))
    kinds = ["negative", "nan", "number type", "flag type", "huge int"]
    if "betas" in RULES[rule][0].defaults:
        kinds += ["beta range", "beta nan", "beta type", "betas type"]
    if rule == "rmsprop":
        kinds += ["alpha above 1"]
    kind = draw(st.sampled_from(kinds))
    if kind == "alpha above 1":
        return rule, {"alpha": draw(st.floats(min_value=1.0, exclude_min=True))}, ValueError, \
            "alpha"
    if kind in ("negative", "nan", "number type", "huge int"):
        key = draw(st.sampled_from(NUMBER_KEYS[rule]))
        value = {"negative": negative, "nan": st.just(math.nan),
                 "number type": wrong_number_types, "huge int": huge_ints}[kind]
        return rule, {key: draw(value)}, TypeError if kind == "number type" else ValueError, key
    if kind == "flag type":
        key = draw(st.sampled_from(FLAG_KEYS[rule]))
        return rule, {key: draw(wrong_flag_types)}, TypeError, key
    index = draw(st.integers(0, 1))
    betas = [0.9, 0.999]
    name = f"beta parameter at index {index}"
    if kind == "betas type":
        return rule, {"betas": draw(st.sampled_from([0.9, (0.9,), (0.9, 0.99, 0.5), "ab"]))}, \
            TypeError, "betas"
    betas[index] = draw({"beta range": st.one_of(negative, st.floats(min_value=1.0)),
                         "beta nan": st.just(math.nan), "beta type": wrong_number_types}[kind])
    return rule, {"betas": tuple(betas)}, TypeError if kind == "beta type" else ValueError, name


@settings(max_examples=60, deadline=None)
@given(invalid_options(), dtypes, st.sampled_from([1, 5, 17]))
def test_invalid_hyperparameters_raise_the_documented_error_and_write_nothing(bad, dtype, size):
    rule, options, error, key = bad
    cls = RULES[rule][0]
    with pytest.raises(error, match=key):
        cls([np.ones(size, dtype)], **options)
    params = [np.linspace(-1, 1, size).astype(dtype)]
    opt = cls(params, lr=0.01)
    grad = np.full(size, 0.5, dtype)
    opt.step([grad])
    before = snapshot(opt, params)
    opt.param_groups[0].update(options)
    with pytest.raises(error, match=key):
        opt.step([grad], zero_grad=True)
    assert_unchanged(opt, params, before)
    np.testing.assert_array_equal(grad, 0.5)


#: Rules where a huge lr or eps set after the first step reaches no kernel scalar: Rprop
#: reads lr only when it fills step_size; ASGD's eta = lr / (1 + lambd*lr*t)**alpha stays
#: finite (and neither has eps). Adafactor's lr reaches its kernel as min(lr, 1/sqrt(t))
#: and as 1 - lr*weight_decay (weight_decay 0 here); its eps is a pair.
NO_LARGE_SCALAR = {"rprop", "asgd", "adafactor"}


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([r for r in RULES if r not in NO_LARGE_SCALAR]),
       st.sampled_from(["lr", "eps"]),
       st.floats(min_value=1e39, max_value=1e300), st.sampled_from([1, 5, 17]))
def test_a_scalar_beyond_float32_is_refused_for_float32_only(rule, key, value, size):
    if key not in RULES[rule][0].defaults:     # SGD has no eps
        key = "lr"
    cls = RULES[rule][0]
    params = [np.linspace(-1, 1, size).astype(np.float32)]
    opt = cls(params, lr=0.01)
    grad = np.full(size, 0.5, np.float32)
    opt.step([grad])
    before = snapshot(opt, params)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=f"Invalid {key}: .*float32"):
        opt.step([grad])
    assert_unchanged(opt, params, before)
    wide = [np.linspace(-1, 1, size)]
    cls(wide, **{key: value}).step([np.full(size, 0.5)])    # float64 takes it
