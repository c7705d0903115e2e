"""Fork- and thread-safety of the parallel kernels (README "Guarantees").

Each check runs in a fresh Python process with a timeout, so a layer that hangs (a forked
child waiting on a dead thread pool) or aborts the process (``workqueue`` on concurrent
use) fails the test instead of blocking or killing the test run. These guarantees come
from Numba's TBB threading layer (``pip install tbb``): without it they FAIL, saying why.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 60
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(body):
    """Run ``body`` in a fresh interpreter (tests/ importable); return its last stdout
    line parsed as JSON. Fails on a timeout or a non-zero exit, with the process output."""
    code = "import sys; sys.path.insert(0, %r)\n" % os.path.join(ROOT, "tests")
    code += textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=TIMEOUT, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {TIMEOUT} s (a hang in the threading layer?)\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")
    if done.returncode != 0:
        pytest.fail(f"the process exited with {done.returncode} (a crash or abort in the "
                    f"threading layer?)\nstdout: {done.stdout}\nstderr: {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


LAYER_HINT = ("fastopt's fork- and thread-safety need Numba's TBB threading layer: "
              "`pip install tbb` (a fastopt dependency on Linux x86_64 and Windows x86_64); "
              "`python -m numba -s | grep -i tbb` says why Numba cannot load it")


def test_active_threading_layer_is_fork_and_thread_safe():
    report = run_script("""
        import json, numpy as np, fastopt
        from fastopt.kernels import layer
        flat = fastopt.flatten([np.ones(200_003)])
        fastopt.Adam(flat).step()
        print(json.dumps(layer.guarantees()))
    """)
    assert report["layer"] is not None, "no parallel kernel ran"
    broken = [k.replace("_", "-") for k in ("fork_safe", "thread_safe") if not report[k]]
    assert not broken, (f"active Numba threading layer {report['layer']!r} is not "
                        f"{' or '.join(broken)}; {LAYER_HINT}")


THREADS_SCRIPT = """
    import json, threading
    import numpy as np
    import fastopt
    from cases import CASES, RULES

    N, STEPS = 200_000, 30

    def problem(seed, dtype):
        rng = np.random.default_rng(seed)
        return (rng.standard_normal(N).astype(dtype),
                [rng.standard_normal(N).astype(dtype) for _ in range(4)])

    def run(case_index, dtype):
        rule, options = CASES[case_index]
        cls, _, lr = RULES[rule]
        start, grads = problem(case_index, dtype)
        flat = fastopt.flatten([start])
        opt = cls(flat, lr=lr, **options)
        for step in range(STEPS):
            flat.grads[0][...] = grads[step % 4]
            opt.step()
        return flat.params[0].copy()

    jobs = [(i, dtype) for i in range(len(CASES)) for dtype in (np.float32, np.float64)]
    halves = [jobs[0::2], jobs[1::2]]
    results, errors = [{}, {}], []
    barrier = threading.Barrier(2)

    def worker(k):
        try:
            barrier.wait()
            for job in halves[k]:
                results[k][job] = run(*job)
        except BaseException as exc:  # reported, not swallowed
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mismatched = [f"{CASES[i]} {np.dtype(dt).name}" for k in range(2)
                  for (i, dt), got in results[k].items()
                  if not np.array_equal(got, run(i, dt))]
    from fastopt.kernels import layer
    print(json.dumps({"errors": errors, "mismatched": mismatched,
                      "done": sum(len(r) for r in results), "jobs": len(jobs),
                      "layer": layer.guarantees()["layer"]}))
