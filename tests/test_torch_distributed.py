"""fastopt.torch under torch.distributed (gloo, loopback, 2 processes).

(a) ``DistributedDataParallel`` + ``fastopt.torch.Adam`` on two halves of a batch gives
the parameters of single-process training on the whole batch: DDP averages the ranks'
gradients, and the single-process loss is the mean over the concatenated batch.
(b) ``ZeroRedundancyOptimizer(optimizer_class=fastopt.torch.Adam)``: each rank's local
fastopt optimizer holds the state of its shard only, and the parameters match too.

The test starts this file as two worker processes (``python test_torch_distributed.py
RANK PORT OUT``) on a free port found by binding port 0; each writes its results to OUT.
Everything is bounded: gloo's timeout is 30 s, the workers are killed after 120 s.
"""

import datetime
import os
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import fastopt.torch as ft  # noqa: E402

WORLD, STEPS, BATCH = 2, 8, 16
OPTIONS = dict(lr=0.01, weight_decay=0.01)
# float32, rtol 1e-5 / atol 1e-6 as in test_torch_adapter: DDP's averaged gradient
# ((g0 + g1) / 2) and the whole-batch mean differ in rounding only.
TOL = dict(rtol=1e-5, atol=1e-6)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))


def make_data():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, 4, generator=generator),
            torch.randn(BATCH, 3, generator=generator))


def train(model, opt, x, y):
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def worker(rank, port, out_dir):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    try:
        x, y = make_data()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}

        model = DistributedDataParallel(make_model())
        opt = ft.Adam(model.parameters(), **OPTIONS)
        results["ddp"] = train(model, opt, x[shard], y[shard])

        model = DistributedDataParallel(make_model())
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=ft.Adam,
                                       **OPTIONS)
        results["zero"] = train(model, zero, x[shard], y[shard])
        assert isinstance(zero.optim, ft.Adam)
        params = list(model.parameters())
        results["zero_owned"] = [i for i, p in enumerate(params) if p in zero.optim.state]
        results["zero_local_params"] = [i for i, p in enumerate(params) if any(
            p is q for g in zero.optim.param_groups for q in g["params"])]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(WORLD)]
    deadline, outputs = time.monotonic() + 120, []
    try:
        for proc in procs:
            remaining = max(1.0, deadline - time.monotonic())
            outputs.append(proc.communicate(timeout=remaining)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail("distributed workers did not finish within 120 s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, text) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{text}"
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.fixture(scope="module")
def single_process():
    """Training on the whole batch in one process, with torch.optim and with fastopt."""
    x, y = make_data()
    references = {}
    for name, cls in (("torch", lambda p: torch.optim.Adam(p, foreach=False, **OPTIONS)),
                      ("fastopt", lambda p: ft.Adam(p, **OPTIONS))):
        model = make_model()
        references[name] = train(model, cls(model.parameters()), x, y)
    for a, b in zip(references["torch"], references["fastopt"]):
        torch.testing.assert_close(b, a, **TOL)
    return references["torch"]


def test_ddp_matches_single_process_training(ranks, single_process):
    for rank, result in enumerate(ranks):
        for i, (a, b) in enumerate(zip(single_process, result["ddp"])):
            torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"rank {rank}, p{i}: {m}")


def test_zero_redundancy_optimizer_shards_state_and_matches(ranks, single_process):
    owned = [set(r["zero_owned"]) for r in ranks]
    count = len(single_process)
    assert all(owned), "every rank owns part of the state"
    assert not owned[0] & owned[1], "no parameter's state lives on two ranks"
    assert owned[0] | owned[1] == set(range(count))
    for result, mine in zip(ranks, owned):
        assert set(result["zero_local_params"]) == mine  # the local optimizer's shard only
    for rank, result in enumerate(ranks):
        for i, (a, b) in enumerate(zip(single_process, result["zero"])):
            torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"rank {rank}, p{i}: {m}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
