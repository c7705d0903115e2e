"""Every rule of the registry through ``fastopt.torch``: generated classes against
torch.optim (step by step, state dict keys, checkpoints both ways), against fastopt's own
NumPy front end (bitwise: the same kernel and scalars), and their signatures against
torch's. The seed's five rules have their own deeper tests in test_torch_adapter.py; these
are driven by the test matrix (``tests/cases.py``), so a new rule is covered here with no
edit.

Tolerances as test_torch_adapter.py. NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` are
kept by torch in its default dtype and derived by fastopt in float64, so float64 runs set
torch's default dtype to float64 (as torch computes them then).
"""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from cases import MATRIX  # noqa: E402
from fastopt.rules import RULES  # noqa: E402
from test_torch_adapter import (assert_checkpoint_interchange,  # noqa: E402
                                assert_close_scaled, backward, side_by_side)
from torch_models import make_batch, make_model  # noqa: E402

SEED_CLASSES = {"SGD", "Adagrad", "RMSprop", "Adam", "AdamW"}
#: (rule, options) for every rule torch.optim has beyond the seed's, from the test matrix.
TORCH_CASES = [(name, dict(options, lr=lr)) for name, (lr, combos) in MATRIX.items()
               if RULES[name].torch_class and RULES[name].class_name not in SEED_CLASSES
               for options in combos]
ALL_CASES = [(name, dict(options, lr=lr)) for name, (lr, combos) in MATRIX.items()
             for options in combos]


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items() if k != "lr")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch_optim_every_step(case, dtype, torch_default_dtype):
    name, options = case
    torch_default_dtype(dtype)
    rule = RULES[name]
    (_, torch_opt), (_, fast_opt) = side_by_side(
        getattr(torch.optim, rule.torch_class), getattr(ft, rule.class_name), options,
        dtype=dtype)
    ours, theirs = fast_opt.state_dict(), torch_opt.state_dict()
    # torch's keys, plus fastopt's state_dtype where the rule has it (torch keeps an
    # unknown group key as it is)
    extra = {"state_dtype"} if rule.low_precision_state else set()
    assert ours["param_groups"][0].keys() == theirs["param_groups"][0].keys() | extra
    for index, entry in theirs["state"].items():
        assert ours["state"][index].keys() == entry.keys()
        for key, value in entry.items():
            assert ours["state"][index][key].dtype == value.dtype, key
            assert_close_scaled(ours["state"][index][key], value, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ALL_CASES, ids=case_id)
def test_torch_and_numpy_front_ends_agree_bitwise(case, dtype):
    """The same rule, kernel and scalars: fastopt.torch on a model's tensors and the NumPy
    optimizer on copies of them, fed the same gradients, stay bitwise equal."""
    name, options = case
    model = make_model(dtype)
    arrays = [p.detach().numpy().copy() for p in model.parameters()]
    fast_torch = getattr(ft, RULES[name].class_name)(model.parameters(), **options)
    fast_numpy = fastopt.optim.CLASSES[RULES[name].class_name](arrays, **options)
    batch = make_batch(dtype)
    for step in range(8):
        fast_torch.zero_grad()
        backward(model, batch)
        grads = [p.grad.detach().numpy().copy() for p in model.parameters()]
        fast_torch.step()
        fast_numpy.step(grads)
        for p, a in zip(model.parameters(), arrays):
            np.testing.assert_array_equal(p.detach().numpy(), a, err_msg=f"step {step}")


@pytest.mark.parametrize("transport", ["state_dict", "torch.save"])
@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
@pytest.mark.parametrize("name", sorted({name for name, _ in TORCH_CASES}))
def test_checkpoint_interchange(name, direction, transport):
    """A checkpoint of torch.optim's class resumes in fastopt.torch's and back, in
    step with the run that was not interrupted (the last combination of the matrix)."""
    lr, combos = MATRIX[name]
    options = dict(combos[-1], lr=lr)
    rule = RULES[name]
    torch_cls = lambda params: getattr(torch.optim, rule.torch_class)(  # noqa: E731
        params, foreach=False, **options)
    fast_cls = lambda params: getattr(ft, rule.class_name)(params, **options)  # noqa: E731
    assert_checkpoint_interchange(torch_cls, fast_cls, direction, transport)


@pytest.mark.parametrize("name", sorted(RULES))
def test_signature_is_torchs_then_fastopts_keywords(name):
    """torch.optim's parameters in torch's order, kinds and defaults (the rule's where
    they differ in value only), then the rule's extras and the loop options, keyword-only;
    a rule torch lacks takes its defaults in the rule's order."""
    rule = RULES[name]
    ours = list(inspect.signature(getattr(ft, rule.class_name).__init__).parameters.values())
    if rule.torch_class:
        theirs = list(inspect.signature(
            getattr(torch.optim, rule.torch_class).__init__).parameters.values())
        for mine, their in zip(ours, theirs):
            assert (mine.name, mine.kind) == (their.name, their.kind)
            assert mine.default == their.default, mine.name
        extras = ours[len(theirs):]
    else:
        assert [p.name for p in ours[2:2 + len(rule.defaults)]] == list(rule.defaults)
        extras = ours[2 + len(rule.defaults):]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)
    assert {"clip_grad_norm", "grad_scale", "skip_if_nonfinite"} <= {p.name for p in extras}
    with pytest.raises(TypeError, match="unexpected keyword|got an unexpected"):
        getattr(ft, rule.class_name)(make_model().parameters(), no_such_option=1)


def test_a_rule_torch_lacks_refuses_torch_only_keywords():
    """``fastopt.torch.Lion`` has no foreach/fused/capturable (torch has no Lion)."""
    with pytest.raises(TypeError):
        ft.Lion(make_model().parameters(), foreach=False)
