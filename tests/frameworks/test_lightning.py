"""Lightning with fastopt.torch: ``configure_optimizers`` with a scheduler, gradient
clipping under mixed precision, ``ckpt_path=`` resume.

Tolerances. float32 runs: rtol 1e-5, atol 1e-6, as in test_torch_adapter.py (same AdamW
in another order). Mixed precision: the forward runs in bfloat16/float16 under autocast,
so parameters a few float32 ulps apart can round to different half-precision values and
give a few gradient elements a half-precision ulp apart; gradient norms within 1e-3
relative (measured: 0 in bf16, 1.5e-4 in fp16), params within rtol 1e-4, atol 1e-5
after eight clipped steps of lr 0.01 (measured: 3e-8 and 1e-6).
"""


import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.frameworks

CLIP = 0.05


def regressor(make_optimizer, seed=0):
    """A LightningModule (an MLP regressor) whose ``configure_optimizers`` builds
    ``make_optimizer(params)`` with a per-step StepLR; it records each step's loss and
    the gradient norm before clipping."""
    import lightning.pytorch as pl

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
            self.losses, self.norms = [], []

        def training_step(self, batch, batch_index):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x).float(), y)
            self.losses.append(loss.item())
            return loss

        def on_before_optimizer_step(self, optimizer):
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            self.norms.append(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        def configure_optimizers(self):
            optimizer = make_optimizer(self.parameters())
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return Regressor()


def loader():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator)
    y = torch.randn(32, 4, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(tmp_path, **options):
    import lightning.pytorch as pl
    settings = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path))
    settings.update(options)
    return pl.Trainer(**settings)


def ours(params):
    return ft.AdamW(params, lr=0.01, weight_decay=0.01)


def theirs(params):
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.01, foreach=False)


def fit(tmp_path, make_optimizer, **options):
    module = regressor(make_optimizer)
    run = trainer(tmp_path, **options)
    run.fit(module, loader())
    return module, run


def test_configure_optimizers_with_a_scheduler_matches_torch(tmp_path):
    module, run = fit(tmp_path, ours)
    reference, _ = fit(tmp_path, theirs)
    (optimizer,) = run.optimizers
    assert isinstance(optimizer, ft.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 2)  # 8 steps
    assert len(module.losses) == 8
    assert module.losses == pytest.approx(reference.losses, rel=1e-5, abs=1e-6)
    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def mixed_precision(precision):
    """bf16-mixed as Lightning builds it on CPU. On CPU, ``precision="16-mixed"`` is turned
    into bf16-mixed by Lightning (with a warning); its 16-mixed plugin itself (float16
    autocast and a GradScaler) runs on CPU when passed explicitly, as here."""
    if precision == "bf16-mixed":
        return dict(precision="bf16-mixed")
    from lightning.pytorch.plugins.precision import MixedPrecision
    return dict(plugins=[MixedPrecision("16-mixed", "cpu",
                                        scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_gradient_clipping_under_mixed_precision(tmp_path, precision):
    """Lightning refused to clip: it read the class's ``_step_supports_amp_scaling`` as a
    fused optimizer that unscales inside step. It now clips as with torch's AdamW."""
    module, run = fit(tmp_path, ours, gradient_clip_val=CLIP, **mixed_precision(precision))
    reference, _ = fit(tmp_path, theirs, gradient_clip_val=CLIP,
                                   **mixed_precision(precision))
    assert type(run.precision_plugin).__name__ == "MixedPrecision"
    assert run.precision_plugin.precision == precision
    assert len(module.norms) == 8 and min(module.norms) > 2 * CLIP   # clipping acts
    assert module.norms == pytest.approx(reference.norms, rel=1e-3)
    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    unclipped, _ = fit(tmp_path, ours, **mixed_precision(precision))
    assert not torch.allclose(unclipped.net[0].weight, module.net[0].weight, atol=1e-3)


def test_fused_true_is_refused_for_clipping_as_torchs_fused_adamw(tmp_path):
    """``fused=True`` opts into GradScaler's fused protocol, as torch's; Lightning then
    refuses to clip, as it does for torch's fused AdamW."""
    for make in (lambda p: ft.AdamW(p, lr=0.01, fused=True),
                 lambda p: torch.optim.AdamW(p, lr=0.01, fused=True)):
        with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
            fit(tmp_path, make, gradient_clip_val=CLIP, max_epochs=1,
                **mixed_precision("16-mixed"))


def test_ckpt_path_resume(tmp_path):
    """Two epochs, a checkpoint, two more epochs in a new Trainer with a new module and
    optimizer: the same params as four epochs in one run (bitwise: the same arithmetic)."""
    whole, _ = fit(tmp_path, ours, max_epochs=4)
    first, run = fit(tmp_path, ours, max_epochs=2)
    run.save_checkpoint(tmp_path / "two.ckpt")
    resumed = regressor(ours, seed=7)            # other initial weights: all from the file
    trainer(tmp_path, max_epochs=4).fit(resumed, loader(), ckpt_path=tmp_path / "two.ckpt")
    assert resumed.losses == whole.losses[8:]
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
