"""``fastopt.torch`` inside a training loop: parallel kernels on torch's own OpenMP team
(:mod:`fastopt.kernels.hostpool`), and the steady step that repeats the last step's plan
(:meth:`fastopt.torch.buckets.Bucket.steady`).

Both must be invisible in the results: the team runs each block with the serial twin
(bitwise the serial kernel at any team size), and a steady step is bitwise the full path's
step, through every change a user can make between steps (a new lr, a param without a
gradient, a non-contiguous gradient, a replaced state entry, a loaded checkpoint, a loss
scale, ``maximize``), and falls back to the full path, which refuses what it refuses."""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from cases import MATRIX  # noqa: E402
from torch_models import assert_same_training  # noqa: E402
from fastopt.kernels import config, gathered, hostpool  # noqa: E402
from fastopt.rules import RULES  # noqa: E402
from test_threads_and_fork import run_script  # noqa: E402

OPENMP = sys.platform.startswith("linux") and \
    "parallel backend: OpenMP" in torch.__config__.parallel_info()
needs_team = pytest.mark.skipif(not OPENMP, reason="torch runs on OpenMP on Linux builds; "
                                "elsewhere fastopt keeps Numba's pool")

ELEMENTWISE = [(name, dict(combos[-1], lr=lr)) for name, (lr, combos) in MATRIX.items()
               if not (RULES[name].per_tensor or RULES[name].shaped_state)]
SHAPES = [(40, 30), (30,), (7, 9), (9,), (50, 20)]


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def launches(monkeypatch):
    """Count the kernel runs on the team (small models: a low parallel threshold)."""
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 64)
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)
    counted = []
    original = hostpool.Team.launch

    def spy(self, *args):
        counted.append(args[-1])
        return original(self, *args)

    monkeypatch.setattr(hostpool.Team, "launch", spy)
    return counted


def _steps(opt, params, count):
    """``count`` steps, each on new random gradients of autograd's kind."""
    for _ in range(count):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()


# --- the team -----------------------------------------------------------------------

@needs_team
def test_the_team_is_torch_openmp_runtime_and_can_be_turned_off(monkeypatch):
    team = hostpool.torch_team()
    assert team is not None
    with open("/proc/self/maps") as maps:
        assert team.path in maps.read()          # a runtime torch loaded, not a new one
    monkeypatch.setattr(hostpool, "enabled", False)
    assert hostpool.torch_team() is None


