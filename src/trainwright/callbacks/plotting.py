"""A callback that saves a plot of the run history (drawn with matplotlib, an optional
dependency imported only when the plot is drawn; see
[`trainwright.plotting`][trainwright.plotting])."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.base import ALL_METRICS, TrainerCallback
from trainwright.plotting import require_matplotlib, save_run_history_plot
from trainwright.validation import check_bool, check_path

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["SavePlotCallback"]


class SavePlotCallback(TrainerCallback):
    """Saves `plot_run_history` of the run to ``path`` when the
    training run ends (also after an early stop), on the main process.

    matplotlib is checked for when training starts, so a missing installation is an error
    before any training work, not after it.

    Args:
        path: the image to write; the format follows the suffix (``.png``, ``.pdf``, ...).
        metric_names: the metrics to draw; default every numeric one.
        every_epoch: also redraw the file after every epoch (to watch a long run).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer,
                          callbacks=[*DEFAULT_CALLBACKS, SavePlotCallback("history.png")])
        ```
    """

    order = 20  # after the callbacks that record metrics at the same events
    reads_metrics = (ALL_METRICS,)  # and after every callback that declares it writes some

    def __init__(
        self,
        path: str | os.PathLike,
        metric_names: Iterable[str] | None = None,
        every_epoch: bool = False,
    ) -> None:
        check_path("path", path)
        check_bool("every_epoch", every_epoch)
        self.path = Path(path)
        self.metric_names = None if metric_names is None else list(metric_names)
        self.every_epoch = every_epoch

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        require_matplotlib()

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.every_epoch:
            self._save(trainer)

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        if trainer.accelerator.is_main_process and trainer.run_history.get_metric_names():
            save_run_history_plot(trainer.run_history, self.path, self.metric_names)
