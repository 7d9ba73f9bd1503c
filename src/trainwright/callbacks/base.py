"""The callback protocol: the event registry, the no-op base class and the dispatcher.

Every event that the [`Trainer`][trainwright.trainer.Trainer] fires is listed once, in
[`EVENTS`][trainwright.callbacks.base.EVENTS], and has one documented no-op method on
[`TrainerCallback`][trainwright.callbacks.base.TrainerCallback]. A test keeps the two in agreement.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.filters import due_checks_of, filter_of
from trainwright.callbacks.naming import callback_name
from trainwright.callbacks.ordering import (
    ALL_METRICS,
    CallbackOrderError,
    resolve_callback_order,
)
from trainwright.callbacks.profiling import CallbackProfiler

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "AGREED_AT",
    "ALL_METRICS",
    "EVENTS",
    "EVENTS_OUTSIDE_AGREEMENT",
    "PEER_EVENT_NAMES",
    "CallbackHandler",
    "CallbackOrderError",
    "CallbackSetupError",
    "StopTrainingError",
    "TrainerCallback",
    "TrainingInterrupted",
]

#: Every event fired by the trainer, in the order they first occur in a run.
EVENTS: tuple[str, ...] = (
    "on_init_end",
    "on_training_run_start",
    "on_train_epoch_start",
    "on_train_step_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_after_optimizer_step",
    "on_train_step_end",
    "on_train_epoch_end",
    "on_eval_epoch_start",
    "on_eval_step_start",
    "on_eval_step_end",
    "on_eval_epoch_end",
    "on_training_run_epoch_end",
    "on_stop_training_error",
    "on_training_interrupted",
    "on_exception",
    "on_training_run_end",
    "on_evaluation_run_start",
    "on_evaluation_run_end",
    "on_predict_run_start",
    "on_predict_step_start",
    "on_predict_step_end",
    "on_predict_run_end",
)

#: The agreement points of a training run, declared once. For every event fired inside a
#: training run (from ``on_training_run_start`` to the epochs' end), the event after which the
#: processes agree on what was asked in it (a stop, ``trainer.request_end_epoch()``,
#: ``trainer.request_evaluation()``...): every process then acts at that same point (see
#: [`RunControl`][trainwright.run_control.RunControl]). An event that maps to itself is an
#: agreement point: the loop agrees right after it (``RunControl.agree`` refuses any other
#: event), before anything else runs; ``on_train_step_end`` is followed by the step's vote
#: (``RunControl.end_of_step``, which exchanges requests every ``Trainer.vote_interval`` steps),
#: and the epoch's last step by a blocking agreement (``RunControl.end_of_epoch_steps``). An event
#: added to `EVENTS` must be declared here or in `EVENTS_OUTSIDE_AGREEMENT`, and an epoch-level
#: event must be an agreement point itself, or a stop requested in it on one process is not
#: agreed (tests/test_run_control.py runs a real Trainer against this table).
AGREED_AT: dict[str, str] = {
    "on_training_run_start": "on_training_run_start",
    "on_train_epoch_start": "on_train_step_end",
    "on_train_step_start": "on_train_step_end",
    "on_before_backward": "on_train_step_end",
    "on_after_backward": "on_train_step_end",
    "on_before_optimizer_step": "on_train_step_end",
    "on_after_optimizer_step": "on_train_step_end",
    "on_train_step_end": "on_train_step_end",
    "on_train_epoch_end": "on_train_epoch_end",
    "on_eval_epoch_start": "on_eval_epoch_end",
    "on_eval_step_start": "on_eval_epoch_end",
    "on_eval_step_end": "on_eval_epoch_end",
    "on_eval_epoch_end": "on_eval_epoch_end",
    "on_training_run_epoch_end": "on_training_run_epoch_end",
}

#: The events fired outside a training run's agreed part: before it, at its end (after the
#: processes agreed to stop, or finished) and in ``evaluate()`` and ``predict()``, which run on
#: every process alike. A ``StopTrainingError`` raised in them propagates at once.
EVENTS_OUTSIDE_AGREEMENT: frozenset[str] = frozenset(
    {
        "on_init_end",
        "on_stop_training_error",
        "on_training_interrupted",
        "on_exception",
        "on_training_run_end",
        "on_evaluation_run_start",
        "on_evaluation_run_end",
        "on_predict_run_start",
        "on_predict_step_start",
        "on_predict_step_end",
        "on_predict_run_end",
    }
)


#: Event names of other training libraries (Keras, PyTorch Lightning, the Hugging Face
#: Trainer), each with the event that fires at that moment here. A callback defining one of
#: them is told which event to rename it to (see `CallbackHandler`).
PEER_EVENT_NAMES: dict[str, str] = {
    "on_train_begin": "on_training_run_start",
    "on_train_start": "on_training_run_start",
    "on_fit_start": "on_training_run_start",
    "on_train_end": "on_training_run_end",
    "on_fit_end": "on_training_run_end",
    "on_epoch_begin": "on_train_epoch_start",
    "on_epoch_start": "on_train_epoch_start",
    "on_epoch_end": "on_train_epoch_end",
    "on_batch_begin": "on_train_step_start",
    "on_batch_start": "on_train_step_start",
    "on_batch_end": "on_train_step_end",
    "on_step_begin": "on_train_step_start",
    "on_step_end": "on_train_step_end",
    "on_validation_epoch_start": "on_eval_epoch_start",
    "on_validation_epoch_end": "on_eval_epoch_end",
    "on_validation_batch_start": "on_eval_step_start",
    "on_validation_batch_end": "on_eval_step_end",
    "on_evaluate": "on_eval_epoch_end",
    "on_predict_begin": "on_predict_run_start",
    "on_predict_start": "on_predict_run_start",
    "on_predict_end": "on_predict_run_end",
}


class StopTrainingError(Exception):
    """Raise from any hook or callback to end the training run cleanly.

    The trainer catches it, fires ``on_stop_training_error`` with the error, then finishes
    the run as usual (``training_run_end`` and ``on_training_run_end``). The library never
    calls ``sys.exit``: ``train()`` simply returns.

    In a multi-process run the processes agree on stopping, so they all stop at the same
    point even when only one raises: raised during a training epoch (its start or a step),
    the run stops at the end of the *next* step (the processes exchange requests without
    waiting for each other, one step behind); raised during an evaluation epoch, at its end;
    raised in any other event, right after that event. Until then the process that raised
    carries on in step with the others (the event's other callbacks still run), and every
    process receives ``on_stop_training_error`` with the requesting process's message.

    Example:
        ```python
        class StopAfterTwoEpochs(TrainerCallback):
            def on_training_run_epoch_end(self, trainer, **kwargs):
                if trainer.run_history.current_epoch >= 2:  # the epoch just finished
                    raise StopTrainingError("two epochs are enough")
        ```
    """


class TrainingInterrupted(StopTrainingError):
    """The run was interrupted by a signal (SIGTERM, or SIGINT / Ctrl-C).

    While ``train()`` runs, the trainer catches SIGTERM and SIGINT: it finishes the current
    training step, fires ``on_training_interrupted(signal_name=...)`` (where
    [`SaveTrainingStateCallback`][trainwright.callbacks.saving.SaveTrainingStateCallback] saves a
    training state), runs ``training_run_end`` / ``on_training_run_end`` and returns normally, with
    ``trainer.interrupt_signal`` naming the signal. A second Ctrl-C raises
    ``KeyboardInterrupt`` at once. With several processes, a signal received by any of them
    stops all of them after the same step.
    """

    def __init__(self, signal_name: str, message: str | None = None) -> None:
        super().__init__(message or f"Training interrupted by {signal_name}")
        self.signal_name = signal_name

    def __reduce__(self) -> tuple:  # keep the signal name when sent to other processes
        return (type(self), (self.signal_name, *self.args))


class CallbackSetupError(RuntimeError):
    """A callback could not set itself up for the run (e.g. an experiment tracker that
    cannot start): the run would go on without what the callback is for (nothing would be
    logged), so it fails instead, before training. It propagates whatever the callback's
    ``error_policy``; a callback raises it only when the user did not choose to carry on
    without it.

    Example:
        ```python
        class UploadResults(TrainerCallback):
            def on_training_run_start(self, trainer, **kwargs):
                if not os.access("results", os.W_OK):
                    raise CallbackSetupError("results/ is not writable: nothing would be saved")
        ```
    """


def _no_op(method: Callable) -> Callable:
    """Marks a `TrainerCallback` method as the default no-op, so dispatch can skip it."""
    method._is_trainwright_no_op = True
    return method


class TrainerCallback:
    """Base class for callbacks: override the events you need; every other one is free.

    A callback receives the trainer as its first positional argument and the keywords shown
    below; every event method must accept ``**kwargs`` so that new keywords can be added
    without breaking it. Callbacks run **after** the trainer hook of the same moment (the hook
    ``train_epoch_end()`` runs, then every ``on_train_epoch_end``), so a hook can update state
    that callbacks then read. Callbacks run in ascending ``order`` (default 0); callbacks with
    equal ``order`` keep the order they were given in.

    Events fire as follows:

    ```text
    Trainer.__init__                                   -> on_init_end
    train():
      build dataloaders, prepare with Accelerate, build run_config, create scheduler
      training_run_start()                             -> on_training_run_start
      for each epoch:
        train_epoch_start()  (model.train())           -> on_train_epoch_start
        for step, batch in train dataloader:
                                                       -> on_train_step_start(batch, step)
          batch_output = calculate_train_batch_loss(batch)
                                            -> on_before_backward(batch, batch_output, step)
          backward_step(loss)
                                            -> on_after_backward(batch, batch_output, step)
          if this micro-step completes an accumulation window:
            clip gradients (if asked)
                                                       -> on_before_optimizer_step(step)
            optimizer_step(); scheduler_step()
                                                       -> on_after_optimizer_step(step)
            optimizer_zero_grad()
                                            -> on_train_step_end(batch, batch_output, step)
        train_epoch_end(); record train_loss_epoch     -> on_train_epoch_end
        if eval dataset:
          eval_epoch_start() (model.eval())            -> on_eval_epoch_start
          for step, batch in eval dataloader:          -> on_eval_step_start(batch, step)
            batch_output = calculate_eval_batch_loss(batch)
                                            -> on_eval_step_end(batch, batch_output, step)
          eval_epoch_end(); record eval_loss_epoch     -> on_eval_epoch_end
        training_run_epoch_end()                       -> on_training_run_epoch_end
        scheduler_epoch_step() (schedulers stepped per epoch, ReduceLROnPlateau, timm)
      StopTrainingError raised anywhere in the run     -> on_stop_training_error(error)
      SIGTERM / SIGINT: after the current step  -> on_training_interrupted(signal_name)
      training_run_end()                               -> on_training_run_end
      any other exception (KeyboardInterrupt too)      -> on_exception(exception), re-raised
    evaluate():
      evaluation_run_start()                           -> on_evaluation_run_start
      one eval epoch as above, metric evaluation_loss
      evaluation_run_end()                             -> on_evaluation_run_end
      any exception                                    -> on_exception(exception), re-raised
    predict():
                                                       -> on_predict_run_start
      for step, batch in predict dataloader:           -> on_predict_step_start(batch, step)
        outputs = predict_batch(batch); gather them
                                               -> on_predict_step_end(batch, outputs, step)
      join every batch's outputs              -> on_predict_run_end(predictions)
      any exception                                    -> on_exception(exception), re-raised
    ```

    ``step`` is the index of the batch within the current epoch. ``on_train_step_end`` fires
    once the step is complete (after the optimizer update when there is one), so it is the
    safe place to run an evaluation from a callback.

    Callbacks may also define methods for custom events, fired by an overridden hook with
    ``trainer.callback_handler.call_event("my_event", ...)``; only callbacks that define the
    method receive it.

    Where a callback runs among the others is declared with `order`,
    `run_after` / `run_before` and the metrics it writes and reads (see
    [`trainwright.callbacks.ordering`][trainwright.callbacks.ordering]);
    ``trainer.callback_handler.describe()`` prints the resulting plan. Event methods can be filtered
    to run every N updates, epochs or seconds, or once
    ([`trainwright.callbacks.filters`][trainwright.callbacks.filters]). Callbacks control the run
    through the
    trainer: raise [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] or call
        ``trainer.request_stop()``,
    ``trainer.request_end_epoch()``, ``trainer.request_skip_update()``,
    ``trainer.request_evaluation()`` or ``trainer.request_save()``; every process takes the
    same decision at the same step.

    Example:
        ```python
        class CountUpdates(TrainerCallback):
            def __init__(self):
                self.num_updates = 0

            def on_after_optimizer_step(self, trainer, **kwargs):
                self.num_updates += 1
        ```
    """

    #: Position among the trainer's callbacks: lower runs first; ties keep the given order.
    #: A preference: `run_after`, `run_before` and metric declarations win.
    order: int = 0

    #: Callbacks this one must run after: classes (instances of them and their subclasses)
    #: or class names. Names of callbacks that are not present are ignored.
    run_after: tuple[type | str, ...] = ()

    #: Callbacks this one must run before, given as for `run_after`.
    run_before: tuple[type | str, ...] = ()

    #: Names of the metrics this callback records in the run history. Callbacks that read
    #: them run after this one (see `reads_metrics`); monitoring callbacks use it to
    #: tell, at the start of a run, whether a watched metric will ever be recorded.
    writes_metrics: tuple[str, ...] = ()

    #: Names of the metrics this callback reads from the run history. A callback that reads
    #: a metric another callback writes must run after it: the handler raises an error
    #: otherwise (or reorders, with ``reorder_metric_readers=True``). `ALL_METRICS`
    #: (``"*"``) reads every metric and places the callback after every metric writer.
    reads_metrics: tuple[str, ...] = ()

    #: What an exception raised by this callback does: ``"raise"`` (propagate it, the
    #: default) or ``"warn"`` (warn once, naming the callback and the event, and disable
    #: the callback for the rest of the handler's life; for loggers and other callbacks
    #: the run does not depend on). `StopTrainingError` and `CallbackSetupError`
    #: always propagate.
    error_policy: str = "raise"

    #: Set by callbacks that may call ``trainer.request_skip_update()`` on some processes
    #: only: in a multi-process run the processes then agree on every update whether to
    #: skip it (one small blocking all-reduce per optimizer update, only when declared).
    may_skip_updates: bool = False

    def state_dict(self) -> dict[str, Any]:
        """The callback's state to keep in a training state (plain values and tensors);
        empty by default. Override it, with
        [`load_state_dict`][trainwright.callbacks.base.TrainerCallback.load_state_dict], for
        callbacks whose counters or best values must survive a resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned; called after
        ``on_training_run_start`` when a run resumes."""

    @_no_op
    def on_init_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called at the end of `Trainer.__init__`."""

    @_no_op
    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.training_run_start`, once dataloaders, the prepared
        model and optimizer, ``run_config`` and the scheduler exist."""

    @_no_op
    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.train_epoch_start` (the model is in train mode)."""

    @_no_op
    def on_train_step_start(self, trainer: Trainer, batch: Any, step: int, **kwargs: Any) -> None:
        """Called before the loss of training batch ``step`` is calculated."""

    @_no_op
    def on_before_backward(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        """Called after the batch loss is calculated and before the backward pass."""

    @_no_op
    def on_after_backward(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        """Called after the backward pass; gradients of this micro-step are accumulated."""

    @_no_op
    def on_before_optimizer_step(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        """Called on update steps only, after gradient clipping, before the optimizer step."""

    @_no_op
    def on_after_optimizer_step(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        """Called on update steps only, after the optimizer and scheduler steps and before the
        gradients are zeroed."""

    @_no_op
    def on_train_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        """Called when training batch ``step`` is complete, after any optimizer update."""

    @_no_op
    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.train_epoch_end`; ``train_loss_epoch`` is recorded."""

    @_no_op
    def on_eval_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.eval_epoch_start` (the model is in eval mode)."""

    @_no_op
    def on_eval_step_start(self, trainer: Trainer, batch: Any, step: int, **kwargs: Any) -> None:
        """Called before the loss of evaluation batch ``step`` is calculated."""

    @_no_op
    def on_eval_step_end(
        self, trainer: Trainer, batch: Any, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        """Called after the loss of evaluation batch ``step`` is calculated."""

    @_no_op
    def on_eval_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.eval_epoch_end`; the epoch's evaluation loss
        (``eval_loss_epoch``, or ``evaluation_loss`` in ``evaluate()``) is recorded."""

    @_no_op
    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called once per epoch after training and evaluation; the place to act on the
        epoch's metrics (early stopping, best-model saving)."""

    @_no_op
    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        """Called when a `StopTrainingError` ends the run, before ``training_run_end``."""

    @_no_op
    def on_training_interrupted(self, trainer: Trainer, signal_name: str, **kwargs: Any) -> None:
        """Called when SIGTERM or SIGINT interrupted the run, once the current step is
        complete and before ``training_run_end``; the place to save a training state."""

    @_no_op
    def on_exception(self, trainer: Trainer, exception: BaseException, **kwargs: Any) -> None:
        """Called when any exception other than `StopTrainingError` (errors,
        ``KeyboardInterrupt``) escapes ``train()`` or ``evaluate()``, once, before it
        propagates; the place to release resources (close files, finish a tracker run).
        An exception raised here is reported as a warning and does not replace the
        original one. ``on_training_run_end`` does not fire after it."""

    @_no_op
    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called after `Trainer.training_run_end`, also when the run stopped early."""

    @_no_op
    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called at the start of `Trainer.evaluate`, once its dataloader exists."""

    @_no_op
    def on_evaluation_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called at the end of `Trainer.evaluate`; ``evaluation_loss`` is recorded."""

    @_no_op
    def on_predict_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Called at the start of `Trainer.predict`, once its dataloader exists and the model
        is in eval mode."""

    @_no_op
    def on_predict_step_start(self, trainer: Trainer, batch: Any, step: int, **kwargs: Any) -> None:
        """Called before `Trainer.predict_batch` runs on ``batch``, the ``step``-th batch."""

    @_no_op
    def on_predict_step_end(
        self, trainer: Trainer, batch: Any, outputs: Any, step: int, **kwargs: Any
    ) -> None:
        """Called after `Trainer.predict_batch`; ``outputs`` are this process's outputs of
        the batch (before they are gathered across processes)."""

    @_no_op
    def on_predict_run_end(self, trainer: Trainer, predictions: Any, **kwargs: Any) -> None:
        """Called at the end of `Trainer.predict` with the outputs over the whole dataset
        (gathered across processes, in dataset order)."""


CallbackLike = TrainerCallback | type[TrainerCallback]


def _annotate(error: BaseException, note: str) -> None:
    """Attaches ``note`` to ``error``; Python 3.11+ prints notes under the traceback."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # Python 3.10: keep the note where 3.11's machinery would look for it.
        error.__notes__ = [*getattr(error, "__notes__", []), note]


class CallbackHandler:
    """Runs the trainer's callbacks: one dispatch table, built when the callbacks change.

    For every event, the table holds the bound methods of the callbacks that actually
    override it, in execution order: by ``order`` and then the order the callbacks were
    given in, wherever the callbacks' ``run_after`` / ``run_before`` and metric declarations
    allow (see [`trainwright.callbacks.ordering`][trainwright.callbacks.ordering]; contradictions
    and metrics read before they are written are errors raised here). ``call_event`` is one
    dictionary lookup and a loop, so an event no callback overrides costs next to nothing. Custom
    events (any name not in [`EVENTS`][trainwright.callbacks.base.EVENTS]) reach the callbacks that
    define a method of that name and skip the rest. Methods with an event filter
    ([`trainwright.callbacks.filters`][trainwright.callbacks.filters]) enter the table wrapped in
    their filter; the others are called directly.
    [`describe`][trainwright.callbacks.base.CallbackHandler.describe] prints the plan.

    An exception raised by a callback propagates unchanged, with a note naming the callback
    and the event (``AttributeError`` included: nothing is swallowed), unless the callback's
    ``error_policy`` is ``"warn"``: then it is reported once as a ``RuntimeWarning`` and the
    callback is disabled. The other exception: while run control defers stop requests (during
    a multi-process ``train()``, see
    [`defer_stop_requests_to`][trainwright.callbacks.base.CallbackHandler.defer_stop_requests_to]),
    a [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] goes to run control and
    the event's other callbacks still run, so that the process can stop in step with the others.

    Args:
        callbacks: callback instances, or ``TrainerCallback`` subclasses to instantiate with
            no arguments.
        reorder_metric_readers: place a callback that reads a metric after the callback that
            writes it, instead of raising
            [`CallbackOrderError`][trainwright.callbacks.ordering.CallbackOrderError].
        profile: time every callback method and training step (see
            [`CallbackProfiler`][trainwright.callbacks.profiling.CallbackProfiler], in `profiler`);
            the table is printed at the end of every ``train()``.

    Raises:
        CallbackOrderError: if the ordering constraints form a cycle, or a callback reads a
            metric before the callback that writes it runs.

    Example:
        ```python
        handler = CallbackHandler([PrintProgressCallback, MyCallback(threshold=3)])
        handler.call_event("on_train_epoch_end", trainer)
        ```
    """

    def __init__(
        self,
        callbacks: Iterable[CallbackLike] = (),
        reorder_metric_readers: bool = False,
        profile: bool = False,
    ) -> None:
        self._callbacks: list[TrainerCallback] = []
        self._ordered: list[TrainerCallback] = []
        self._classes_given: dict[type, TrainerCallback] = {}
        self._dispatch: dict[str, tuple[Callable, ...]] = {}
        #: The built-in events some callback (or the profiler) listens to, kept with the
        #: dispatch table: the training step fires only these, so that an event nobody
        #: listens to costs a set lookup, not a call.
        self.listened_events: frozenset[str] = frozenset()
        self._disabled: list[TrainerCallback] = []  # by error_policy="warn"
        # Filter state per (callback, event), kept across rebuilds of the table.
        self._filtered_methods: dict[tuple[int, str], Any] = {}
        self.reorder_metric_readers = reorder_metric_readers
        #: The profiler when ``profile=True``, else ``None``.
        self.profiler: CallbackProfiler | None = CallbackProfiler() if profile else None
        # Where a callback's StopTrainingError goes instead of propagating (run control's).
        self._stop_request_receiver: Callable[[StopTrainingError], None] | None = None
        for callback in callbacks:
            self._add(callback)
        self._rebuild()

    @property
    def callbacks(self) -> tuple[TrainerCallback, ...]:
        """The callbacks in execution order, as a tuple: iterate over it or index it, and
        change the callbacks with
        [`add_callback`][trainwright.callbacks.base.CallbackHandler.add_callback],
        [`remove_callback`][trainwright.callbacks.base.CallbackHandler.remove_callback] and
        [`pop_callback`][trainwright.callbacks.base.CallbackHandler.pop_callback] (a tuple cannot be
        changed in place, so a mistaken ``callbacks.append(...)`` fails instead of being
        ignored)."""
        return tuple(self._ordered)

    def describe(self, print_plan: bool = True) -> str:
        """The execution plan: the callback order, then for each event the callbacks it
        reaches, in order, with their filters. Printed unless ``print_plan=False``.

        Returns:
            The plan, one line per event that reaches a callback.

        Example:
            ```python
            trainer.callback_handler.describe()
            # callback order: MoveModulesToDeviceCallback, TerminateOnNaNCallback, ...
            # on_training_run_start: MoveModulesToDeviceCallback -> TerminateOnNaNCallback ...
            ```
        """
        lines = ["callback order: " + (", ".join(map(callback_name, self._ordered)) or "none")]
        if self._disabled:
            lines.append("disabled: " + ", ".join(map(callback_name, self._disabled)))
        for event, methods in self._dispatch.items():
            if not methods:
                continue
            names = []
            for method in methods:
                callback = getattr(method, "__self__", None)
                if not isinstance(callback, TrainerCallback):
                    continue  # the profiler's own markers
                event_filter = filter_of(callback, event)
                suffix = f" [{event_filter!r}]" if event_filter is not None else ""
                names.append(callback_name(callback) + suffix)
            lines.append(f"{event}: {' -> '.join(names)}")
        plan = "\n".join(lines)
        if print_plan:
            print(plan)
        return plan

    def reset_event_filters(self, trainer: Trainer) -> None:
        """Restarts every event filter's count from ``trainer``'s current position: those of
        filtered event methods and the callbacks' own
        [`due_check`][trainwright.callbacks.filters.due_check] checks. The trainer calls it at
        the start of every ``train()`` (after a resume's restore).

        Example:
            ```python
            handler.reset_event_filters(trainer)  # an every-N filter counts from here
            ```
        """
        for filtered_method in self._filtered_methods.values():
            filtered_method.reset(trainer)
        for callback in self._callbacks:
            for check in due_checks_of(callback):
                check.reset(trainer)

    def add_callback(self, callback: CallbackLike) -> TrainerCallback:
        """Adds a callback (a class is instantiated with no arguments) and returns the instance.

        The execution order is resolved again with the new callback (its ``order``,
        ``run_after`` / ``run_before`` and metric declarations), and the dispatch table
        rebuilt; if the new order is invalid, nothing changes. Added during a run, the
        callback receives the events from the next one on (not ``on_init_end``, nor a
        ``on_training_run_start`` already past).

        Raises:
            TypeError: if ``callback`` is neither a ``TrainerCallback`` subclass nor instance.
            ValueError: if this instance, or this class given as a class, is already present.
            CallbackOrderError: if the callback cannot be placed (see
                `resolve_callback_order`).

        Example:
            ```python
            handler.add_callback(EarlyStoppingCallback(early_stopping_patience=3))
            ```
        """
        instance = self._add(callback)
        try:
            self._rebuild()
        except Exception:
            self._callbacks.remove(instance)
            self._classes_given.pop(type(instance), None)
            self._rebuild()
            raise
        return instance

    def remove_callback(self, callback: CallbackLike) -> None:
        """Removes a callback instance, or the first callback of the given class (in the
        order the callbacks were given);
        [`pop_callback`][trainwright.callbacks.base.CallbackHandler.pop_callback] also returns it.

        Raises:
            ValueError: if no such callback is present.

        Example:
            ```python
            handler.remove_callback(ProgressBarCallback)
            ```
        """
        self.pop_callback(callback)

    def pop_callback(self, callback: CallbackLike) -> TrainerCallback:
        """Removes a callback instance, or the first callback of the given class (in the
        order the callbacks were given), and returns it.

        Raises:
            ValueError: if no such callback is present.

        Example:
            ```python
            progress_bar = handler.pop_callback(ProgressBarCallback)
            ```
        """
        for existing in self._callbacks:
            if existing is callback or (isinstance(callback, type) and type(existing) is callback):
                self._callbacks.remove(existing)
                if self._classes_given.get(type(existing)) is existing:
                    del self._classes_given[type(existing)]
                self._rebuild()
                return existing
        raise ValueError(
            f"Cannot remove {callback!r}: it is not one of the trainer's callbacks "
            f"({', '.join(callback_name(c) for c in self.callbacks) or 'none'})."
        )

    def call_event(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Calls ``event`` on every callback that defines it, in execution order.

        Args:
            event: the event name, e.g. ``"on_train_epoch_end"`` or a custom one.
            *args: positional arguments; the trainer comes first for the built-in events.
            **kwargs: keyword arguments passed to every callback.
        """
        methods = self._dispatch.get(event)
        if methods is None:
            methods = self._register_custom_event(event)
        for method in methods:
            try:
                method(*args, **kwargs)
            except StopTrainingError as error:
                if self._stop_request_receiver is None:
                    raise
                self._stop_request_receiver(error)
            except Exception as error:
                callback = method.__self__
                if callback.error_policy == "warn" and not isinstance(error, CallbackSetupError):
                    self._disable(callback, event, error)
                    continue
                _annotate(error, f"raised by callback {callback_name(callback)} in {event!r}")
                raise

    def _disable(self, callback: TrainerCallback, event: str, error: Exception) -> None:
        warnings.warn(
            f"Callback {callback_name(callback)} raised {type(error).__name__}: {error} in "
            f"{event!r}; it is disabled from now on (its error_policy is 'warn').",
            RuntimeWarning,
            stacklevel=3,
        )
        self._disabled.append(callback)
        self._rebuild()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every callback's `TrainerCallback.state_dict`, under a stable key: the class
        name, with ``#2``, ``#3``... for further instances of a class, in execution order."""
        return {key: callback.state_dict() for key, callback in self._keyed_callbacks()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Gives each callback its saved state; callbacks without a saved state (added since)
        keep theirs."""
        for key, callback in self._keyed_callbacks():
            if key in state:
                callback.load_state_dict(state[key])

    def _keyed_callbacks(self) -> list[tuple[str, TrainerCallback]]:
        seen: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = callback_name(callback)
            seen[name] = seen.get(name, 0) + 1
            keyed.append((name if seen[name] == 1 else f"{name}#{seen[name]}", callback))
        return keyed

    def defer_stop_requests_to(self, receiver: Callable[[StopTrainingError], None] | None) -> None:
        """Hands every `StopTrainingError` a callback raises to ``receiver`` instead of
        letting it propagate, and runs the event's other callbacks; ``None`` lets them propagate
        again (the default).

        This is run control's interface to the handler: `RunControl.start` sets its
        ``request_stop`` as the receiver in a multi-process run, `RunControl.finish` clears it
        (see [`RunControl`][trainwright.run_control.RunControl]).
        """
        self._stop_request_receiver = receiver

    def _add(self, callback: CallbackLike) -> TrainerCallback:
        if isinstance(callback, type) and issubclass(callback, TrainerCallback):
            if callback in self._classes_given:
                raise ValueError(
                    f"Callback class {callback_name(callback)} was given twice. Give it once, or "
                    f"pass distinct instances (e.g. {callback_name(callback)}(...)) to run it "
                    "several times."
                )
            instance = callback()
            self._classes_given[callback] = instance
        elif isinstance(callback, TrainerCallback):
            if any(existing is callback for existing in self._callbacks):
                raise ValueError(
                    f"The same {callback_name(callback)} instance was given twice; each instance "
                    "runs once. Create a second instance to run it twice."
                )
            instance = callback
        else:
            raise TypeError(
                f"callbacks must be TrainerCallback subclasses or instances; got {callback!r} "
                f"of type {type(callback).__name__}. Subclass trainwright.TrainerCallback and "
                "override the events you need."
            )
        _warn_of_misnamed_events(instance)
        self._callbacks.append(instance)
        return instance

    def _rebuild(self) -> None:
        for callback in self._callbacks:
            if callback.error_policy not in ("raise", "warn"):
                raise ValueError(
                    f"{callback_name(callback)}.error_policy must be 'raise' or 'warn'; got "
                    f"{callback.error_policy!r}."
                )
        self._ordered = resolve_callback_order(self._callbacks, self.reorder_metric_readers)
        custom_events = [event for event in self._dispatch if event not in EVENTS]
        self._dispatch = {event: self._methods_for(event) for event in EVENTS}
        for event in custom_events:
            self._dispatch[event] = self._methods_for(event)
        self.listened_events = frozenset(event for event in EVENTS if self._dispatch[event])

    def _methods_for(self, event: str) -> tuple[Callable, ...]:
        methods: list[Callable] = []
        for callback in self._ordered:
            if not callback_overrides(callback, event) or any(
                callback is disabled for disabled in self._disabled
            ):
                continue
            method = getattr(callback, event)
            event_filter = filter_of(callback, event)
            if event_filter is not None:
                key = (id(callback), event)
                if key not in self._filtered_methods:
                    self._filtered_methods[key] = event_filter.wrap(method)
                method = self._filtered_methods[key]
            if self.profiler is not None:
                method = self.profiler.wrap(callback_name(callback), event, method)
            methods.append(method)
        if self.profiler is not None:  # step timing and the report at the end of a run
            if event == "on_train_step_start":
                methods.insert(0, self.profiler.step_started)
            elif event == "on_train_step_end":
                methods.append(self.profiler.step_ended)
            elif event == "on_training_run_end":
                methods.append(self.profiler.print_report)
        return tuple(methods)

    def _register_custom_event(self, event: str) -> tuple[Callable, ...]:
        if not event.isidentifier():
            raise ValueError(f"Event names must be valid method names; got {event!r}.")
        methods = self._methods_for(event)
        self._dispatch[event] = methods
        return methods

    def __repr__(self) -> str:
        return f"CallbackHandler([{', '.join(callback_name(c) for c in self.callbacks)}])"


def _warn_of_misnamed_events(callback: TrainerCallback) -> None:
    # An ``on_*`` method that is no event may be a custom event (it runs when something calls
    # call_event with its name), so only names close to an event, or another library's name
    # for one, are reported: most likely a typo or a port that would never run.
    for name in dir(type(callback)):
        if not name.startswith("on_") or name in EVENTS:
            continue
        if not callable(getattr(type(callback), name)):
            continue
        event = _event_meant_by(name)
        if event is not None:
            warnings.warn(
                f"{callback_name(callback)}.{name} is not an event the trainer fires, so it "
                f"runs only if something calls call_event({name!r}). Did you mean {event}? "
                "Rename the method to receive that event (trainwright.callbacks.EVENTS lists "
                "them all).",
                UserWarning,
                stacklevel=4,
            )


def _event_meant_by(name: str) -> str | None:
    """The event an ``on_*`` method name that is none most likely means, if any."""
    if name in PEER_EVENT_NAMES:
        return PEER_EVENT_NAMES[name]
    normalized = name.replace("_begin", "_start").replace("_batch", "_step")
    if normalized in EVENTS:
        return normalized
    matches = difflib.get_close_matches(normalized, EVENTS, n=1, cutoff=0.8)
    return matches[0] if matches else None


def callback_overrides(callback: TrainerCallback, event: str) -> bool:
    """Whether ``callback`` defines ``event`` with its own method (not the base no-op)."""
    method = getattr(callback, event, None)
    return callable(method) and not getattr(method, "_is_trainwright_no_op", False)
