"""Track extra metrics with a callback: accuracy and a confusion matrix, from TorchMetrics.

The trainer records only losses. To record anything else, a callback updates its metrics
on every evaluation batch, computes them when the evaluation epoch ends, stores them in the
run history and resets them for the next epoch. The run history holds any value, so the
confusion matrix is stored whole, as a tensor; ``PrintMetricsCallback`` prints only the
single numbers.

Callbacks run after the trainer's hook of the same moment and, among themselves, in
ascending ``order``: a callback that reads these metrics in ``on_eval_epoch_end`` must come
after this one. Callbacks acting in ``on_training_run_epoch_end`` (early stopping,
best-model saving, printing) always see them.

Run it with::

    python examples/metrics_callback.py --num-epochs 3
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from accelerate.utils import set_seed
from digits import NUM_CLASSES, exit_if_interrupted, load_digits_splits, make_classifier
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from trainwright import RunHistory, Trainer, TrainerCallback
from trainwright.callbacks import DEFAULT_CALLBACKS


class ClassificationMetricsCallback(TrainerCallback):
    """Records ``accuracy`` (a float) and ``confusion_matrix`` (a ``num_classes`` x
    ``num_classes`` tensor on the CPU, rows the true class, columns the predicted one)
    after every evaluation epoch."""

    writes_metrics = ("accuracy", "confusion_matrix")

    def __init__(self, num_classes: int) -> None:
        # One collection updates, computes, resets and moves both metrics at once.
        # sync_on_compute=False: every process gathers the whole evaluation set itself.
        self.metrics = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(
                    num_classes=num_classes, average="micro", sync_on_compute=False
                ),
                "confusion_matrix": MulticlassConfusionMatrix(
                    num_classes=num_classes, sync_on_compute=False
                ),
            }
        )

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.metrics.to(trainer.device)

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.metrics.to(trainer.device)

    def on_eval_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        # Collect the batch from every process, without the samples Accelerate repeats to
        # even out the last batch.
        logits, targets = trainer.accelerator.gather_for_metrics(
            (batch_output["model_outputs"], batch[1])
        )
        self.metrics.update(logits.argmax(dim=-1), targets)

    def on_eval_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        results = self.metrics.compute()
        trainer.run_history.update_metric("accuracy", results["accuracy"].item())
        trainer.run_history.update_metric("confusion_matrix", results["confusion_matrix"].cpu())
        self.metrics.reset()


def main(argv: list[str] | None = None) -> RunHistory:
    """Trains briefly, prints the final metrics and returns the run history."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    set_seed(0)

    splits = load_digits_splits()
    model = make_classifier()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        callbacks=[*DEFAULT_CALLBACKS, ClassificationMetricsCallback(NUM_CLASSES)],
    )
    history = trainer.train(
        splits.train,
        num_epochs=args.num_epochs,
        eval_dataset=splits.validation,
        per_device_batch_size=32,
        eval_per_device_batch_size=256,
    )
    exit_if_interrupted(trainer)

    accuracies = ", ".join(f"{value:.4f}" for value in history.get_metric_values("accuracy"))
    trainer.print(f"\nValidation accuracy per epoch: {accuracies}")
    trainer.print("Final confusion matrix (rows: true digit, columns: predicted digit):")
    trainer.print(history.get_latest_metric("confusion_matrix"))
    return history


if __name__ == "__main__":
    main()
