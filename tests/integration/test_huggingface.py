"""A Hugging Face transformers model trains with dict batches and ``ModelOutput.loss``, and
its checkpoint loads back into the model class, as does ``save_pretrained``'s directory."""

from __future__ import annotations

import pytest
import torch
from hf_models import ModelOutputLossTrainer, make_gpt2, make_token_dataset, model_output_loss
from transformers import GPT2LMHeadModel

from trainwright.callbacks import DEFAULT_CALLBACKS
from trainwright.checkpointing import MODEL_STATE_KEY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_transformers_model_trains_evaluates_and_reloads(tmp_path):
    model = make_gpt2()
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = ModelOutputLossTrainer(
        model, model_output_loss, optimizer, callbacks=DEFAULT_CALLBACKS
    )
    history = trainer.train(
        make_token_dataset(16),
        num_epochs=3,
        eval_dataset=make_token_dataset(8, seed=1),
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
    )
    train_losses = history.get_metric_values("train_loss_epoch")
    assert len(train_losses) == 3 and train_losses[-1] < train_losses[0]  # it learns
    assert len(history.get_metric_values("eval_loss_epoch")) == 3
    assert trainer.get_model() is model

    trainer.save_checkpoint(tmp_path / "model.pt")
    reloaded = make_gpt2(seed=1)
    reloaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True)[MODEL_STATE_KEY])
    model.save_pretrained(tmp_path / "pretrained")
    from_directory = GPT2LMHeadModel.from_pretrained(tmp_path / "pretrained")
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value)
        assert torch.equal(from_directory.state_dict()[name], value)
    assert not torch.equal(
        initial["transformer.h.0.attn.c_attn.weight"],
        model.state_dict()["transformer.h.0.attn.c_attn.weight"],
    )

    trainer.evaluate(make_token_dataset(8, seed=1), per_device_batch_size=8)
    assert history.get_latest_metric("evaluation_loss") > 0
