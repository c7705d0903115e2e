"""Baselines for the same cases: the NumPy reference, torch.optim (fused, foreach,
single-tensor; skipped where torch or the implementation is missing) and the triad."""

from fastopt.bench import cases, measure, triad

from .bench_kernels import PARAM_NAMES, PARAMS, TRACK_TIMING


class NumpyReference:
    """One step of :mod:`fastopt.reference` (plain NumPy, allocates its results)."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, rule, dtype, size):
        self.step = cases.reference_call(cases.CASES[rule], size, dtype)
        self.step()

    def time_step(self, rule, dtype, size):
        self.step()


class Torch:
    """``torch.optim.<Rule>.step()`` on one tensor; ``setup`` raises
    ``NotImplementedError`` (asv: skipped) without torch or the implementation."""

    params = PARAMS + [list(cases.TORCH_IMPLS)]
    param_names = PARAM_NAMES + ["impl"]

    def setup(self, rule, dtype, size, impl):
        self.step = cases.torch_call(cases.CASES[rule], [(size,)], dtype, impl)
        self.step()

    def time_step(self, rule, dtype, size, impl):
        self.step()


class Triad:
    """The STREAM triad ``a = b + s*c``: the bandwidth the roofline ratios refer to."""

    params = [list(cases.DTYPES), list(cases.SIZES)]
    param_names = ["dtype", "size"]

    def setup(self, dtype, size):
        self.call = triad.make_call(size, dtype)
        self.call()

    def time_triad(self, dtype, size):
        self.call()

    def track_gbps(self, dtype, size):
        return triad.gbps(dtype, size, measure.time_call(self.call, **TRACK_TIMING))

    track_gbps.unit = "GB/s"
