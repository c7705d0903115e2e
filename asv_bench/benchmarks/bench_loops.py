"""Whole training-loop iterations (``fastopt bench --loops``): fastopt's time over each
baseline's in the same loop, so a thread-pool fight with the host shows up as a
regression (lower is better; 1 is a tie). The torch loops are skipped without torch."""

from fastopt.bench import cases, loops, measure


class TrainingLoop:
    params = [list(loops.LOOPS), [1, 2]]
    param_names = ["loop", "threads"]
    timeout = 300

    def setup(self, loop, threads):
        if loop.startswith("torch"):
            cases.import_torch()      # NotImplementedError (asv: skipped) without torch
        if threads > measure.max_threads():
            raise NotImplementedError(f"{threads} threads: NUMBA_NUM_THREADS is lower")
        self.row = loops.loop_row(loop, threads, rounds=6)

    def track_time_over_one_thread(self, loop, threads):
        return 1.0 / self.row["speedups"]["fastopt 1 thread"]

    track_time_over_one_thread.unit = "ratio"

    def track_time_over_torch_fused(self, loop, threads):
        if "torch fused" not in self.row["speedups"]:
            raise NotImplementedError("no torch fused baseline in the NumPy loop")
        return 1.0 / self.row["speedups"]["torch fused"]

    track_time_over_torch_fused.unit = "ratio"
