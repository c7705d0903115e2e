"""``fastopt bench --loops``: whole training-loop iterations, not the optimizer alone.

The optimizer step shares the machine with the host's own parallel work (torch's OpenMP
pool, OpenBLAS's threads); a benchmark that times the step alone cannot see what one
does to the other (:mod:`fastopt.threads`). Two loops, the MLP 512-1024-1024-10
(1.58M float32 parameters) on a batch of 64, Adam at lr 1e-4:

* ``torch``: ``zero_grad(); loss.backward(); step()`` on a ``torch.nn`` MLP (ReLU), with
  ``fastopt.torch.Adam`` (default settings), the same with Numba at one thread, and
  ``torch.optim.Adam(fused=True)``;
* ``torch wide``: the same on the MLP 512-2048-2048-10 (5.3M parameters), where the
  step is a larger share of the loop;
* ``numpy``: fastopt's NumPy MLP (tanh; :class:`fastopt.demo.model.MLP`, gradients
  written into one ``flatten`` buffer), ``fastopt.Adam`` with default settings and with
  Numba at one thread.

Each configuration has its own model and optimizer, all in one process: after a warm-up
long enough for fastopt's loop-timed twin choice to decide, blocks of steps alternate
between the configurations (A/B/C then C/B/A, ``ROUNDS`` rounds), and each reports the median time
per iteration. Alternating blocks in one process keeps the comparison fair on a machine
whose speed drifts (separate processes measured minutes apart differed by 2x here).
"""

import contextlib
import time

import numpy as np

from ..threads import num_threads
from . import measure

SIZES = (512, 1024, 1024, 10)
#: The wider torch loop (5.3M parameters), where the step is a larger share of the loop.
WIDE_SIZES = (512, 2048, 2048, 10)
BATCH = 64
LR = 1e-4
WARMUP = 48     # > fastopt.threads WARMUP + one probe (3 + 32 steps)
ROUNDS = 20
BLOCK = 6       # timed steps per block (after one untimed step)


def _torch_loop(configs, wide=False):
    from . import cases
    torch = cases.import_torch()
    import fastopt.torch as ft

    sizes = WIDE_SIZES if wide else SIZES
    x = torch.randn(BATCH, sizes[0], generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, sizes[-1], (BATCH,), generator=torch.Generator().manual_seed(2))
    loss_fn = torch.nn.CrossEntropyLoss()

    def model():
        torch.manual_seed(0)
        layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1])

    def make(kind):
        net = model()
        opt = (torch.optim.Adam(net.parameters(), lr=LR, fused=True) if kind == "fused"
               else ft.Adam(net.parameters(), lr=LR))

        def iteration():
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        return iteration, opt

    return {name: make(kind) for name, kind in configs.items()}


def _numpy_loop(configs):
    import fastopt
    from ..demo.model import MLP, initial_weights

    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)

    def make(_):
        mlp = MLP(initial_weights(SIZES, np.float32, seed=0))
        opt = fastopt.Adam(mlp.flat, lr=LR)

        def iteration():
            mlp.loss_and_grad(x, y)
            opt.step()
        return iteration, opt

    return {name: make(kind) for name, kind in configs.items()}


#: loop -> (builder, {configuration: kind}); "fastopt 1 thread" runs under num_threads(1).
_TORCH_CONFIGS = {"fastopt": "fastopt", "fastopt 1 thread": "fastopt", "torch fused": "fused"}
_LOOPS = {
    "torch": (_torch_loop, _TORCH_CONFIGS),
    "torch wide": (lambda configs: _torch_loop(configs, wide=True), _TORCH_CONFIGS),
    "numpy": (_numpy_loop, {"fastopt": "fastopt", "fastopt 1 thread": "fastopt"}),
}
LOOPS = tuple(_LOOPS)   # the loops' names, in the tables' order


def _block(iteration, steps, one_thread):
    """Seconds of each of ``steps`` iterations, after one untimed one."""
    times = []
    with num_threads(1) if one_thread else contextlib.nullcontext():
        iteration()
        for _ in range(steps):
            start = time.perf_counter()
            iteration()
            times.append(time.perf_counter() - start)
    return times


def alternating_medians(iterations, rounds=None, block=None, warmup=None, one_thread=(),
                        progress=None, label=""):
    """Median seconds per call of each of ``iterations`` (name -> function running one
    loop iteration), all in this process: each is warmed up (``warmup`` calls), then
    blocks of ``block`` timed calls (after one untimed) alternate between them, A/B/C then
    C/B/A, for ``rounds`` rounds. Names in ``one_thread`` run under ``num_threads(1)``.
    ``None``: the module's :data:`ROUNDS`, :data:`BLOCK`, :data:`WARMUP`."""
    rounds = ROUNDS if rounds is None else rounds
    block = BLOCK if block is None else block
    warmup = WARMUP if warmup is None else warmup
    for name, iteration in iterations.items():
        _block(iteration, warmup, name in one_thread)
    times = {name: [] for name in iterations}
    order = list(iterations.items())
    for round_ in range(rounds):   # A B C, C B A, ...: no configuration always first
        for name, iteration in (order if round_ % 2 == 0 else order[::-1]):
            times[name] += _block(iteration, block, name in one_thread)
        if progress is not None:
            progress.step(label)
    return {name: float(np.median(values)) for name, values in times.items()}


def loop_row(loop, threads, rounds=None, block=None, warmup=None, progress=None):
    """Median seconds per iteration of each configuration of ``loop`` at ``threads``
    threads (Numba and torch), measured in alternating blocks
    (:func:`alternating_medians`); fastopt's speed-up over each baseline (baseline time /
    fastopt time: above 1 is faster) and the twin its steps settled on."""
    builder, configs = _LOOPS[loop]
    with measure.threads(threads):
        built = builder(configs)
        medians = alternating_medians(
            {name: iteration for name, (iteration, _) in built.items()}, rounds, block,
            warmup, one_thread={name for name in built if name.endswith("1 thread")},
            progress=progress, label=f"loop {loop} {threads} thr")
    own = medians["fastopt"]
    twins = built["fastopt"][1]._twins
    return {"loop": loop, "threads": threads, "seconds": medians,
            "speedups": {name: value / own for name, value in medians.items()
                         if name != "fastopt"},
            "twin": twins.choice or "by size"}


def loop_rows(loops, thread_counts, progress=None, **options):
    return [loop_row(loop, threads, progress=progress, **options)
            for loop in loops for threads in thread_counts]


def loop_count(loops, thread_counts, rounds=None):
    return len(loops) * len(thread_counts) * (ROUNDS if rounds is None else rounds)


LOOP_HEADERS = ["loop", "thr", "fastopt", "1 thread", "torch fused", "x 1 thread",
                "x fused", "twin"]


def loop_table(rows):
    from .report import fmt_ratio, fmt_time, table
    body = []
    for row in rows:
        seconds, speedups = row["seconds"], row["speedups"]
        body.append([row["loop"], row["threads"], fmt_time(seconds["fastopt"]),
                     fmt_time(seconds.get("fastopt 1 thread")),
                     fmt_time(seconds.get("torch fused")),
                     fmt_ratio(speedups.get("fastopt 1 thread")),
                     fmt_ratio(speedups.get("torch fused")), row["twin"]])
    return table(LOOP_HEADERS, body, ["<", ">", ">", ">", ">", ">", ">", "<"])
