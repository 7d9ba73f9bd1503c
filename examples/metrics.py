"""A callback that records classification accuracy, computed with TorchMetrics.

The trainer only records losses; any other metric is a callback's job. This one follows the
usual TorchMetrics life cycle once per evaluation epoch: ``update`` on every batch,
``compute`` at the end, then ``reset`` for the next epoch.
"""

from __future__ import annotations

from typing import Any

from torchmetrics.classification import MulticlassAccuracy

from trainwright import Trainer, TrainerCallback


class AccuracyCallback(TrainerCallback):
    """Records ``accuracy`` (the share of correctly classified samples) after every
    evaluation epoch, during ``train()`` and ``evaluate()`` alike.

    Declaring ``writes_metrics`` lets ``EarlyStoppingCallback`` and ``SaveBestModelCallback``
    check at the start of a run that ``"accuracy"`` is a metric they can watch.

    Args:
        num_classes: the number of classes the model's logits score.
    """

    writes_metrics = ("accuracy",)

    def __init__(self, num_classes: int) -> None:
        # average="micro" counts correct samples over all classes: plain accuracy.
        # sync_on_compute=False: predictions are gathered from every process in
        # on_eval_step_end, so each process already sees the whole evaluation set.
        self.accuracy = MulticlassAccuracy(
            num_classes=num_classes, average="micro", sync_on_compute=False
        )

    def _move_to_device(self, trainer: Trainer) -> None:
        self.accuracy.to(trainer.device)

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_to_device(trainer)

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_to_device(trainer)

    def on_eval_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        # gather_for_metrics also drops the samples Accelerate repeats to even out the last
        # batch across processes; on a single process it returns its inputs unchanged.
        logits, targets = trainer.accelerator.gather_for_metrics(
            (batch_output["model_outputs"], batch[1])
        )
        self.accuracy.update(logits, targets)

    def on_eval_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        trainer.run_history.update_metric("accuracy", self.accuracy.compute().item())
        self.accuracy.reset()
