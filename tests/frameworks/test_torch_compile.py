"""``torch.compile`` (inductor, the default backend; on CPU it builds C++ with the
system's compiler) of a model trained by fastopt.torch, against the eager model and
torch.optim.AdamW. The optimizer rebinds the params to slices of its flat buffer: the
compiled graph must read them there whether the rebinding came before the first compiled
call or after it.

Tolerance: losses and params rtol 1e-5, atol 1e-6 (inductor fuses the forward and
backward in another order than eager: a few float32 ulps per step).
"""

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.frameworks


@pytest.mark.parametrize("order", ["optimizer, then compiled calls",
                                   "a compiled call, then the optimizer"])
def test_compiled_model_trains_as_eager_torch(order):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=generator), torch.randn(32, 4, generator=generator)
    compiled = torch.compile(model)
    if order.startswith("a compiled call"):
        nn.functional.mse_loss(compiled(x), y).backward()   # traced before the rebinding
        model.zero_grad()
    optimizer = ft.AdamW(model.parameters(), lr=0.01)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.01, foreach=False)
    losses, reference_losses = [], []
    for _ in range(6):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        reference_optimizer.zero_grad()
        loss = nn.functional.mse_loss(reference(x), y)
        loss.backward()
        reference_optimizer.step()
        reference_losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    (bucket,) = optimizer._buckets[0]
    start = bucket.param.data_ptr()       # the compiled model's params are the flat buffer's
    assert [p.data_ptr() - start for p in compiled.parameters()] == [
        a * bucket.param.element_size() for a in bucket.offsets[:-1]]
