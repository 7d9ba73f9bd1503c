"""Callbacks that end a run: early stopping, and stopping on a non-finite loss."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch

from trainwright.callbacks.base import StopTrainingError, TrainerCallback, TrainingInterrupted
from trainwright.callbacks.monitor import MetricMonitor, MonitorCallback
from trainwright.device_values import DeviceValueReader
from trainwright.tracking import format_metric_value
from trainwright.validation import check_number, check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["EarlyStoppingCallback", "NonFiniteLossError", "TerminateOnNaNCallback"]


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


class NonFiniteLossError(StopTrainingError):
    """The [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] of
    [`TerminateOnNaNCallback`][trainwright.callbacks.stopping.TerminateOnNaNCallback]: a
    training loss was NaN or infinite.

    Its message and its fields name the first bad loss, whatever step the run stopped at:
    ``Stopping training: the loss is nan at step 3 of epoch 1.`` In a multi-process run,
    every process receives the error of the process that found the loss (the message then
    starts with ``process 1 asked to stop:``), with its fields.

    Attributes:
        loss: the first bad loss (``nan``, ``inf`` or ``-inf``).
        epoch: its epoch, counting from 1 (``trainer.run_history.current_epoch``).
        step: its step: the index of the batch within the epoch, from 0.
    """

    def __init__(self, loss: float, epoch: int, step: int, message: str | None = None) -> None:
        super().__init__(
            message or f"Stopping training: the loss is {loss} at step {step} of epoch {epoch}."
        )
        self.loss = loss
        self.epoch = epoch
        self.step = step

    def __reduce__(self) -> tuple:  # keep the fields when sent to other processes
        return (type(self), (self.loss, self.epoch, self.step, *self.args))


class TerminateOnNaNCallback(TrainerCallback):
    """Stops training when a training loss is NaN or infinite, naming the first bad loss.

    Each step only keeps a reference to its loss. Every ``check_every_n_steps`` steps, and
    always at the last step of an epoch, the kept losses are checked on the device, in a few
    tensor operations, and the result is read on the host: one wait for the device per check,
    none on the other steps (on a GPU the read waits on a CUDA event after a non-blocking copy,
    see [`DeviceValueReader`][trainwright.device_values.DeviceValueReader]). When a loss was not
    finite, the run ends through a
    [`NonFiniteLossError`][trainwright.callbacks.stopping.NonFiniteLossError] (a
    `StopTrainingError`) naming the **first** bad loss exactly (its value, epoch and step),
    and the run history records it as ``non_finite_loss`` and ``non_finite_loss_step`` (shown
    by `PrintMetricsCallback` with the stop).

    The run stops at the check that finds the bad loss: up to ``check_every_n_steps - 1``
    steps after it (plus, with several processes, the steps the stop vote takes), never
    later than the end of its epoch's steps. Because the epoch's last step is always checked,
    a bad loss never reaches a recorded ``train_loss_epoch``, an evaluation, the epoch-end
    callbacks or a best-model save (`SaveBestModelCallback` saves at
    ``on_training_run_epoch_end``). If another callback ends the epoch early
    (``trainer.request_end_epoch()``), the remaining losses are checked at
    ``on_train_epoch_end``, after ``train_loss_epoch`` is recorded (as ``nan``) and before
    anything else of the epoch runs. A state saved between two checks
    (`SaveTrainingStateCallback`) keeps the unchecked losses, so a resumed run checks them
    too. If the run stops for another reason before a check, the unchecked losses are
    checked then, and a bad one is recorded and warned about.

    ``check_every_n_steps=1`` checks every step and stops at the bad step itself (as
    pytorch-accelerated's callback does); on a GPU that is one wait for the device per step.

    Args:
        check_every_n_steps: steps between two checks (at the latest; the epoch's last step
            is always checked).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            TerminateOnNaNCallback(check_every_n_steps=1), PrintProgressCallback])
        ```
    """

    def __init__(self, check_every_n_steps: int = 100) -> None:
        check_positive_int("check_every_n_steps", check_every_n_steps)
        self.check_every_n_steps = check_every_n_steps
        self._losses: list[torch.Tensor] = []  # detached, of consecutive steps, not checked yet
        self._is_restored = False  # the first losses were restored from a training state
        self._last_step: int | None = None  # of every epoch, when known in advance
        self._max_num_update_steps: float = math.inf
        self._reader = DeviceValueReader()

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._losses, self._is_restored = [], False
        self._reader.clear()
        config = trainer.run_config
        self._max_num_update_steps = config.num_update_steps or math.inf
        num_batches = [
            number
            for number in (config.train_dataloader_len, config.max_num_train_batches_per_epoch)
            if number is not None
        ]
        self._last_step = min(num_batches) - 1 if num_batches else None

    def on_train_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        losses = self._losses
        losses.append(batch_output["loss"].detach())
        if (
            len(losses) >= self.check_every_n_steps
            or step == self._last_step
            or trainer.progress.num_update_steps >= self._max_num_update_steps
            or (self._last_step is None and trainer.accelerator.gradient_state.end_of_dataloader)
        ):
            self._raise_if_bad(trainer, step)

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        # Losses left unchecked only when the epoch ended early (request_end_epoch).
        self._raise_if_bad(trainer, trainer.progress.num_batches_done - 1)

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        if not isinstance(error, NonFiniteLossError):
            found = self._first_bad_loss(trainer, trainer.progress.num_batches_done - 1)
            if found is None:
                return
            warnings.warn(
                f"{found} The run was stopping anyway ({error}).", RuntimeWarning, stacklevel=2
            )
            error = found
        trainer.run_history.update_metric("non_finite_loss", error.loss)
        trainer.run_history.update_metric("non_finite_loss_step", error.step)

    def on_training_interrupted(self, trainer: Trainer, signal_name: str, **kwargs: Any) -> None:
        self.on_stop_training_error(trainer, error=TrainingInterrupted(signal_name))

    def _raise_if_bad(self, trainer: Trainer, last_step: int) -> None:
        found = self._first_bad_loss(trainer, last_step)
        if found is not None:
            raise found

    def _first_bad_loss(self, trainer: Trainer, last_step: int) -> NonFiniteLossError | None:
        """Checks the kept losses (of the steps up to ``last_step``) and forgets them."""
        losses, self._losses = self._losses, []
        if not losses:
            return None
        if self._is_restored:  # saved on the CPU: to the device of the others
            losses = [loss.to(losses[-1].device) for loss in losses]
            self._is_restored = False
        values = torch.stack(losses)
        # The position of the first value that is not finite, or len(values) for none.
        positions = torch.arange(len(values), device=values.device)
        first_bad = torch.where(torch.isfinite(values), len(values), positions).amin()
        self._reader.submit(first_bad)
        ((_, position),) = self._reader.wait()
        if position >= len(values):
            return None
        epoch = trainer.run_history.current_epoch
        step = last_step - len(values) + 1 + int(position)
        return NonFiniteLossError(float(values[int(position)]), epoch, step)

    def state_dict(self) -> dict[str, Any]:
        losses = torch.stack(self._losses).cpu() if self._losses else torch.empty(0)
        return {"unchecked_losses": losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses = list(state["unchecked_losses"].unbind(0))
        self._is_restored = bool(self._losses)
