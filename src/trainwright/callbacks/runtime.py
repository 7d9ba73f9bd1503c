"""Callbacks that set up the run's environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from trainwright.callbacks.base import TrainerCallback

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["MoveModulesToDeviceCallback"]


class MoveModulesToDeviceCallback(TrainerCallback):
    """Moves every public ``nn.Module`` attribute of the trainer other than the model (the
    loss function, or modules a subclass adds) to the trainer's device when a training or
    evaluation run starts. The model itself is placed by Accelerate. It runs before other
    callbacks (``order = -10``), so they find the modules on the device."""

    order = -10

    def _move_modules(self, trainer: Trainer) -> None:
        for name, value in vars(trainer).items():
            if (
                not name.startswith("_")
                and isinstance(value, nn.Module)
                and value is not trainer.model
            ):
                value.to(trainer.device)

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_modules(trainer)

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_modules(trainer)
