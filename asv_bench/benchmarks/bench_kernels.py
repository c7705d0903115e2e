"""Every rule x dtype x size: the kernel, the whole ``opt.step()``, nanoseconds per
element, the ratio to the kernel's no-arithmetic ceiling, the roofline ratio against the
triad, and peak memory of a step."""

from fastopt.bench import cases, ceiling, measure, triad

PARAMS = [list(cases.RULES), list(cases.DTYPES), list(cases.SIZES)]
#: The kernel and its ceiling for every case: the rules and their option variants.
KERNEL_PARAMS = [list(cases.CASES), list(cases.DTYPES), list(cases.SIZES)]
PARAM_NAMES = ["rule", "dtype", "size"]

#: Timing of the track_ benchmarks (they time for themselves): short, median of 3.
TRACK_TIMING = dict(repeat=3, min_time=0.02)


class Kernel:
    """The bare kernel call (the ``Kernel`` picks its serial or parallel twin by size)."""

    params = KERNEL_PARAMS
    param_names = PARAM_NAMES

    def setup(self, rule, dtype, size):
        self.case = cases.CASES[rule]
        self.call = cases.kernel_call(self.case, size, dtype)
        self.call()  # compile (or load the cache) outside the timing

    def time_kernel(self, rule, dtype, size):
        self.call()

    def track_ns_per_element(self, rule, dtype, size):
        return measure.time_call(self.call, **TRACK_TIMING) / size * 1e9

    track_ns_per_element.unit = "ns"

    def track_roofline_ratio(self, rule, dtype, size):
        """Kernel time over the time the triad (same size and threads, this process)
        needs for the kernel's bytes; 1 is the triad's bandwidth, lower is better."""
        triad_time = measure.time_call(triad.make_call(size, dtype), **TRACK_TIMING)
        kernel_time = measure.time_call(self.call, **TRACK_TIMING)
        return triad.roofline_ratio(kernel_time, self.case.bytes_per_element(dtype),
                                    triad_time, dtype)

    track_roofline_ratio.unit = "ratio"

    def track_ceiling_ratio(self, rule, dtype, size):
        """Kernel time over its no-arithmetic ceiling's (the same loads and stores,
        :mod:`fastopt.bench.ceiling`), timed interleaved in this process; 1 is the
        ceiling, lower is better."""
        times = measure.interleaved(
            {"kernel": self.call, "ceiling": ceiling.ceiling_call(self.case, size, dtype)},
            **TRACK_TIMING)
        return times["kernel"] / times["ceiling"]

    track_ceiling_ratio.unit = "ratio"


class Step:
    """The whole ``opt.step()`` on one flat buffer (validation, scalars, kernel call)."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, rule, dtype, size):
        self.step = cases.step_call(cases.CASES[rule], [(size,)], dtype)
        self.step()  # allocate the state, compile

    def time_step(self, rule, dtype, size):
        self.step()

    def peakmem_step(self, rule, dtype, size):
        self.step()
