"""Callbacks that show the run's progress and print its metrics."""

from __future__ import annotations

import numbers
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from trainwright.callbacks.base import StopTrainingError, TrainerCallback

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "LogMetricsCallback",
    "PrintMetricsCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
]


class PrintProgressCallback(TrainerCallback):
    """Prints a line when the run, each epoch and each evaluation starts, and why a run
    stopped early (main process only)."""

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        config = trainer.run_config
        trainer.print(
            f"\nStarting training run: {config.num_epochs} epoch(s), "
            f"{config.num_update_steps} optimizer update(s)"
        )

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        trainer.print(f"\nStarting epoch {trainer.run_history.current_epoch}")

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        trainer.print(f"\n{error}")

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        trainer.print("Finishing training run")

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        trainer.print("\nStarting evaluation run")


class ProgressBarCallback(TrainerCallback):
    """A tqdm progress bar over each training and evaluation epoch (main process of each
    machine only). tqdm picks notebook widgets when run in a notebook, and redraws at a
    bounded rate (``mininterval``, 0.1 s by default) however fast the steps are.

    Args:
        **tqdm_kwargs: passed to :class:`tqdm.auto.tqdm`, e.g. ``mininterval=1.0`` or
            ``file=sys.stdout``.
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._bar: tqdm | None = None
        self.tqdm_kwargs = {"leave": False, "dynamic_ncols": True, **tqdm_kwargs}

    def _open(self, trainer: Trainer, dataloader: Any, description: str) -> None:
        self._close()
        self._bar = tqdm(
            total=len(dataloader) if isinstance(dataloader, Sized) else None,
            desc=description,
            disable=not trainer.accelerator.is_local_main_process,
            **self.tqdm_kwargs,
        )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._open(trainer, trainer.train_dataloader, f"epoch {trainer.run_history.current_epoch}")

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._bar.update(1)

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()

    def on_eval_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._open(trainer, trainer.eval_dataloader, "evaluating")

    def on_eval_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._bar.update(1)

    def on_eval_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()  # an early stop can leave a bar open


class PrintMetricsCallback(TrainerCallback):
    """Prints the numeric metrics recorded during each epoch (and each evaluation run) once
    it is over: ``epoch 3: train_loss_epoch: 0.2150 | eval_loss_epoch: 0.2514 | ...``, and
    ``evaluation: evaluation_loss: ...`` for :meth:`~trainwright.trainer.Trainer.evaluate`.

    It prints at ``on_training_run_epoch_end``, after every ``on_eval_epoch_end``, so
    metrics that other callbacks record at epoch end are printed whatever the callback
    order; if a callback stops the run during that event (early stopping), the epoch's
    metrics are printed when the stop is reported. Override :meth:`log_metrics` to send
    them somewhere else.
    """

    order = 10  # after callbacks of the default order reacting to the same events

    def __init__(self) -> None:
        self._counts_before: dict[str, int] = {}

    def _snapshot(self, trainer: Trainer) -> None:
        history = trainer.run_history
        self._counts_before = {
            name: len(history.get_metric_values(name)) for name in history.get_metric_names()
        }

    def _log_new_metrics(self, trainer: Trainer, label: str) -> None:
        history = trainer.run_history
        metrics = {}
        for name in sorted(history.get_metric_names()):
            values = history.get_metric_values(name)
            if len(values) > self._counts_before.get(name, 0) and _is_number(values[-1]):
                metrics[name] = values[-1]
        self._snapshot(trainer)  # each value is reported once
        if metrics:
            self.log_metrics(trainer, metrics, label)

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._snapshot(trainer)

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._log_new_metrics(trainer, f"epoch {trainer.run_history.current_epoch}")

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        self._log_new_metrics(trainer, f"epoch {trainer.run_history.current_epoch}")

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._snapshot(trainer)

    def on_evaluation_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._log_new_metrics(trainer, "evaluation")

    def log_metrics(self, trainer: Trainer, metrics: dict[str, Any], label: str) -> None:
        """Prints ``metrics`` on one line after ``label`` (``"epoch 3"`` or
        ``"evaluation"``). Override to log them elsewhere.

        Example::

            class LogToFile(PrintMetricsCallback):
                def log_metrics(self, trainer, metrics, label):
                    with open("metrics.txt", "a") as file:
                        file.write(f"{label}: {metrics}\\n")
        """
        formatted = " | ".join(f"{name}: {value:.4f}" for name, value in metrics.items())
        trainer.print(f"{label}: {formatted}")


#: The name pytorch-accelerated uses for :class:`PrintMetricsCallback`.
LogMetricsCallback = PrintMetricsCallback


def _is_number(value: Any) -> bool:
    if isinstance(value, numbers.Number):
        return True
    return hasattr(value, "numel") and value.numel() == 1
