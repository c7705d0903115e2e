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

TORCH_ONLY_NOT = {"nesterov", "eps_in_sqrt"}
TORCH_CASES = [c for c in CASES
               if not (c[0] == "rmsprop" and TORCH_ONLY_NOT & set(c[1]))]
TORCH_CLASS = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam",
               "adamw": "AdamW"}
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}
STEPS = 40


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch_optim_step_by_step(case, dtype):
    rule, options = case
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


@pytest.mark.parametrize("rule", list(RULES))
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
