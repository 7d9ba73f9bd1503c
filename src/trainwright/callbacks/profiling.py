"""Measuring where a run's time goes: per callback and event, and per training step.

Turned on with ``Trainer(..., profile_callbacks=True)`` (or
``CallbackHandler(callbacks, profile=True)``). The handler then times every callback method
it dispatches and every training step, and the trainer prints
[`CallbackProfiler.report`][trainwright.callbacks.profiling.CallbackProfiler.report] at the end of
each ``train()``. Off (the default), nothing is timed and nothing is added to the dispatch table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["CallbackProfiler"]


class CallbackProfiler:
    """Accumulates the time spent in each (callback, event) and in each training step.

    A step lasts from the dispatch of ``on_train_step_start`` to the end of
    ``on_train_step_end``; its time outside callbacks is the loop's own: the trainer's
    bookkeeping plus the hooks it calls (forward, backward, optimizer step).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, profile_callbacks=True)
        trainer.train(dataset, num_epochs=1)  # prints the table at the end
        print(trainer.callback_handler.profiler.report())
        ```
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forgets every measurement."""
        #: (callback name, event) -> [number of calls, total seconds]
        self.timings: dict[tuple[str, str], list[float]] = {}
        self.num_steps = 0
        self.step_seconds = 0.0
        self.step_callback_seconds = 0.0
        self._callback_seconds = 0.0  # total, all events
        self._step_started_at: float | None = None
        self._callback_seconds_at_step_start = 0.0

    def wrap(self, name: str, event: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` timed under ``(name, event)``."""
        entry = self.timings.setdefault((name, event), [0, 0.0])
        perf_counter = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> None:
            started = perf_counter()
            try:
                method(*args, **kwargs)
            finally:
                elapsed = perf_counter() - started
                entry[0] += 1
                entry[1] += elapsed
                self._callback_seconds += elapsed

        timed.__self__ = getattr(method, "__self__", None)  # type: ignore[attr-defined]
        return timed

    def step_started(self, *args: Any, **kwargs: Any) -> None:
        """Dispatched first at ``on_train_step_start``."""
        self._step_started_at = time.perf_counter()
        self._callback_seconds_at_step_start = self._callback_seconds

    def step_ended(self, *args: Any, **kwargs: Any) -> None:
        """Dispatched last at ``on_train_step_end``."""
        if self._step_started_at is None:
            return
        self.num_steps += 1
        self.step_seconds += time.perf_counter() - self._step_started_at
        self.step_callback_seconds += self._callback_seconds - self._callback_seconds_at_step_start
        self._step_started_at = None

    def print_report(self, trainer: Trainer, **kwargs: Any) -> None:
        """Dispatched last at ``on_training_run_end``: prints `report`."""
        trainer.print(self.report())

    def report(self) -> str:
        """The measurements as a table, the most expensive callback methods first."""
        lines = [
            "Callback profile (wall time, this process)",
            f"{'callback':<32} {'event':<28} {'calls':>8} {'total ms':>10} {'mean us':>10}",
        ]
        rows = sorted(self.timings.items(), key=lambda item: -item[1][1])
        for (name, event), (calls, seconds) in rows:
            mean_us = seconds / calls * 1e6 if calls else 0.0
            lines.append(
                f"{name:<32} {event:<28} {int(calls):>8} {seconds * 1e3:>10.3f} {mean_us:>10.1f}"
            )
        if self.num_steps:
            per_step = self.step_seconds / self.num_steps * 1e6
            in_callbacks = self.step_callback_seconds / self.num_steps * 1e6
            lines.append(
                f"training steps: {self.num_steps}, {per_step:.1f} us per step: "
                f"{in_callbacks:.1f} us in callbacks, {per_step - in_callbacks:.1f} us in the "
                "loop (trainer and hooks)"
            )
        return "\n".join(lines)
