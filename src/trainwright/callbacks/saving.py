"""Callbacks that save the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.monitor import MonitorCallback

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["SaveBestModelCallback"]


class SaveBestModelCallback(MonitorCallback):
    """Saves a checkpoint whenever the watched metric improves, and reloads the best weights
    when training ends.

    Every checkpoint has the same entries: the model's weights, the optimizer state (when
    ``save_optimizer``), the scheduler state (when there is a scheduler), the watched
    metric's value under its own name, and ``"epoch"``. If the run stops before any
    checkpoint was saved, nothing is reloaded. Several instances can watch different metrics;
    give each its own ``save_path``.
    """

    def __init__(
        self,
        save_path: str | os.PathLike = "best_model.pt",
        watch_metric: str = "eval_loss_epoch",
        greater_is_better: bool = False,
        reset_on_train: bool = True,
        save_optimizer: bool = True,
        load_saved_checkpoint: bool = True,
    ) -> None:
        """
        Args:
            save_path: the checkpoint file to write (replaced atomically on each save).
            watch_metric: the metric to watch, as recorded in the run history.
            greater_is_better: whether higher values of the metric are better.
            reset_on_train: forget the best value at the start of every ``train()``.
            save_optimizer: include the optimizer state in the checkpoint.
            load_saved_checkpoint: reload the best checkpoint's weights when training ends.

        Example::

            trainer = Trainer(model, loss_func, optimizer, callbacks=[
                *DEFAULT_CALLBACKS,
                SaveBestModelCallback("best_accuracy.pt", "accuracy", greater_is_better=True),
            ])
        """
        super().__init__(watch_metric, greater_is_better, 0.0, reset_on_train)
        self.save_path = Path(save_path)
        self.save_optimizer = save_optimizer
        self.load_saved_checkpoint = load_saved_checkpoint
        self.saved_this_run = False

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer, **kwargs)
        self.saved_this_run = False

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        value = self.read_metric(trainer)
        epoch = trainer.run_history.current_epoch
        if self.monitor.update(value, epoch):
            trainer.save_checkpoint(
                self.save_path,
                checkpoint_kwargs={self.watch_metric: value, "epoch": epoch},
                save_optimizer=self.save_optimizer,
            )
            self.saved_this_run = True

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.load_saved_checkpoint and self.saved_this_run:
            trainer.print(
                f"Loading the best model ({self.watch_metric} {self.monitor.best_value:.6g} "
                f"at epoch {self.monitor.best_epoch}) from {self.save_path}"
            )
            trainer.load_checkpoint(self.save_path, load_optimizer=False, load_scheduler=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "saved_this_run": self.saved_this_run}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.saved_this_run = state["saved_this_run"]
