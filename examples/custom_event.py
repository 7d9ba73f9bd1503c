"""Define a custom callback event: a Trainer subclass fires it, a callback handles it.

Any overridden hook can fire an event of its own with
``self.callback_handler.call_event("event_name", ...)``. The keywords given there are what
the callback method receives; only callbacks that define a method of that name are called.
Here the event hands every training batch to a callback that checks its shapes.

Run it with::

    python examples/custom_event.py --num-epochs 1
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from accelerate.utils import set_seed
from digits import NUM_FEATURES, exit_if_interrupted, load_digits_splits, make_classifier
from torch import nn

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import DEFAULT_CALLBACKS


class BatchCheckingTrainer(Trainer):
    """A trainer that fires ``check_batch`` with the inputs and targets of every training
    batch, before computing its loss."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        inputs, targets = batch
        self.callback_handler.call_event(
            "check_batch", trainer=self, inputs=inputs, targets=targets
        )
        return super().calculate_train_batch_loss(batch)


class CheckBatchShapesCallback(TrainerCallback):
    """Handles ``check_batch``: every batch must hold ``train_per_device_batch_size``
    samples of ``num_features`` features and one label each.

    That holds for every batch only when the training dataloader drops the last, smaller
    batch (``train_dataloader_kwargs={"drop_last": True}``).
    """

    def __init__(self, num_features: int) -> None:
        self.num_features = num_features
        self.num_batches_checked = 0

    def check_batch(
        self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor, **kwargs: Any
    ) -> None:
        batch_size = trainer.run_config["train_per_device_batch_size"]
        expected_inputs, expected_targets = (batch_size, self.num_features), (batch_size,)
        if tuple(inputs.shape) != expected_inputs or tuple(targets.shape) != expected_targets:
            raise ValueError(
                f"Expected inputs of shape {expected_inputs} and targets of shape "
                f"{expected_targets}; got {tuple(inputs.shape)} and {tuple(targets.shape)}."
            )
        self.num_batches_checked += 1


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Trains briefly with the checking callback; returns how many batches it checked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-epochs", type=int, default=1)
    args = parser.parse_args(argv)
    set_seed(0)

    splits = load_digits_splits()
    model = make_classifier()
    shape_checker = CheckBatchShapesCallback(NUM_FEATURES)
    trainer = BatchCheckingTrainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        callbacks=[*DEFAULT_CALLBACKS, shape_checker],
    )
    trainer.train(
        splits.train,
        num_epochs=args.num_epochs,
        per_device_batch_size=32,
        train_dataloader_kwargs={"drop_last": True},
    )
    exit_if_interrupted(trainer)
    result = {
        "num_batches_checked": shape_checker.num_batches_checked,
        "num_train_batches": trainer.run_config.train_dataloader_len * args.num_epochs,
    }
    trainer.print(
        f"\ncheck_batch checked {result['num_batches_checked']} of "
        f"{result['num_train_batches']} training batches"
    )
    return result


if __name__ == "__main__":
    main()