"""


def test_two_threads_stepping_their_own_optimizers_match_sequential_runs():
    """Every rule and option, float32 and float64: two Python threads step their own
    optimizers (parallel twin, 2e5 elements, 30 steps) at the same time; each result
    equals, bitwise, the same run done alone afterwards."""
    report = run_script(THREADS_SCRIPT)
    assert not report["errors"], report["errors"]
    assert report["done"] == report["jobs"]
    assert not report["mismatched"], (
        f"concurrent runs differ from sequential ones on layer {report['layer']!r}: "
        f"{report['mismatched']}")


FORK_SCRIPT = """
    import json, os
    import numpy as np
    import fastopt
    from fastopt.kernels import layer

    from fork_helpers import adam_step

    expected = adam_step(1)           # the parent runs a parallel kernel before forking
    pid = os.fork()
    if pid == 0:                      # the child runs one too, and checks its result
        try:
            os._exit(0 if np.array_equal(adam_step(1), expected) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    after = adam_step(1)              # and the parent still can, after the fork
    print(json.dumps({"status": status, "exited": os.WIFEXITED(status),
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "parent_ok": bool(np.array_equal(after, expected)),
                      "layer": layer.guarantees()["layer"]}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists only on POSIX")
def test_forked_child_can_run_a_parallel_kernel():
    """A process forked after fastopt ran a parallel kernel runs one itself, with the
    same result (GNU OpenMP terminates such a child; the timeout catches a hang)."""
    report = run_script(FORK_SCRIPT)
    assert report["parent_ok"]
    assert report["exited"] and report["code"] == 0, (
        f"the forked child failed (exit code {report['code']}, signal {report['signal']}) "
        f"on threading layer {report['layer']!r}; {LAYER_HINT}")


MP_SCRIPT = """
    import json, multiprocessing as mp
    import numpy as np
    import fastopt

    from fork_helpers import adam_step

    if __name__ == "__main__":
        expected = adam_step(2)
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map_async(adam_step, [2, 2, 2, 2]).get(timeout=20)
        print(json.dumps({"ok": [bool(np.array_equal(r, expected)) for r in results]}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork start method is POSIX-only")
def test_multiprocessing_fork_pool_after_a_parallel_kernel():
    report = run_script(MP_SCRIPT)
    assert report["ok"] == [True] * 4, f"{report}; {LAYER_HINT}"


FORK_DURING_KERNEL_SCRIPT = """
    import json, os, signal, threading, time
    import numpy as np
    import fastopt
    from fastopt import threads

    from fork_helpers import adam_step

    FORKS, CHILD_TIMEOUT = %d, 15.0
    threads.policy = "size"                     # every step of the big one runs parallel
    expected = adam_step(1)
    flat = fastopt.flatten([np.ones(8_000_000, np.float32)])
    flat.grads[0][...] = 0.5
    big = fastopt.Adam(flat, lr=1e-3)
    stop = threading.Event()

    def stepping():
        while not stop.is_set():
            big.step()

    stepper = threading.Thread(target=stepping)
    stepper.start()
    hung, failed = 0, 0
    for _ in range(FORKS):
        time.sleep(0.003)
        pid = os.fork()
        if pid == 0:                            # the child's first parallel kernel
            try:
                os._exit(0 if np.array_equal(adam_step(1), expected) else 3)
            except BaseException:
                os._exit(4)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                failed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
                break
            if time.monotonic() > deadline:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.002)
    stop.set()
    stepper.join()
    print(json.dumps({"hung": hung, "failed": failed, "forks": FORKS}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists only on POSIX")
def test_fork_while_another_thread_is_inside_a_parallel_kernel():
    """os.fork waits for running parallel kernels (fastopt.kernels.config._ForkGate):
    without it, a child forked while a thread was inside a kernel hung in its first
    parallel kernel about once in 16 forks. 40 forks during 8e6-element parallel steps;
    every child must finish its own parallel kernel with the right result."""
    report = run_script(FORK_DURING_KERNEL_SCRIPT % 40)
    assert report["hung"] == 0 and report["failed"] == 0, f"{report}; {LAYER_HINT}"


CHILD_TWIN_SCRIPT = """
    import json, os
    import numpy as np
    from fastopt.kernels import config

    from fork_helpers import adam_step

    def child_says():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, b"1" if config.serial_chosen() else b"0")
            ok = np.array_equal(adam_step(1), expected)
            os._exit(0 if ok else 3)
        os.close(write)
        said = os.read(read, 1) == b"1"
        _, status = os.waitpid(pid, 0)
        return said, os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    expected = np.zeros(0)
    before = child_says()                   # the pool never started: parallel allowed
    expected = adam_step(1)                 # a parallel kernel: TBB's workers exist now
    after = child_says()
    print(json.dumps({"before": before[0], "after": after[0], "ok": after[1]}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists only on POSIX")
def test_a_child_forked_after_the_pool_started_runs_serial_twins():
    """TBB's idle workers may fail to join before a fork on a busy machine, and such a
    child hung in its first parallel kernel (1-3 in 200 forks with both cores busy): so a
    child of a parent that ran a parallel kernel runs serial twins (the same results);
    a child of a parent that never did keeps parallel ones."""
    report = run_script(CHILD_TWIN_SCRIPT)
    assert report == {"before": False, "after": True, "ok": True}, report
