"""Hugging Face ``Trainer`` with fastopt.torch.AdamW on a tiny GPT-2 built from a config.

Tolerance: losses within 1e-5 (absolute; they are near ln(64) = 4.2) of the Trainer's
default optimizer (torch.optim.AdamW, fused on torch >= 2.8): both compute AdamW in
float32 in a different order, a few ulps per step over six steps.
"""

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.frameworks

VOCAB, LENGTH, SAMPLES = 64, 16, 16


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def dataset():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (SAMPLES, LENGTH), generator=generator)
    return [{"input_ids": row, "labels": row} for row in tokens]


def arguments(output_dir, **overrides):
    from transformers import TrainingArguments
    options = dict(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=6,
                   learning_rate=3e-3, weight_decay=0.01, warmup_steps=2, logging_steps=1,
                   save_strategy="no", report_to="none", use_cpu=True, seed=0,
                   disable_tqdm=True, dataloader_pin_memory=False)
    options.update(overrides)
    return TrainingArguments(**options)


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_losses_match_its_default_adamw(tmp_path):
    from transformers import Trainer
    args = arguments(tmp_path / "default")
    default = Trainer(model=tiny_gpt2(), args=args, train_dataset=dataset())
    default.train()
    # The same optimizer class and keyword arguments the Trainer chose, on fastopt.
    chosen, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, default.model)
    assert chosen is torch.optim.AdamW
    ours = Trainer(model=tiny_gpt2(), args=arguments(tmp_path / "ours"),
                   train_dataset=dataset(), optimizer_cls_and_kwargs=(ft.AdamW, kwargs))
    ours.train()
    assert isinstance(ours.optimizer.optimizer if hasattr(ours.optimizer, "optimizer")
                      else ours.optimizer, ft.AdamW)
    expected = losses(default)
    assert len(expected) == 6 and expected[-1] < expected[0]
    assert losses(ours) == pytest.approx(expected, abs=1e-5, rel=0)


def test_trainer_checkpoint_resume(tmp_path):
    """Saved at step 3 (model as safetensors, optimizer and scheduler state), resumed in a
    new Trainer with a new model and optimizer: steps 4-6 as in one run."""
    from transformers import Trainer

    def trainer(output_dir, **overrides):
        model = tiny_gpt2()
        opt = ft.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        return Trainer(model=model, args=arguments(output_dir, **overrides),
                       train_dataset=dataset(), optimizers=(opt, None))

    whole = trainer(tmp_path / "whole")
    whole.train()
    first = trainer(tmp_path / "split", save_strategy="steps", save_steps=3)
    first.train()
    checkpoint = tmp_path / "split" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").exists()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert losses(resumed)[-3:] == pytest.approx(losses(whole)[3:], abs=1e-6, rel=0)
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
