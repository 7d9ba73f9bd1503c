"""Token-weighted training runs and their hand-computed references, shared by the
single-process accumulation tests and the 2-process scenarios (``tests/distributed``).

A tiny per-token language model (an embedding and a linear head) trains on sequences of
random lengths, padded to one length with their padding masked out of the loss
(``labels == -100``), so that micro-batches (and the processes' shares of a batch) hold
different numbers of target tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer

VOCAB_SIZE = 11
MAX_LENGTH = 7
IGNORE_INDEX = -100


def make_token_dataset(num_sequences: int, seed: int = 0) -> TensorDataset:
    """``(input_ids, labels)`` pairs of random lengths 1..MAX_LENGTH, right-padded."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB_SIZE, (num_sequences, MAX_LENGTH), generator=generator)
    labels = torch.randint(0, VOCAB_SIZE, (num_sequences, MAX_LENGTH), generator=generator)
    lengths = torch.randint(1, MAX_LENGTH + 1, (num_sequences,), generator=generator)
    is_padding = torch.arange(MAX_LENGTH) >= lengths[:, None]
    input_ids[is_padding] = 0
    labels[is_padding] = IGNORE_INDEX
    return TensorDataset(input_ids, labels)


EVAL_DATASET = make_token_dataset(7, seed=1)


def make_token_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB_SIZE, 8), nn.Linear(8, VOCAB_SIZE))


def token_loss_sum_and_count(model: nn.Module, input_ids, labels) -> tuple[torch.Tensor, Any]:
    logits = model(input_ids)
    loss_sum = nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss_sum, (labels != IGNORE_INDEX).sum()


class TokenTrainer(Trainer):
    """Returns each micro-batch's mean loss over its target tokens, and their number."""

    num_items_key = "num_items"

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        input_ids, labels = batch
        loss_sum, num_tokens = token_loss_sum_and_count(self.model, input_ids, labels)
        return {
            "loss": loss_sum / num_tokens.clamp(min=1),
            "model_outputs": None,
            "batch_size": input_ids.size(0),
            self.num_items_key: num_tokens,
        }

    calculate_eval_batch_loss = calculate_train_batch_loss


class BatchSizeAsNumItemsTrainer(Trainer):
    """Returns each batch's size as its ``num_items``: the same weights as weighing by
    ``batch_size``, but with several processes every window's item count is all-reduced
    (``trainwright.accumulation``)."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        output = super().calculate_train_batch_loss(batch)
        return {**output, "num_items": output["batch_size"]}


def make_token_trainer(
    lr: float = 0.5, trainer_class: type = TokenTrainer, callbacks: Any = ()
) -> Trainer:
    model = make_token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_func = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)  # the hook computes the loss
    return trainer_class(model, loss_func, optimizer, callbacks=callbacks)


def reference_token_steps(
    dataset: TensorDataset, samples_per_update: int, lr: float, max_grad_norm: float | None
) -> list[list[float]]:
    """The weights after one SGD step per ``samples_per_update`` consecutive sequences, each
    on the mean loss over every target token of those sequences, computed by hand."""
    model = make_token_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    input_ids, labels = dataset.tensors
    for start in range(0, len(dataset), samples_per_update):
        window = slice(start, start + samples_per_update)
        loss_sum, num_tokens = token_loss_sum_and_count(model, input_ids[window], labels[window])
        optimizer.zero_grad()
        (loss_sum / num_tokens).backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    return flat_weights(model)


def token_weighted_run(
    num_sequences: int,
    total_batch_size: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float | None = None,
    lr: float = 0.5,
) -> dict[str, Any]:
    """Trains one epoch in order, ``total_batch_size`` sequences per step over all processes
    (each process gets its share), evaluating on 7 sequences (with 2 processes, the last
    evaluation batch is completed with repeats), and returns the weights and losses."""
    trainer = make_token_trainer(lr)
    num_processes = trainer.accelerator.num_processes
    trainer.train(
        make_token_dataset(num_sequences),
        eval_dataset=EVAL_DATASET,
        num_epochs=1,
        per_device_batch_size=total_batch_size // num_processes,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_grad_norm=max_grad_norm,
        train_dataloader_kwargs={"shuffle": False, "num_workers": 0, "persistent_workers": False},
    )
    return {
        "weights": flat_weights(trainer.get_model()),
        "train_loss_epoch": trainer.run_history.get_metric_values("train_loss_epoch"),
        "eval_loss_epoch": trainer.run_history.get_metric_values("eval_loss_epoch"),
    }


def mean_token_loss(dataset: TensorDataset) -> float:
    """The mean loss over every target token of ``dataset`` for the initial model."""
    with torch.no_grad():
        loss_sum, num_tokens = token_loss_sum_and_count(make_token_model(), *dataset.tensors)
    return (loss_sum / num_tokens).item()


def flat_weights(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
