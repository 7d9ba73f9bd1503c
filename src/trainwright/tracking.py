"""Run history: the metrics recorded during training and evaluation, per epoch."""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any

__all__ = ["InMemoryRunHistory", "MetricNotFoundError", "RunHistory", "format_metric_value"]


def format_metric_value(value: Any, significant_digits: int = 4) -> str:
    """A metric value as trainwright prints it: integers as they are, other numbers (a
    float, a one-element tensor) to ``significant_digits`` significant digits, in plain
    notation from 1e-4 up to 1e15 and in exponent notation beyond.

    Args:
        value: an integer, a float or a one-element tensor.
        significant_digits: how many significant digits to show.

    Example:
        ```python
        from trainwright.tracking import format_metric_value

        assert format_metric_value(19469.574) == "19470"
        assert format_metric_value(0.0969366) == "0.09694"
        assert format_metric_value(1e-06) == "1e-06"
        assert format_metric_value(12) == "12"
        ```
    """
    if isinstance(value, numbers.Integral):
        return str(value)
    number = float(value)
    text = f"{number:.{significant_digits}g}"
    if "e+" in text and abs(number) < 1e15:
        text = f"{float(text):.0f}"  # 1.947e+04 -> 19470: as many digits, no exponent
    return text


class MetricNotFoundError(KeyError, ValueError):
    """Raised when asking for a metric that was never recorded; lists the ones that were.

    It is a ``KeyError`` (a metric name not found) and a ``ValueError``, which
    pytorch-accelerated raises for it, so ``except`` clauses written for either catch it.
    """

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


