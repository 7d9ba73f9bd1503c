"""Watching a metric across epochs: the logic shared by early stopping and best-model saving."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.base import TrainerCallback
from trainwright.callbacks.naming import callback_name
from trainwright.tracking import MetricNotFoundError
from trainwright.validation import check_bool, check_number, check_type

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "MetricMonitor",
    "MonitorCallback",
    "check_metric_will_be_recorded",
    "expected_metric_names",
    "read_watched_metric",
]


class MetricMonitor:
    """Tracks the best value of one metric.

    Args:
        watch_metric: the run-history metric to watch.
        greater_is_better: whether higher values are better.
        min_delta: how much better than the best a value must be to count as an
            improvement (an absolute amount, in the metric's units).

    Example:
        ```python
        monitor = MetricMonitor("eval_loss_epoch", greater_is_better=False, min_delta=0.01)
        monitor.update(0.50, epoch=1)  # True: the first value is always an improvement
        monitor.update(0.495, epoch=2)  # False: better by less than 0.01
        ```
    """

    def __init__(self, watch_metric: str, greater_is_better: bool, min_delta: float = 0.0) -> None:
        check_number("min_delta", min_delta, minimum=0)
        self.watch_metric = watch_metric
        self.greater_is_better = greater_is_better
        self.min_delta = min_delta
        self.reset()

    def reset(self) -> None:
        """Forgets the best value."""
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta`` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        if self.greater_is_better:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Records ``value`` as the best if it is an improvement; returns whether it was."""
        improved = self.is_improvement(value)
        if improved:
            self.best_value, self.best_epoch = value, epoch
        return improved

    def state_dict(self) -> dict[str, Any]:
        """The best value and epoch, for saving with a training state."""
        return {"best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]


def expected_metric_names(trainer: Trainer) -> set[str]:
    """Metrics known to be recorded in the current run: the trainer's losses, those already
    in the run history, and those declared in ``writes_metrics`` by the callbacks and by the
    trainer (a `Trainer` subclass whose hooks record metrics)."""
    names = {"train_loss_epoch"} | trainer.run_history.get_metric_names()
    if trainer.eval_dataloader is not None:
        names.add("eval_loss_epoch")
    names.update(trainer.writes_metrics)
    for callback in trainer.callback_handler.callbacks:
        names.update(callback.writes_metrics)
    return names


def check_metric_will_be_recorded(trainer: Trainer, metric_name: str, reader: str) -> None:
    """Checks, when a run starts, that ``metric_name`` will be recorded for ``reader``
    (e.g. ``"EarlyStoppingCallback"``, ``"scheduler_metric"``) to read at epoch end.

    A metric in `expected_metric_names` passes. Otherwise, if nothing but trainwright's own
    code runs (built-in callbacks and the `Trainer` class itself), nothing can record it:
    ``ValueError``. If a callback of yours or the hooks of your `Trainer` subclass might
    record it, a warning says where to declare it, and `read_watched_metric` checks it when
    first read, at the end of the first epoch.

    Raises:
        ValueError: if nothing can record the metric.
    """
    expected = expected_metric_names(trainer)
    if metric_name in expected:
        return
    message = (
        f"{reader} reads {metric_name!r}, but nothing is known to record it in this run. "
        f"Metrics that will be recorded: {', '.join(sorted(expected))}."
    )
    writers = _possible_undeclared_writers(trainer)
    if not writers:
        raise ValueError(
            f"{message} Watch one of those, pass an eval_dataset to record eval_loss_epoch, "
            "or add a callback (or Trainer hook) that records the metric."
        )
    warnings.warn(
        f"{message} It may be recorded by {', '.join(writers)}: declare "
        f"writes_metrics = ({metric_name!r},) on the callback or Trainer subclass that records "
        "it. It is checked when first read, at the end of the first epoch.",
        stacklevel=3,
    )


def read_watched_metric(trainer: Trainer, metric_name: str, reader: str) -> Any:
    """The latest value of ``metric_name``, read at an epoch's end for ``reader``.

    Raises:
        MetricNotFoundError: if the metric was never recorded, naming the metrics that were
            and how to record or declare it.
    """
    history = trainer.run_history
    if metric_name not in history.get_metric_names():
        recorded = ", ".join(sorted(history.get_metric_names())) or "none"
        raise MetricNotFoundError(
            f"{reader} reads {metric_name!r}, but nothing recorded it by the end of epoch "
            f"{history.current_epoch}. Metrics recorded: {recorded}. Record it with "
            f"trainer.run_history.update_metric({metric_name!r}, value) in a callback or a "
            "Trainer hook that runs before the epoch ends (e.g. eval_epoch_end), and declare "
            f"writes_metrics = ({metric_name!r},) there; or read one of those."
        )
    return history.get_latest_metric(metric_name)


def _is_builtin(obj: Any) -> bool:
    return type(obj).__module__.startswith("trainwright.")


def _possible_undeclared_writers(trainer: Trainer) -> list[str]:
    """Code of yours that may record metrics without declaring them: your callbacks, and
    your `Trainer` subclass (its hooks)."""
    writers = [callback_name(c) for c in trainer.callback_handler.callbacks if not _is_builtin(c)]
    if not _is_builtin(trainer):
        writers.append(f"the hooks of {type(trainer).__name__}")
    return writers


class MonitorCallback(TrainerCallback):
    """Base for callbacks that act on a watched metric at the end of every epoch.

    At the start of training it checks that the watched metric will be recorded (see
    `check_metric_will_be_recorded`): if nothing could record it (only trainwright's own
    callbacks and `Trainer` run), it raises ``ValueError`` naming the metrics that will be;
    if a callback of yours or the hooks of your `Trainer` subclass might, it warns instead
    (declare ``writes_metrics = ("my_metric",)`` on that callback or Trainer subclass to
    silence it) and the metric is checked when first read, at the end of the first epoch.

    Args:
        watch_metric: the metric to watch.
        greater_is_better: whether higher values are better.
        min_delta: the smallest change that counts as an improvement.
        reset_on_train: forget the best value at the start of every ``train()``.
    """

    def __init__(
        self,
        watch_metric: str,
        greater_is_better: bool,
        min_delta: float = 0.0,
        reset_on_train: bool = True,
    ) -> None:
        check_type("watch_metric", watch_metric, str, "a metric name (str)")
        check_bool("greater_is_better", greater_is_better)
        check_bool("reset_on_train", reset_on_train)
        self.monitor = MetricMonitor(watch_metric, greater_is_better, min_delta)
        self.reset_on_train = reset_on_train

    @property
    def watch_metric(self) -> str:
        """The metric this callback watches."""
        return self.monitor.watch_metric

    @property
    def reads_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """The watched metric: a callback that writes it must run before this one."""
        return (self.monitor.watch_metric,)

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.reset_on_train:
            self.monitor.reset()
        check_metric_will_be_recorded(trainer, self.watch_metric, callback_name(self))

    def read_metric(self, trainer: Trainer) -> float:
        """The watched metric's latest value (raises, listing the recorded metrics, if it
        was never recorded)."""
        return float(read_watched_metric(trainer, self.watch_metric, callback_name(self)))

    def state_dict(self) -> dict[str, Any]:
        """The monitor's state."""
        return {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.monitor.load_state_dict(state["monitor"])
