"""Callbacks that end a run: early stopping, and stopping on a non-finite loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.base import StopTrainingError, TrainerCallback
from trainwright.callbacks.monitor import MonitorCallback
from trainwright.device_values import DeviceValueReader

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["EarlyStoppingCallback", "TerminateOnNaNCallback"]


class EarlyStoppingCallback(MonitorCallback):
    """Stops training when a metric has stopped improving.

    After every epoch, the watched metric counts as improved if it beats the best value so
    far by more than ``early_stopping_threshold``; after ``early_stopping_patience`` epochs
    in a row without improvement, a :class:`StopTrainingError` ends the run.
    """

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

        Example::

            trainer = Trainer(model, loss_func, optimizer, callbacks=[
                *DEFAULT_CALLBACKS, EarlyStoppingCallback(early_stopping_patience=3)])
        """
        if early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be at least 1; got {early_stopping_patience}."
            )
        super().__init__(watch_metric, greater_is_better, early_stopping_threshold, reset_on_train)
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.epochs_without_improvement = 0

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer, **kwargs)
        if self.reset_on_train:
            self.epochs_without_improvement = 0

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        value = self.read_metric(trainer)
        if self.monitor.update(value, trainer.run_history.current_epoch):
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.early_stopping_patience:
            raise StopTrainingError(
                f"Stopping early: {self.watch_metric} has not improved by more than "
                f"{self.early_stopping_threshold} for {self.epochs_without_improvement} "
                f"epoch(s); best {self.monitor.best_value:.6g} at epoch {self.monitor.best_epoch}."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epochs_without_improvement = state["epochs_without_improvement"]


class TerminateOnNaNCallback(TrainerCallback):
    """Stops training as soon as a training loss is NaN or infinite.

    The check adds no host-device sync: each step's loss is copied to the host without
    waiting (see :class:`~trainwright.device_values.DeviceValueReader`) and inspected once
    the copy has landed, which on the CPU is immediately and on a GPU a step or so later.
    The run then ends through :class:`StopTrainingError` with a message naming the epoch and
    step of the first bad loss; every loss of the epoch is checked by its end.
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
