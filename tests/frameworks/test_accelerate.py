"""accelerate with fastopt.torch: ``prepare``, ``save_state``/``load_state`` and
``save_model`` (safetensors, accelerate's default).

While every parameter was a view of one flat tensor, accelerate read them as tied
weights: ``save_state`` and ``save_model`` warned "Removed shared tensor" and wrote one
weight. Each parameter now has a storage of its own over its slice of the flat buffer.
"""

import logging

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.frameworks


def setup():
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    optimizer = ft.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    generator = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=generator),
                                          torch.randn(32, 4, generator=generator))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    return (accelerator, *accelerator.prepare(model, optimizer, loader, scheduler))


def train_epoch(accelerator, model, optimizer, loader, scheduler):
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_save_state_load_state_round_trip_restores_every_weight_bitwise(tmp_path, caplog):
    from safetensors import safe_open
    accelerator, model, optimizer, loader, scheduler = setup()
    parts = (accelerator, model, optimizer, loader, scheduler)
    train_epoch(*parts)
    saved = {name: p.detach().clone() for name, p in model.state_dict().items()}
    saved_optimizer = optimizer.state_dict()
    with caplog.at_level(logging.WARNING):
        accelerator.save_state(str(tmp_path / "state"))
        accelerator.save_model(model, str(tmp_path / "model"))
    assert "shared tensor" not in caplog.text
    for path in (tmp_path / "state" / "model.safetensors",
                 tmp_path / "model" / "model.safetensors"):
        with safe_open(str(path), framework="pt") as stored:
            assert set(stored.keys()) == set(saved)       # every weight written
            for name in saved:
                assert torch.equal(stored.get_tensor(name), saved[name])
    continued = train_epoch(*parts)
    assert not torch.equal(continued[0], saved["0.weight"])
    accelerator.load_state(str(tmp_path / "state"))
    for name, p in model.state_dict().items():
        assert torch.equal(p, saved[name]), name        # bitwise
    restored = optimizer.state_dict()
    assert restored["param_groups"][0]["lr"] == saved_optimizer["param_groups"][0]["lr"]
    for index, entry in saved_optimizer["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored["state"][index][key], value)
    # Loaded in place: the optimizer still owns the params and repeats the same epoch.
    for again, first in zip(train_epoch(*parts), continued):
        assert torch.equal(again, first)
