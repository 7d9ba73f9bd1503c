"""Callbacks that end a run: early stopping, and stopping on a non-finite loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.base import StopTrainingError, TrainerCallback
from trainwright.callbacks.monitor import MetricMonitor, MonitorCallback
from trainwright.device_values import DeviceValueReader
from trainwright.tracking import format_metric_value
from trainwright.validation import check_number, check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["EarlyStoppingCallback", "TerminateOnNaNCallback"]


class EarlyStoppingCallback(MonitorCallback):
    """Stops training when a metric has stopped improving.

    After every epoch, the watched metric counts as improved if it beats the best value so
    far by more than ``early_stopping_threshold``; after ``early_stopping_patience`` epochs
    in a row without improvement, a
    [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] ends the run.

    The stop message names the value the threshold was measured from and, when a later
    epoch beat it by less than the threshold, that best value too: the one a
    `SaveBestModelCallback` (which counts any improvement) keeps, e.g. ``Stopping early:
    eval_loss_epoch has not improved on 0.09712 (epoch 10) by more than 0.001 for 3
    epoch(s); the best value is 0.09694 (epoch 12).`` It runs after any
    `SaveBestModelCallback` (``run_after``), so the epoch that stops the run is still saved
    if it is the best one.
    """

    run_after = ("SaveBestModelCallback",)

    def __init__(
        self,
        early_stopping_patience: int = 1,
        early_stopping_threshold: float = 0.01,
        watch_metric: str = "eval_loss_epoch",
        greater_is_better: bool = False,
        reset_on_train: bool = True,
    ) -> None:
        """
        Args:
            early_stopping_patience: epochs without improvement before stopping.
            early_stopping_threshold: the minimum change that counts as an improvement.
            watch_metric: the metric to watch, as recorded in the run history.
            greater_is_better: whether higher values of the metric are better.
            reset_on_train: start afresh (best value and counter) at every ``train()``.

        Example:
            ```python
            trainer = Trainer(model, loss_func, optimizer, callbacks=[
                *DEFAULT_CALLBACKS, EarlyStoppingCallback(early_stopping_patience=3)])
            ```
        """
        check_positive_int("early_stopping_patience", early_stopping_patience)
        check_number("early_stopping_threshold", early_stopping_threshold, minimum=0)
        super().__init__(watch_metric, greater_is_better, early_stopping_threshold, reset_on_train)
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.epochs_without_improvement = 0
        #: The best value by any margin (``monitor`` keeps the one the threshold counts from).
        self.best_seen = MetricMonitor(watch_metric, greater_is_better)

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer, **kwargs)
        if self.reset_on_train:
            self.epochs_without_improvement = 0
            self.best_seen.reset()

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        value = self.read_metric(trainer)
        epoch = trainer.run_history.current_epoch
        self.best_seen.update(value, epoch)
        if self.monitor.update(value, epoch):
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.early_stopping_patience:
            raise StopTrainingError(self._stop_message())

    def _stop_message(self) -> str:
        if self.monitor.best_epoch is None:  # every value so far was NaN
            return (
                f"Stopping early: {self.watch_metric} has been NaN for "
                f"{self.epochs_without_improvement} epoch(s)."
            )
        reference = (
            f"{format_metric_value(self.monitor.best_value)} (epoch {self.monitor.best_epoch})"
        )
        message = (
            f"Stopping early: {self.watch_metric} has not improved on {reference} by more than "
            f"{format_metric_value(self.early_stopping_threshold)} for "
            f"{self.epochs_without_improvement} epoch(s)"
        )
        if self.best_seen.best_epoch == self.monitor.best_epoch:
            return f"{message}."
        best = (
            f"{format_metric_value(self.best_seen.best_value)} (epoch {self.best_seen.best_epoch})"
        )
        return f"{message}; the best value is {best}."

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "epochs_without_improvement": self.epochs_without_improvement,
            "best_seen": self.best_seen.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epochs_without_improvement = state["epochs_without_improvement"]
        self.best_seen.load_state_dict(state["best_seen"])


class TerminateOnNaNCallback(TrainerCallback):
    """Stops training as soon as a training loss is NaN or infinite.

    The check adds no host-device sync: each step's loss is copied to the host without
    waiting (see [`DeviceValueReader`][trainwright.device_values.DeviceValueReader]) and inspected
    once the copy has landed, which on the CPU is immediately and on a GPU a step or so later.
    The run then ends through [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError]
    with a message naming the epoch and step of the first bad loss; every loss of the epoch is
    checked by its end.
    """

    def __init__(self) -> None:
        self._losses = DeviceValueReader()

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._losses.clear()

    def on_train_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        loss = batch_output["loss"]
        if loss.device.type == "cpu":  # already on the host: reading it waits for nothing
            value = float(loss.detach())
            if not math.isfinite(value):
                self._stop(value, trainer.run_history.current_epoch, step)
            return
        self._losses.submit(loss, tag=(trainer.run_history.current_epoch, step))
        self._check(self._losses.ready())

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._check(self._losses.wait())

    def _check(self, losses: Any) -> None:
        for (epoch, step), loss in losses:
            if not math.isfinite(loss):
                self._stop(loss, epoch, step)

    def _stop(self, loss: float, epoch: int, step: int) -> None:
        self._losses.clear()
        raise StopTrainingError(
            f"Stopping training: the loss is {loss} at step {step} of epoch {epoch}."
        )
