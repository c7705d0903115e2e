"""Whole steps against torch.optim: one 1,000-element tensor (per-step Python
overhead) and a 200-tensor, 1e6-element model (fastopt: one flat buffer)."""

from fastopt.bench import cases, suites

PARAMS = [list(cases.RULES), list(cases.DTYPES), list(suites.WORKLOADS)]
PARAM_NAMES = ["rule", "dtype", "workload"]


class WholeStep:
    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, rule, dtype, workload):
        self.step = cases.step_call(cases.CASES[rule], suites.WORKLOADS[workload], dtype)
        self.step()

    def time_step(self, rule, dtype, workload):
        self.step()


class WholeStepTorch:
    """Skipped (``NotImplementedError`` in setup) without torch or the implementation."""

    params = PARAMS + [list(cases.TORCH_IMPLS)]
    param_names = PARAM_NAMES + ["impl"]

    def setup(self, rule, dtype, workload, impl):
        self.step = cases.torch_call(cases.CASES[rule], suites.WORKLOADS[workload],
                                     dtype, impl)
        self.step()

    def time_step(self, rule, dtype, workload, impl):
        self.step()