def test_the_team_is_found_only_where_it_is_unambiguous(monkeypatch):
    """torch on OpenMP and its own runtime loaded: that one; no runtime in torch's folder:
    the only one loaded, else none (two runtimes: which one torch uses is unknown); torch
    not on OpenMP, or not imported: none (Numba's pool then)."""
    import types

    home = "/site/torch"
    fake = types.SimpleNamespace(
        __file__=home + "/__init__.py",
        __config__=types.SimpleNamespace(parallel_info=lambda: "ATen parallel backend: OpenMP"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(hostpool.sys, "platform", "linux")
    monkeypatch.setattr(hostpool, "Team", lambda path: path)   # the path it would load
    for loaded, want in [([home + "/lib/libgomp.so.1", "/usr/lib/libgomp.so.1"],
                          home + "/lib/libgomp.so.1"),
                         (["/conda/lib/libiomp5.so"], "/conda/lib/libiomp5.so"),
                         (["/usr/lib/libgomp.so.1", "/conda/lib/libiomp5.so"], None),
                         ([], None)]:
        monkeypatch.setattr(hostpool, "_loaded_runtimes", lambda loaded=loaded: loaded)
        assert hostpool._find_torch_team() == want, loaded
    fake.__config__.parallel_info = lambda: "ATen parallel backend: native thread pool"
    assert hostpool._find_torch_team() is None
    monkeypatch.delitem(sys.modules, "torch")
    assert hostpool._find_torch_team() is None


def test_the_runtime_names_it_recognises():
    names = {"libgomp.so.1": True, "libgomp-a34b3233.so.1": True, "libiomp5.so": True,
             "libomp.so": True, "libomp.so.5": True, "libompitrace.so": False,
             "omppool.cpython-311-x86_64-linux-gnu.so": False, "libgompx.so": False}
    for name, want in names.items():
        assert bool(hostpool._RUNTIME.search(name)) is want, name


HOST_POOL_OFF_SCRIPT = """
    import json, os
    os.environ["FASTOPT_HOST_POOL"] = "0"
    import torch
    import fastopt.torch as ft
    from fastopt.kernels import config, hostpool
    torch.set_num_threads(2)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(300, 300)) for _ in range(2)]
    opt = ft.Adam(params, lr=1e-2)
    for step in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    from numba.np.ufunc import parallel
    print(json.dumps({"enabled": hostpool.enabled, "team": hostpool.torch_team() is None,
                      "numba_pool": bool(parallel._is_initialized)}))
"""


@needs_team
@pytest.mark.parametrize("off", [True, False])
def test_fastopt_host_pool_0_keeps_numba_pool(off):
    """With FASTOPT_HOST_POOL=0 the parallel steps run on Numba's pool; by default on
    torch's team, and Numba's pool never starts."""
    script = HOST_POOL_OFF_SCRIPT if off else HOST_POOL_OFF_SCRIPT.replace(
        'os.environ["FASTOPT_HOST_POOL"] = "0"', 'os.environ.pop("FASTOPT_HOST_POOL", None)')
    report = run_script(script)
    assert report == {"enabled": not off, "team": off, "numba_pool": off}, report


@needs_team
@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ELEMENTWISE, ids=[c[0] for c in ELEMENTWISE])
def test_a_kernel_on_the_team_is_bitwise_the_serial_kernel(case, dtype, threads):
    """Three gradient arrays in one table of small blocks, on 2-5 threads: the same
    params and state as the serial driver gives over the same inputs."""
    name, options = case
    rule = RULES[name]
    group = {**rule.defaults, **options}
    rng = np.random.default_rng(7)
    sizes = (5000, 37, 20000)
    starts = np.cumsum((0,) + sizes[:-1])
    table = gathered.block_table(list(starts), list(starts + sizes), block=1024)
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    addresses = np.array([g.ctypes.data for g in grads], dtype=np.int64)
    start = rng.standard_normal(sum(sizes)).astype(dtype)
    initial = {n: np.abs(rng.standard_normal(sum(sizes))).astype(dtype)
               for n in rule.state_names(group)}
    values = rule.values(group, 3, frozenset(), 1.0, np.dtype(dtype))
    out = []
    for on_team in (False, True):
        param, state = start.copy(), {n: v.copy() for n, v in initial.items()}
        variant, args = rule.call(param, grads[0], state, values, group)
        found = gathered.drivers(variant, args[2:], np.dtype(dtype))
        if on_team:
            team = hostpool.torch_team()
            body, control, _ = team.control(found[1], param, addresses, table, args[2:])
            team.launch(body, control, threads)
        else:
            found[1](param, addresses, table, *args[2:])
        out.append((param, state))
    (serial, serial_state), (team, team_state) = out
    assert not np.array_equal(serial, start)                 # it stepped
    np.testing.assert_array_equal(team, serial)
    for n in initial:
        np.testing.assert_array_equal(team_state[n], serial_state[n])


@needs_team
def test_fastopt_torch_steps_on_the_team_and_at_one_torch_thread_launches_nothing(
        launches, two_torch_threads):
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = ft.Adam(params, lr=1e-3)
    _steps(opt, params, 3)
    assert launches == [2, 2, 2]
    torch.set_num_threads(1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert launches == [2, 2, 2]      # one thread: the serial driver, no team


# --- the steady step ----------------------------------------------------------------

def _events(opt, params, step, saved):
    """What a user does before step ``step``; new gradients every step."""
    torch.manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn_like(p)
    group = opt.param_groups[0]
    if step == 4:
        group["lr"] = group["lr"] * 0.5                  # a scheduler
    elif step == 5:                                      # a non-contiguous gradient
        params[0].grad = torch.randn(tuple(reversed(params[0].shape)),
                                     dtype=params[0].dtype).t()
    elif step == 6:                                      # a state entry replaced
        entry = opt.state[params[1]]
        opt.state[params[1]] = {k: (v.clone() * 0.5 if torch.is_tensor(v) and v.dim()
                                    else v) for k, v in entry.items()}
    elif step == 7:
        saved.append(opt.state_dict())
    elif step == 9:
        opt.load_state_dict(saved[0])                    # a checkpoint loaded
    elif step == 10:
        opt.grad_scale = 4.0                             # a loss scale
    elif step == 11 and "maximize" in group:
        group["maximize"] = not group["maximize"]
    elif step == 13:           # a param without a gradient (its step count lags after)
        params[2].grad = None


def _train(name, options, dtype, steady, monkeypatch, steps=16):
    hits = []
    with monkeypatch.context() as patch:
        patch.setattr(config, "PARALLEL_THRESHOLD", 64)   # small models: the one-call
        patch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)   # path, no gathering
        original = ft.buckets.Bucket.steady

        def counted(self, *args):
            found = original(self, *args) if steady else None
            hits.append(found is not None)
            return found

        patch.setattr(ft.buckets.Bucket, "steady", counted)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in SHAPES]
        opt = getattr(ft, RULES[name].class_name)(params, **options)
        saved = []
        for step in range(steps):
            _events(opt, params, step, saved)
            opt.step()
    return params, opt, hits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("case", ELEMENTWISE, ids=[c[0] for c in ELEMENTWISE])
def test_a_steady_step_is_bitwise_the_full_step_through_every_change(case, dtype,
                                                                     monkeypatch):
    name, options = case
    want, want_opt, _ = _train(name, options, dtype, False, monkeypatch)
    got, got_opt, hits = _train(name, options, dtype, True, monkeypatch)
    assert sum(hits) >= 6, hits                       # the steady path ran, often
    assert not all(hits[:2])                         # and not before a plan existed
    assert hits[-1], hits     # also with a param a step behind the others (two calls)
    assert_same_training(got, got_opt, want, want_opt)


