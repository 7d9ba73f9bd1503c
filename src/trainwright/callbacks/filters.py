"""Event filters: run a callback's event method only every N updates, every N epochs, every N
seconds, or once.

A filter is declared on a method with a decorator (``@every(n_updates=10)``, ``@once``) or
on an existing callback instance with [`filtered`][trainwright.callbacks.filters.filtered]. The
[`CallbackHandler`][trainwright.callbacks.base.CallbackHandler] puts a small wrapper in its dispatch
table for the filtered methods only, so callbacks without filters cost nothing extra; a filtered
method that is not due costs one short check (a few attribute reads), its method is not
called.

When the interval is a constructor argument of the callback, or only part of an event method is
periodic, ask the filter from inside the method instead:
[`due_check`][trainwright.callbacks.filters.due_check] gives the callback a
[`DueCheck`][trainwright.callbacks.filters.DueCheck] whose ``is_due(trainer)`` answers "is this
filter due now", with the same rules and the same state handling as a decorated method. The
built-in callbacks (``StepBasedEvaluationCallback``, ``ExperimentTrackerCallback``,
``SaveTrainingStateCallback``, ...) count their "every N updates" this way.

The filters are evaluated when the event is dispatched, from
`Trainer.progress`:

- ``every(n_updates=N)``: due when ``progress.num_update_steps`` (optimizer updates so far,
  skipped ones included) is a positive multiple of ``N`` that the method has not yet run at.
  On ``on_train_step_end`` or ``on_after_optimizer_step`` this is the step that performed
  every N-th update, also with gradient accumulation, across epochs and after a resume (the
  count continues from the saved one).
- ``every(n_epochs=N)``: due during epochs ``N - 1``, ``2N - 1``, ... (every N-th epoch,
  counted from 0 by ``progress.epoch``); at a step-level event, at every step of those epochs.
- ``every(seconds=S)``: due when at least ``S`` seconds passed since the method last ran (or
  since the run started).
- ``once``: due the first time only, in each ``train()`` call.

The state of each filter (the last update count, epoch or time it ran at) is per callback
instance and reset at the start of every ``train()`` to the run's starting point (by
[`CallbackHandler.reset_event_filters`][trainwright.callbacks.base.CallbackHandler.reset_event_filters],
after a resume's restore: an every-N filter then continues from the saved update count and does
not fire again at it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from trainwright.callbacks.naming import callback_name
from trainwright.validation import check_positive_int

if TYPE_CHECKING:
    from trainwright.callbacks.base import TrainerCallback
    from trainwright.trainer import Trainer

__all__ = ["DueCheck", "EventFilter", "due_check", "every", "filtered", "once"]

_FILTER_ATTRIBUTE = "_trainwright_event_filter"
_INSTANCE_FILTERS = "_trainwright_event_filters"
_DUE_CHECKS = "_trainwright_due_checks"

Method = TypeVar("Method", bound=Callable[..., Any])
Callback = TypeVar("Callback", bound="TrainerCallback")


class EventFilter:
    """When a filtered event method runs; create one with `every` or use `once`.

    Use it as a decorator on an event method, or give it to
    [`filtered`][trainwright.callbacks.filters.filtered].

    Example:
        ```python
        class Report(TrainerCallback):
            @every(n_updates=100)
            def on_train_step_end(self, trainer, **kwargs):
                trainer.print("updates:", trainer.progress.num_update_steps)
        ```
    """

    def __init__(
        self,
        n_updates: int | None = None,
        n_epochs: int | None = None,
        seconds: float | None = None,
        is_once: bool = False,
    ) -> None:
        given = [value is not None for value in (n_updates, n_epochs, seconds)] + [is_once]
        if sum(given) != 1:
            raise ValueError(
                "An event filter needs exactly one of n_updates, n_epochs or seconds "
                "(or use `once`)."
            )
        for name, value in (("n_updates", n_updates), ("n_epochs", n_epochs)):
            if value is not None:
                check_positive_int(name, value)
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be a positive number; got {seconds!r}.")
        self.n_updates, self.n_epochs, self.seconds = n_updates, n_epochs, seconds
        self.is_once = is_once

    def __call__(self, method: Method) -> Method:
        """Marks ``method`` (an event method of a callback class) with this filter."""
        setattr(method, _FILTER_ATTRIBUTE, self)
        return method

    def __repr__(self) -> str:
        if self.n_updates is not None:
            return f"every {self.n_updates} updates"
        if self.n_epochs is not None:
            return f"every {self.n_epochs} epochs"
        if self.seconds is not None:
            return f"every {self.seconds:g} s"
        return "once"

    def wrap(self, method: Callable[..., Any]) -> _FilteredMethod:
        """A callable that runs ``method`` only when due, with its own filter state."""
        return _FilteredMethod(self, method)


def every(
    n_updates: int | None = None, n_epochs: int | None = None, seconds: float | None = None
) -> EventFilter:
    """A filter that runs an event method every ``n_updates`` optimizer updates, every
    ``n_epochs`` epochs, or every ``seconds`` seconds (give exactly one).

    Example:
        ```python
        class SaveSometimes(TrainerCallback):
            @every(n_epochs=5)
            def on_training_run_epoch_end(self, trainer, **kwargs):
                trainer.save_checkpoint("latest.pt")
        ```
    """
    return EventFilter(n_updates=n_updates, n_epochs=n_epochs, seconds=seconds)


#: A filter that runs an event method the first time only, in each ``train()`` call.
#: Example: ``@once`` above ``def on_train_step_end(self, trainer, **kwargs): ...``.
once = EventFilter(is_once=True)


def filtered(callback: Callback, **event_filters: EventFilter) -> Callback:
    """Filters events of an existing callback instance (the wrapper form of the decorators);
    returns the callback. Give it before the callback is handed to the trainer.

    Example:
        ```python
        progress = filtered(ProgressBarCallback(), on_train_step_end=every(n_updates=10))
        trainer = Trainer(model, loss_func, optimizer, callbacks=[progress])
        ```
    """
    for event, event_filter in event_filters.items():
        if not callable(getattr(callback, event, None)):
            raise ValueError(f"{callback_name(callback)} has no event method {event!r}.")
        if not isinstance(event_filter, EventFilter):
            raise TypeError(f"{event}= needs an EventFilter (every(...) or once).")
    filters = callback.__dict__.setdefault(_INSTANCE_FILTERS, {})
    filters.update(event_filters)
    return callback


def filter_of(callback: TrainerCallback, event: str) -> EventFilter | None:
    """The filter declared for ``callback``'s ``event`` method, if any (instance first)."""
    instance_filters = callback.__dict__.get(_INSTANCE_FILTERS)
    if instance_filters and event in instance_filters:
        return instance_filters[event]
    return getattr(getattr(callback, event, None), _FILTER_ATTRIBUTE, None)


