"""The mixed-precision kernels: fp32 master and state, a half gradient, a half copy
written in the same pass; the one-call offload step against torch's three-pass sequence
and the no-arithmetic ceiling of the same loads and stores (:mod:`fastopt.bench.mixed`);
the offload training loop around it (:mod:`fastopt.bench.offload_loop`)."""

from fastopt.bench import cases, measure, mixed, offload_loop

from .bench_kernels import TRACK_TIMING

SIZES = [100_000, 1_000_000, 10_000_000]


class MixedKernel:
    """Each rule's kernel with a ``grad_format`` gradient and a ``copy_format`` copy."""

    params = [list(cases.MIXED_RULES), ["bfloat16", "float16"], SIZES]
    param_names = ["rule", "format", "size"]

    def setup(self, rule, fmt, size):
        case = cases.CASES[rule]
        variant, args = case.kernel.resolve(cases.mixed_kernel_args(case, size, fmt, fmt))
        self.call = lambda: variant(*args)
        self.call()

    def time_kernel(self, rule, fmt, size):
        self.call()

    def track_ns_per_element(self, rule, fmt, size):
        return measure.time_call(self.call, **TRACK_TIMING) / size * 1e9

    track_ns_per_element.unit = "ns"


class OffloadStep:
    """``fastopt.offload.adam_step`` (bf16 grad in, bf16 copy out) against the torch
    three-pass sequence and the no-arithmetic ceiling (ratios: lower is better)."""

    params = [SIZES]
    param_names = ["size"]

    def setup(self, size):
        self.fastopt = mixed.fastopt_call(size)
        self.ceiling = mixed.ceiling_call(size)
        self.fastopt()
        self.ceiling()

    def time_offload_step(self, size):
        self.fastopt()

    def track_of_ceiling(self, size):
        """fastopt's time over the ceiling's (1 is the memory wall)."""
        times = measure.interleaved({"f": self.fastopt, "c": self.ceiling},
                                  TRACK_TIMING["repeat"], TRACK_TIMING["min_time"])
        return times["f"] / times["c"]

    track_of_ceiling.unit = "ratio"

    def track_torch_over_fastopt(self, size):
        """The torch three-pass sequence's time over fastopt's (the speed-up)."""
        try:
            torch_call = mixed.torch_call(size)
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        times = measure.interleaved({"f": self.fastopt, "t": torch_call},
                                  TRACK_TIMING["repeat"], TRACK_TIMING["min_time"])
        return times["t"] / times["f"]

    track_torch_over_fastopt.unit = "ratio"


class OffloadLoop:
    """The offload training loop end to end (:mod:`fastopt.bench.offload_loop`: bf16 MLP,
    gradients copied in, one ``fastopt.offload.adam_step`` call, the bf16 copy copied
    back) against the same loop with torch's three-pass step, blocks alternating in one
    process: fastopt's iteration time over torch's, and its step's share (iteration less
    the loop without a step) over torch's (lower is better; 1 is a tie). Skipped without
    torch; DeepSpeed is not an asv dependency."""

    timeout = 300

    def setup(self):
        cases.import_torch()          # NotImplementedError (asv: skipped) without torch
        self.row = offload_loop.loop_row(None, rounds=6)

    def track_time_over_torch(self):
        return 1.0 / self.row["speedups"]["torch 3-pass"]

    track_time_over_torch.unit = "ratio"

    def track_step_over_torch_step(self):
        steps = self.row["step_seconds"]
        return steps["fastopt"] / steps["torch 3-pass"]

    track_step_over_torch_step.unit = "ratio"