def test_a_steady_step_falls_back_and_refuses_a_moved_param_writing_nothing(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 64)
    monkeypatch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = ft.AdamW(params, lr=1e-2)
    _steps(opt, params, 4)
    assert opt._buckets[0][0]._steady is not None      # the next step may repeat it
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    params[3].data = torch.zeros_like(params[3])         # no longer in the flat buffer
    with pytest.raises(RuntimeError, match=r"params\[3\] no longer lives"):
        opt.step()
    for i, p in enumerate(params):
        if i != 3:
            assert torch.equal(p, before[i])
        for k, v in state[i].items():
            assert torch.equal(opt.state[p][k], v), (i, k)


def test_a_gradient_over_the_optimizer_own_memory_is_not_read_in_place(monkeypatch):
    """A gradient set by hand to a view of the state the kernel writes: the steady path
    must not pass it by address (the full path copies it first)."""
    def run(steady):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 64)
        monkeypatch.setattr(ft.buckets, "GATHER_BELOW_ONE_CALL", 1)
        torch.manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
        opt = ft.Adam(params, lr=1e-2)
        if not steady:
            monkeypatch.setattr(ft.buckets.Bucket, "steady", lambda self, *a: None)
        for step in range(5):
            torch.manual_seed(step)
            for p in params:
                p.grad = torch.randn_like(p)
            if step == 4:
                params[0].grad = opt.state[params[0]]["exp_avg"]
            opt.step()
        monkeypatch.undo()
        return params
    for p, q in zip(run(True), run(False)):
        assert torch.equal(p, q)


FORK_SCRIPT = """
    import json, os
    import torch
    import fastopt.torch as ft
    from fastopt.kernels import config, hostpool

    def train():
        torch.set_num_threads(1)     # torch's own ops: a GNU OpenMP team does not
        torch.manual_seed(0)         # survive fork (torch hangs in such a child too)
        params = [torch.nn.Parameter(torch.randn(300, 300)) for _ in range(3)]
        opt = ft.Adam(params, lr=1e-2)
        for step in range(4):
            torch.manual_seed(step)
            for p in params:
                p.grad = torch.randn_like(p)
            # fastopt's steps after the first (which allocates the state with torch):
            torch.set_num_threads(2 if step else 1)   # the team, where it may
            opt.step()
            torch.set_num_threads(1)
        return torch.cat([p.detach().reshape(-1) for p in params])

    expected = train()        # above the threshold: on torch's team, two threads
    used = config._fork_gate.started
    pid = os.fork()
    if pid == 0:              # a team launch here would hang: the timeout fails it
        ok = torch.equal(train(), expected) and config.serial_chosen()
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"team": hostpool.torch_team() is not None, "used": used,
                      "child_ok": os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0}))
"""


@needs_team
def test_a_child_forked_after_steps_on_the_team_steps_serially_with_the_same_result():
    report = run_script(FORK_SCRIPT)
    assert report == {"team": True, "used": True, "child_ok": True}, report


@needs_team
def test_the_team_size_is_torch_threads_unless_numba_was_lowered():
    """torch's intra-op count; fastopt.num_threads(n) below Numba's maximum lowers it
    (the bench's "fastopt 1 thread"), Numba's default count does not."""
    import numba

    import fastopt
    team = hostpool.torch_team()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        numba.get_num_threads()                  # Numba's pool started, at its maximum
        assert team.threads() == 3
        with fastopt.num_threads(1):
            assert team.threads() == 1
        assert team.threads() == 3
    finally:
        torch.set_num_threads(before)


TWO_THREADS_SCRIPT = """
    import json, threading
    import torch
    import fastopt.torch as ft
    from fastopt import threads as fastopt_threads
    from fastopt.kernels import hostpool

    fastopt_threads.policy = "size"       # parallel (on the team) above the threshold
    torch.set_num_threads(2)
    launches = []
    original = hostpool.Team.launch
    def counted(self, *args):
        launches.append(args[-1])
        return original(self, *args)
    hostpool.Team.launch = counted

    def train(seed, out):   # a generator of its own: torch's global one is shared
        init = torch.Generator().manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(400, 300, generator=init))
                  for _ in range(2)]
        opt = ft.Adam(params, lr=1e-2)
        for step in range(6):
            g = torch.Generator().manual_seed(seed * 100 + step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        out[seed] = torch.cat([p.detach().reshape(-1) for p in params])

    alone = {}
    for seed in (1, 2):
        train(seed, alone)
    together = {}
    workers = [threading.Thread(target=train, args=(seed, together)) for seed in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"same": all(torch.equal(alone[s], together[s]) for s in (1, 2)),
                      "on_team": len(launches) >= 24}))
"""


@needs_team
def test_two_threads_step_their_own_optimizers_on_the_team_as_sequential_runs():
    """Each Python thread entering GOMP_parallel gets its own team from the runtime: two
    threads stepping their own fastopt.torch optimizers at once finish (a timeout fails a
    hang) with the results of the same steps run one after the other."""
    report = run_script(TWO_THREADS_SCRIPT)
    assert report == {"same": True, "on_team": True}, report