class RunHistory(ABC):
    """Records metric values over a run. Subclass it to keep metrics somewhere else.

    The trainer records ``train_loss_epoch`` and ``eval_loss_epoch`` once per epoch, and
    ``evaluation_loss`` in [`evaluate`][trainwright.trainer.Trainer.evaluate]; callbacks record
    their own with [`update_metric`][trainwright.tracking.RunHistory.update_metric]. Reading a
    metric never creates it.

    Its epoch count and the trainer's: `current_epoch` numbers the epoch being run from 1 and
    keeps counting across ``train()`` calls that keep the history (``reset_run_history=False``);
    ``trainer.progress.epoch`` is the same epoch's index within the current ``train()`` call,
    from 0. During an epoch, ``current_epoch == progress.epoch + 1 + E``, where ``E`` is the
    number of epochs of earlier ``train()`` calls kept in the history (0 with a fresh history,
    the default); both move on when the epoch ends, after ``on_training_run_epoch_end``, and
    both continue after a resume. Messages, logged epoch numbers and the ``"epoch"`` saved in
    checkpoints use `current_epoch`; positions within the run (the last epoch of a
    ``train()``, the epochs left, ``every(n_epochs=N)``) use ``progress.epoch``.
    """

    @abstractmethod
    def get_metric_names(self) -> set[str]:
        """The names of every metric recorded so far."""

    @abstractmethod
    def get_metric_values(self, metric_name: str) -> list[Any]:
        """Every value recorded for ``metric_name``, oldest first (a copy).

        Raises:
            MetricNotFoundError: if the metric was never recorded.
        """

    @abstractmethod
    def get_latest_metric(self, metric_name: str) -> Any:
        """The most recent value recorded for ``metric_name``.

        Raises:
            MetricNotFoundError: if the metric was never recorded.
        """

    @abstractmethod
    def update_metric(self, metric_name: str, metric_value: Any) -> None:
        """Records ``metric_value`` for ``metric_name`` (prefixed by the metric-name prefix)."""

    @abstractmethod
    def delete_metric(self, metric_name: str) -> None:
        """Removes ``metric_name`` and all its values.

        Raises:
            MetricNotFoundError: if the metric was never recorded.
        """

    @property
    @abstractmethod
    def current_epoch(self) -> int:
        """The epoch being run, counting from 1; it keeps counting across ``train()`` calls
        unless the history is reset (its relation to ``trainer.progress.epoch`` is in the
        `RunHistory` docstring)."""

    @abstractmethod
    def increment_epoch(self) -> None:
        """Moves ``current_epoch`` on by one; the trainer calls it at the end of every epoch."""

    @abstractmethod
    def reset(self) -> None:
        """Forgets every metric and sets ``current_epoch`` back to 1."""

    @property
    @abstractmethod
    def metric_name_prefix(self) -> str:
        """A prefix added to every metric name recorded with `update_metric`."""

    @abstractmethod
    def set_metric_name_prefix(self, prefix: str = "") -> None:
        """Sets the prefix added to the names of metrics recorded from now on."""

    def plot(self, metric_names: Any = None) -> Any:
        """A matplotlib figure of every numeric metric per epoch, the losses on shared axes
        (see [`trainwright.plotting.plot_run_history`][trainwright.plotting.plot_run_history]; needs
        matplotlib).

        Example:
            ```python
            trainer.run_history.plot().savefig("history.png")
            ```
        """
        from trainwright.plotting import plot_run_history  # matplotlib is optional

        return plot_run_history(self, metric_names)

    @contextmanager
    def metric_name_prefix_as(self, prefix: str):
        """Records metrics under ``prefix`` inside the ``with`` block, e.g. to evaluate an
        EMA copy of the model as ``ema_model_eval_loss_epoch``.

        Example:
            ```python
            with trainer.run_history.metric_name_prefix_as("ema_model_"):
                trainer.run_history.update_metric("eval_loss_epoch", 0.25)
            ```
        """
        previous = self.metric_name_prefix
        self.set_metric_name_prefix(prefix)
        try:
            yield self
        finally:
            self.set_metric_name_prefix(previous)

    def state_dict(self) -> dict[str, Any]:
        """The history as plain data, for saving with a training state."""
        return {
            "metrics": {name: self.get_metric_values(name) for name in self.get_metric_names()},
            "current_epoch": self.current_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replaces the history with one saved by `state_dict`."""
        self.reset()
        with self.metric_name_prefix_as(""):
            for name, values in state["metrics"].items():
                for value in values:
                    self.update_metric(name, value)
        for _ in range(int(state["current_epoch"]) - 1):
            self.increment_epoch()


class InMemoryRunHistory(RunHistory):
    """A `RunHistory` that keeps every metric in a dictionary of lists.

    Example:
        ```python
        history = InMemoryRunHistory()
        history.update_metric("accuracy", 0.9)
        history.get_latest_metric("accuracy")  # 0.9
        ```
    """

    def __init__(self) -> None:
        self._metrics: dict[str, list[Any]] = {}
        self._current_epoch = 1
        self._prefix = ""

    def get_metric_names(self) -> set[str]:
        return set(self._metrics)

    def get_metric_values(self, metric_name: str) -> list[Any]:
        return list(self._values(metric_name))

    def get_latest_metric(self, metric_name: str) -> Any:
        return self._values(metric_name)[-1]

    def update_metric(self, metric_name: str, metric_value: Any) -> None:
        self._metrics.setdefault(self._prefix + metric_name, []).append(metric_value)

    def delete_metric(self, metric_name: str) -> None:
        self._values(metric_name)
        del self._metrics[metric_name]

    @property
    def current_epoch(self) -> int:
        return self._current_epoch

    def increment_epoch(self) -> None:
        self._current_epoch += 1

    def reset(self) -> None:
        self._metrics = {}
        self._current_epoch = 1

    @property
    def metric_name_prefix(self) -> str:
        return self._prefix

    def set_metric_name_prefix(self, prefix: str = "") -> None:
        self._prefix = prefix

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a history saved with `state_dict`."""
        self._metrics = {name: list(values) for name, values in state["metrics"].items()}
        self._current_epoch = int(state["current_epoch"])

    def _values(self, metric_name: str) -> list[Any]:
        try:
            return self._metrics[metric_name]
        except KeyError:
            recorded = ", ".join(sorted(self._metrics)) or "none yet"
            raise MetricNotFoundError(
                f"No metric named {metric_name!r} has been recorded. Recorded metrics: {recorded}."
            ) from None
