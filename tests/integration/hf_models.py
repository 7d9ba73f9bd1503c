"""Tiny random-init Hugging Face models, dict batches from generated token data, and the
Trainer subclass that takes its loss from the model's output (``ModelOutput.loss``)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trainwright import Trainer

VOCAB_SIZE = 100
SEQUENCE_LENGTH = 8


def make_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 with hidden size 32, built from its config (nothing downloaded)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=SEQUENCE_LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def make_token_dataset(num_samples: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Causal-LM samples as dicts; the default collate function stacks them into dicts."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB_SIZE, (num_samples, SEQUENCE_LENGTH), generator=generator)
    return [
        {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in tokens
    ]


def model_output_loss(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """The trainer's ``loss_func``: the loss the model computed from the batch's labels."""
    return outputs.loss


class ModelOutputLossTrainer(Trainer):
    """Dict batches go to the model as keyword arguments; the loss is the one it returns
    (read by a ``loss_func`` such as `model_output_loss`)."""

    def calculate_train_batch_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        outputs = self.model(**batch)
        return {
            "loss": self.loss_func(outputs, batch["labels"]),
            "model_outputs": outputs.logits,
            "batch_size": batch["input_ids"].size(0),
        }

    def calculate_eval_batch_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self.calculate_train_batch_loss(batch)