def due_check(callback: TrainerCallback, event_filter: EventFilter) -> DueCheck:
    """A [`DueCheck`][trainwright.callbacks.filters.DueCheck] of ``event_filter`` for
    ``callback``: ask ``is_due(trainer)`` inside an event method, for a filter whose interval
    is only known when the callback is built (or that covers part of a method).

    Create it in the callback's ``__init__``. Its state is the callback's, and the trainer
    resets it with the event filters at the start of every ``train()``
    ([`reset_event_filters`][trainwright.callbacks.base.CallbackHandler.reset_event_filters]),
    so it behaves exactly as the same filter declared on a method with a decorator.

    Example:
        ```python
        class ReportEvery(TrainerCallback):
            def __init__(self, n_updates: int) -> None:
                self._report = due_check(self, every(n_updates=n_updates))

            def on_train_step_end(self, trainer, **kwargs):
                if self._report.is_due(trainer):
                    trainer.print("updates:", trainer.progress.num_update_steps)
        ```
    """
    if not isinstance(event_filter, EventFilter):
        raise TypeError(
            f"due_check needs an EventFilter (every(...) or once); got {event_filter!r}."
        )
    check = DueCheck(event_filter)
    callback.__dict__.setdefault(_DUE_CHECKS, []).append(check)
    return check


def due_checks_of(callback: TrainerCallback) -> list[DueCheck]:
    """The checks [`due_check`][trainwright.callbacks.filters.due_check] made for ``callback``."""
    return callback.__dict__.get(_DUE_CHECKS, [])


class DueCheck:
    """Whether an event filter is due now, with the filter's state (the last update count or
    time it was due at); made by [`due_check`][trainwright.callbacks.filters.due_check], and used
    by every filtered event method too.

    Attributes:
        event_filter: the filter checked.
    """

    def __init__(self, event_filter: EventFilter) -> None:
        self.event_filter = event_filter
        self._last_update_count = 0
        self._last_time = time.monotonic()
        self._has_run = False
        # Choose the check once, so the dispatch-time test is a single short method.
        if event_filter.n_updates is not None:
            self._is_due = self._is_update_due
        elif event_filter.n_epochs is not None:
            self._is_due = self._is_epoch_due
        elif event_filter.seconds is not None:
            self._is_due = self._is_time_due
        else:
            self._is_due = self._is_first

    def is_due(self, trainer: Trainer) -> bool:
        """Whether the filter is due at ``trainer``'s current position. A ``True`` counts as
        a run at this point: the same update count (or, for ``once``, any later call) is not
        due again until the next ``train()``."""
        return self._is_due(trainer)

    def reset(self, trainer: Trainer) -> None:
        """Starts counting from ``trainer``'s current position (start of a ``train()``)."""
        self._last_update_count = trainer.progress.num_update_steps
        self._last_time = time.monotonic()
        self._has_run = False

    def _is_update_due(self, trainer: Trainer) -> bool:
        count = trainer.progress.num_update_steps
        if count == self._last_update_count or count % self.event_filter.n_updates:
            return False
        self._last_update_count = count
        return True

    def _is_epoch_due(self, trainer: Trainer) -> bool:
        return (trainer.progress.epoch + 1) % self.event_filter.n_epochs == 0

    def _is_time_due(self, trainer: Trainer) -> bool:
        now = time.monotonic()
        if now - self._last_time < self.event_filter.seconds:
            return False
        self._last_time = now
        return True

    def _is_first(self, trainer: Trainer) -> bool:
        if self._has_run:
            return False
        self._has_run = True
        return True


class _FilteredMethod:
    """An event method with its filter's `DueCheck`; called by the dispatcher."""

    def __init__(self, event_filter: EventFilter, method: Callable[..., Any]) -> None:
        self.event_filter = event_filter
        self.method = method
        self.__self__ = getattr(method, "__self__", None)  # the callback, for error notes
        self.check = DueCheck(event_filter)
        self._is_due = self.check._is_due  # skip a call level on the dispatch path

    def reset(self, trainer: Trainer) -> None:
        """Starts counting from ``trainer``'s current position (start of a ``train()``)."""
        self.check.reset(trainer)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self._is_due(args[0] if args else kwargs["trainer"]):
            self.method(*args, **kwargs)
