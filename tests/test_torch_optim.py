"""fastopt's NumPy optimizers against torch.optim itself, step by step, for every option
combination torch supports (RMSprop's nesterov and eps_in_sqrt are fastopt's own).

Tolerances as in test_reference.py: float32 rtol 2e-5 (torch's single-tensor path rounds
each operation separately, fastopt fuses multiply-adds: a few ulp a step, compounding
over 40 steps); float64 rtol 1e-11.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cases import CASES, RULES, case_id  # noqa: E402

from fastopt.rules import RULES as REGISTRY  # noqa: E402

TORCH_ONLY_NOT = {"nesterov", "eps_in_sqrt"}
#: The rules torch.optim has (not Lion), by torch's class name.
TORCH_CLASS = {name: rule.torch_class for name, rule in REGISTRY.items() if rule.torch_class}
TORCH_CASES = [c for c in CASES if c[0] in TORCH_CLASS
               and not (c[0] == "rmsprop" and TORCH_ONLY_NOT & set(c[1]))]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}
STEPS = 40


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch_optim_step_by_step(case, dtype, torch_default_dtype):
    rule, options = case
    if dtype == np.float64:   # NAdam's and ASGD's scalar state as fastopt derives it
        torch_default_dtype(np.float64)
    cls, _, lr = RULES[rule]
    rng = np.random.default_rng(1)
    shapes = [(6, 4), (4,), (3, 2, 2)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [p.copy() for p in params]
    opt = cls(ours, lr=lr, **options)
    theirs = [torch.tensor(p, requires_grad=True) for p in params]
    torch_opt = getattr(torch.optim, TORCH_CLASS[rule])(theirs, lr=lr, foreach=False,
                                                         **options)
    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for t, g in zip(theirs, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_opt.step()
        opt.step(grads)
        for i, (a, t) in enumerate(zip(ours, theirs)):
            np.testing.assert_allclose(a, t.detach().numpy(), **TOL[dtype],
                                       err_msg=f"step {step + 1}, param {i}")


@pytest.mark.parametrize("rule", list(TORCH_CLASS))
def test_defaults_match_torch(rule):
    """Same keyword names and default values as torch.optim's class."""
    import inspect

    cls = RULES[rule][0]
    signature = inspect.signature(getattr(torch.optim, TORCH_CLASS[rule]).__init__)
    torch_defaults = {name: p.default for name, p in signature.parameters.items()
                      if name in cls.defaults}
    assert torch_defaults, "no shared keywords: names drifted"
    for name, value in torch_defaults.items():
        ours = cls.defaults[name]
        assert ours == (tuple(value) if isinstance(value, tuple) else value), name
    torch_only = {name for name, p in signature.parameters.items()
                  if p.default is not inspect.Parameter.empty} - set(cls.defaults)
    assert torch_only <= {"foreach", "fused", "capturable", "differentiable",
                          "decoupled_weight_decay"}, torch_only


#: Extreme inputs, float32: (params, gradients per step). A spike of 3e19 squared
#: overflows float32 (3.4e38) unless multiplied by (1 - beta2) first, as torch does.
EXTREMES = {
    "gradient-spikes": ([1.0, -1.0, 0.5, 2.0, 1.0, 0.0],
                        [[3e19, -3e19, 1e30, 3e38, 1.0, 1e-30]] * 3),
    "infinite-params": ([np.inf, -np.inf, 1.0, 0.5, -2.0, 0.0],
                        [[0.5, -0.5, 1.0, 2.0, -1.0, 0.25]] * 3),
}


@pytest.mark.parametrize("inputs", list(EXTREMES))
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_overflow_and_infinities_as_torch(case, inputs):
    """Where torch's float32 result is finite, Inf or NaN, so is fastopt's (and the
    reference's), element by element, for params and every state buffer: no overflow
    torch does not have (``(1 - b2) * (g * g)`` made ``exp_avg_sq`` Inf for a 3e19
    spike), and an infinite param stays infinite with ``weight_decay=0`` (no ``0 * p``
    term, which is NaN). Finite values agree to float32 rounding."""
    rule, options = case
    cls, ref, lr = RULES[rule]
    start, grad_steps = (np.array(v, np.float32) for v in EXTREMES[inputs])
    ours = [start.copy()]
    opt = cls(ours, lr=lr, **options)
    theirs = torch.tensor(start, requires_grad=True)
    torch_opt = getattr(torch.optim, TORCH_CLASS[rule])([theirs], lr=lr, foreach=False,
                                                        **options)
    want, ref_state = start.copy(), {}
    for grad in grad_steps:
        theirs.grad = torch.from_numpy(grad.copy())
        with np.errstate(over="ignore", invalid="ignore"):   # torch's own Inf/NaN
            torch_opt.step()
            want, ref_state = ref(want, grad, ref_state, lr=lr, **options)
        opt.step([grad])
    pairs = [("param", ours[0], theirs.detach().numpy(), want)]
    pairs += [(name, value, torch_opt.state[theirs][name].numpy(), ref_state[name])
              for name, value in opt.state[0].items() if name != "step"]
    for name, *values in pairs:   # scalar state (NAdam's mu_product) as 1-element arrays
        got, torch_value, reference_value = map(np.atleast_1d, values)
        for other in (torch_value, reference_value):
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(other), err_msg=name)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(other), err_msg=name)
        finite = np.isfinite(got)
        np.testing.assert_allclose(got[finite], torch_value[finite], rtol=1e-5, err_msg=name)
