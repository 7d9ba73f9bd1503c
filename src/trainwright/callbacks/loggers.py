"""Callbacks that send a run's metrics to experiment trackers and to files.

Which library does what:

- [`ExperimentTrackerCallback`][trainwright.callbacks.loggers.ExperimentTrackerCallback] goes
  through Hugging Face Accelerate's tracking API (`accelerate.tracking`): ``"tensorboard"`` writes
  TensorBoard event files (with ``torch.utils.tensorboard``, which needs the ``tensorboard``
  package), ``"mlflow"`` logs to an MLflow tracking server or store (the ``mlflow`` package; it
  honours ``MLFLOW_TRACKING_URI``), and so does every other tracker Accelerate knows (``"wandb"``,
  ``"comet_ml"``, ``"aim"``, ``"clearml"``, ``"dvclive"``, ``"swanlab"``, ``"trackio"``) or
  an `accelerate.tracking.GeneralTracker` instance of your own.
- [`CSVLoggerCallback`][trainwright.callbacks.loggers.CSVLoggerCallback] needs nothing beyond the
  standard library's `csv`.

``pip install "trainwright[tensorboard]"`` or ``"trainwright[mlflow]"`` installs one tracker,
``"trainwright[loggers]"`` both, with matplotlib and rich.

Both build on [`LoggerCallback`][trainwright.callbacks.loggers.LoggerCallback], which collects each
epoch's newly recorded numeric metrics (as
[`PrintMetricsCallback`][trainwright.callbacks.progress.PrintMetricsCallback] does) and keeps a
logger failing mid-run from ending the run (``error_policy = "warn"``: reported once, naming the
callback and the event, then disabled); ``strict=True`` raises instead. A tracker that cannot start
fails the run before training, unless ``error_policy="warn"`` is chosen.
"""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list

from trainwright.callbacks.base import CallbackSetupError
from trainwright.callbacks.filters import due_check, every
from trainwright.callbacks.monitoring import learning_rates
from trainwright.callbacks.progress import PrintMetricsCallback
from trainwright.device_values import DeviceValueReader
from trainwright.validation import check_bool, check_path, check_positive_int, check_type

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

    from trainwright.trainer import Trainer

__all__ = [
    "CSVLoggerCallback",
    "ExperimentTrackerCallback",
    "LoggerCallback",
    "tracker_safe_config",
]


class LoggerCallback(PrintMetricsCallback):
    """Base class for callbacks that send metrics somewhere (a file, an experiment tracker),
    so that a failing destination never ends the run.

    Metrics: the numeric metrics recorded during each epoch reach
    [`log_epoch_metrics`][trainwright.callbacks.loggers.LoggerCallback.log_epoch_metrics] once the
    epoch is over (at ``on_training_run_epoch_end``, after every callback that declares it writes
    metrics; or when a stop is reported), and those of
    [`evaluate`][trainwright.trainer.Trainer.evaluate] reach
    [`log_evaluation_metrics`][trainwright.callbacks.loggers.LoggerCallback.log_evaluation_metrics].
    Loggers write on the main process only (`is_writer`).

    Failure isolation: loggers have ``error_policy = "warn"`` (see
    [`TrainerCallback`][trainwright.callbacks.base.TrainerCallback]): an exception raised by the
    logger or its destination is reported once, as a ``RuntimeWarning`` naming the callback and the
    event, and the logger is disabled from then on while training carries on. Give each
    destination its own logger callback to isolate them from one another. ``strict=True``
    (or ``error_policy="raise"``) makes the error propagate (with a note naming the callback
    and the event). Resources of a logger disabled mid-run (open files, tracker runs) are
    released when the process ends, not by the logger.

    A destination that cannot even start (checked when the run starts, e.g. by
    [`ExperimentTrackerCallback`][trainwright.callbacks.loggers.ExperimentTrackerCallback]) would
    leave the run with nothing logged: that is a `CallbackSetupError`, raised before training,
    unless you chose ``error_policy="warn"`` (then it is reported like any other failure, and
    training goes on without the logger).

    Args:
        strict: let a destination's errors propagate instead of disabling the logger (the
            same as ``error_policy="raise"``).
        error_policy: ``None`` (the default: failures mid-run warn, a destination that
            cannot start fails the run), ``"warn"`` (every failure warns, the start's too)
            or ``"raise"``.

    Example:
        ```python
        class PrintToFile(LoggerCallback):
            def log_epoch_metrics(self, trainer, metrics, epoch):
                with open("metrics.txt", "a") as file:
                    file.write(f"{epoch}: {metrics}\\n")
        ```
    """

    error_policy = "warn"

    def __init__(self, *, strict: bool = False, error_policy: str | None = None) -> None:
        check_bool("strict", strict)
        super().__init__()
        if error_policy not in (None, "warn", "raise"):
            raise ValueError(f"error_policy must be None, 'warn' or 'raise'; got {error_policy!r}.")
        if strict and error_policy == "warn":
            raise ValueError("strict=True and error_policy='warn' contradict each other.")
        self.strict = strict or error_policy == "raise"
        if self.strict:
            self.error_policy = "raise"
        #: Whether a destination that cannot start only warns (``error_policy="warn"`` was
        #: chosen) instead of failing the run before training.
        self.may_run_without_destination = error_policy == "warn"
        #: Whether this process writes (the main process).
        self.is_writer = True

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.is_writer = trainer.accelerator.is_main_process

    def log_metrics(self, trainer: Trainer, metrics: dict[str, Any], label: str) -> None:
        """Routes the metrics collected by `PrintMetricsCallback` to
        [`log_epoch_metrics`][trainwright.callbacks.loggers.LoggerCallback.log_epoch_metrics] or
        `log_evaluation_metrics` (nothing is printed)."""
        if not self.is_writer:
            return
        values = {name: float(value) for name, value in metrics.items()}
        if label == "evaluation":
            self.log_evaluation_metrics(trainer, values)
        else:
            self.log_epoch_metrics(trainer, values, trainer.run_history.current_epoch)

    def log_epoch_metrics(self, trainer: Trainer, metrics: dict[str, float], epoch: int) -> None:
        """Sends the numeric metrics recorded during ``epoch`` (counted from 1). Override it."""

    def log_evaluation_metrics(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Sends the metrics of an [`evaluate`][trainwright.trainer.Trainer.evaluate] run (by
        default, nothing)."""


def tracker_safe_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` as hyperparameters every tracker accepts: nested mappings are flattened
    to ``"outer.inner"`` keys, booleans, numbers and strings are kept, and anything else
    (``None``, lists, objects) becomes its ``str()``.

    Example:
        ```python
        tracker_safe_config({"lr": 0.1, "dl": {"batch_size": 8}, "clip": None})
        # {"lr": 0.1, "dl.batch_size": 8, "clip": "None"}
        ```
    """
    safe: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            safe.update(tracker_safe_config(value, prefix=f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            safe[name] = value
        else:
            safe[name] = str(value)
    return safe


class _PendingStepValues:
    """Values to log at optimizer-update steps, read on the host without waiting.

    Tensors go through a [`DeviceValueReader`][trainwright.device_values.DeviceValueReader]; a step
    is released, in order, once all its tensors have reached the host.
    """

    def __init__(self) -> None:
        self._reader = DeviceValueReader()
        self._values: dict[int, dict[str, float]] = {}

    def submit(self, step: int, values: Mapping[str, float | torch.Tensor]) -> None:
        tensors = [(name, value) for name, value in values.items() if torch.is_tensor(value)]
        self._values[step] = {
            name: float(value) for name, value in values.items() if not torch.is_tensor(value)
        }
        if not tensors:  # a host-side marker keeps the steps in order behind pending ones
            tensors = [(None, torch.zeros(()))]
        for index, (name, tensor) in enumerate(tensors):
            self._reader.submit(tensor, tag=(step, name, index == len(tensors) - 1))

    def ready(self) -> list[tuple[int, dict[str, float]]]:
        """Steps whose values have all reached the host, oldest first."""
        return self._release(self._reader.ready())

    def wait(self) -> list[tuple[int, dict[str, float]]]:
        """Every pending step, waiting for copies still in flight."""
        return self._release(self._reader.wait())

    def clear(self) -> None:
        self._reader.clear()
        self._values.clear()

    def _release(self, items: Iterable[tuple[Any, float]]) -> list[tuple[int, dict[str, float]]]:
        released = []
        for (step, name, is_last), value in items:
            if name is not None:
                self._values[step][name] = value
            if is_last:
                released.append((step, self._values.pop(step)))
        return released


class ExperimentTrackerCallback(LoggerCallback):
    """Logs a run to experiment trackers (TensorBoard, MLflow, W&B, ...) through
    Accelerate's tracking API.

    What is logged:

    - at the start of ``train()``: ``dict(trainer.run_config)`` as hyperparameters, made
      tracker-safe by [`tracker_safe_config`][trainwright.callbacks.loggers.tracker_safe_config],
      plus ``extra_config``;
    - every ``log_every_n_updates`` optimizer updates: ``train_loss_step`` (the loss of the
      batch that completed the update; with several processes, the main process's) and the
      learning rate (``learning_rate_step``, or ``learning_rate_group_<i>_step`` per
      parameter group), at step = optimizer updates so far (the ``_step`` suffix keeps them
      apart from per-epoch metrics of the same name). The loss is copied to the host without
      waiting ([`DeviceValueReader`][trainwright.device_values.DeviceValueReader]) and logged once
      it has landed, so no step waits for the device (no logging step either); what is still in
      flight is logged at the epoch's end;
    - at the end of every epoch: each numeric metric recorded in the run history during the
      epoch (``train_loss_epoch``, ``eval_loss_epoch``, your callbacks' metrics), at step =
      the epoch number (from 1), or the number of updates with ``epoch_step="update"``;
    - the metrics of [`evaluate`][trainwright.trainer.Trainer.evaluate], at step = epochs
      completed (or updates): into the run of the training when ``evaluate()`` is called
      during or after a ``train()`` (see ``evaluation_run``).

    Which trackers: by name, the trackers are created by this callback
    (``accelerate.tracking`` classes, with ``project_name`` and, for those that need one,
    ``logging_dir``; TensorBoard writes to ``<logging_dir>/<project_name>``), started when
    ``train()`` starts and finished when it ends, so the trainer's Accelerator (already
    built by then) needs no ``log_with``. Instances of
    `accelerate.tracking.GeneralTracker` are used as given (started and finished the
    same way). With ``trackers=None``, the trackers configured on the trainer's Accelerator
    are used (``Trainer(..., accelerator_kwargs={"log_with": "tensorboard",
    "project_dir": "runs"})``): ``accelerator.init_trackers`` is called if you have not
    called it yourself (and the trackers it made are dropped from ``accelerator.trackers``
    when the run ends, so that the next ``train()`` starts fresh ones), and the callback
    never calls ``accelerator.end_training()``, which would also tear down the process
    group: it finishes only trackers it started, and leaves trackers you initialised alone.
    The trackers in use are `trackers`;
    [`get_tracker`][trainwright.callbacks.loggers.ExperimentTrackerCallback.get_tracker] returns one
    by name. Each ``train()`` is a new tracker run (a new MLflow run; to continue one after a
    resume, pass ``tracker_init_kwargs={"mlflow": {"run_id": ...}}``), finished when ``train()``
    ends.

    ``evaluate()`` after a ``train()`` logs into the run of that training: with
    ``evaluation_run="training"`` (the default), the trackers are reopened on it for the
    evaluation
    ([`reopen_tracker`][trainwright.callbacks.loggers.ExperimentTrackerCallback.reopen_tracker]: the
    same MLflow run, the same TensorBoard run directory, with no second set of hyperparameters) and
    finished again afterwards. A tracker that cannot be reopened (other than TensorBoard and MLflow,
    unless you override
    [`reopen_tracker`][trainwright.callbacks.loggers.ExperimentTrackerCallback.reopen_tracker]) is
    started anew, with a warning. ``evaluation_run="new"`` gives every ``evaluate()`` outside
    ``train()`` a run of its own, as does an ``evaluate()`` before any ``train()``.

    Trackers run on the main process only. A tracker that cannot start (an unreachable
    server, MLflow refusing a file store, a ``trackers=None`` callback whose Accelerator has
    no trackers) fails the run before training with a
    `~trainwright.callbacks.CallbackSetupError`, on every process, since nothing would be
    logged; with ``error_policy="warn"`` it is reported once as a warning instead and
    training goes on without the callback. A tracker that raises later is reported once as a
    warning and the callback is disabled; training continues (see
    [`LoggerCallback`][trainwright.callbacks.loggers.LoggerCallback]; use one callback per tracker
    to keep the others going). Trackers started by the callback are finished also when an exception
    ends the run (``on_exception``).

    Args:
        trackers: tracker names (``"tensorboard"``, ``"mlflow"``, ...) and/or
            ``GeneralTracker`` instances; ``None`` for the Accelerator's own trackers.
        project_name: the project (TensorBoard run directory name, MLflow experiment name).
        logging_dir: where trackers that write files put them.
        log_every_n_updates: log ``train_loss_step`` and the learning rate every this many
            optimizer updates; ``None`` to log per epoch only.
        tracker_init_kwargs: per tracker name, extra arguments for its constructor, e.g.
            ``{"mlflow": {"run_name": "baseline"}}``.
        extra_config: further hyperparameters to store with the run config.
        epoch_step: the step epoch metrics are logged at: ``"epoch"`` or ``"update"``.
        evaluation_run: where ``evaluate()`` outside ``train()`` logs: ``"training"`` (the
            run of the last ``train()``, reopened) or ``"new"`` (a run of its own).
        strict: raise a tracker's errors instead of reporting and disabling it.
        error_policy: ``"warn"`` to train on, with a warning, even when a tracker cannot
            start; ``"raise"`` is ``strict=True`` (see
            [`LoggerCallback`][trainwright.callbacks.loggers.LoggerCallback]).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS,
            ExperimentTrackerCallback(["tensorboard"], project_name="digits",
                                      logging_dir="runs", log_every_n_updates=50),
        ])
        trainer.train(train_dataset, num_epochs=5, eval_dataset=eval_dataset)
        # tensorboard --logdir runs
        ```
    """

    def __init__(
        self,
        trackers: str | GeneralTracker | Sequence[str | GeneralTracker] | None = "tensorboard",
        project_name: str = "trainwright",
        logging_dir: str | os.PathLike = "runs",
        log_every_n_updates: int | None = 50,
        tracker_init_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        epoch_step: str = "epoch",
        evaluation_run: str = "training",
        *,
        strict: bool = False,
        error_policy: str | None = None,
    ) -> None:
        super().__init__(strict=strict, error_policy=error_policy)
        if isinstance(trackers, str) or _is_tracker(trackers):
            trackers = [trackers]
        self._tracker_specs = None if trackers is None else list(trackers)
        for spec in self._tracker_specs or ():
            _check_tracker_spec(spec)
        check_positive_int("log_every_n_updates", log_every_n_updates, optional=True)
        if epoch_step not in ("epoch", "update"):
            raise ValueError(f'epoch_step must be "epoch" or "update"; got {epoch_step!r}.')
        check_type("project_name", project_name, str, "a name (str)")
        check_path("logging_dir", logging_dir)
        check_type("tracker_init_kwargs", tracker_init_kwargs, Mapping, "a dict", optional=True)
        check_type("extra_config", extra_config, Mapping, "a dict", optional=True)
        if evaluation_run not in ("training", "new"):
            raise ValueError(f'evaluation_run must be "training" or "new"; got {evaluation_run!r}.')
        self.project_name = project_name
        self.logging_dir = Path(logging_dir)
        self.tracker_init_kwargs = {k: dict(v) for k, v in (tracker_init_kwargs or {}).items()}
        self.extra_config = dict(extra_config or {})
        self.epoch_step = epoch_step
        self.evaluation_run = evaluation_run
        #: The trackers logged to in the current run (empty on other processes).
        self.trackers: list[GeneralTracker] = []
        self._started_trackers: list[GeneralTracker] = []
        # The trackers the last train() started and finished, for evaluate() to reopen.
        self._training_trackers: list[GeneralTracker] = []
        self._initialized_accelerator: Any = None
        self._pending = _PendingStepValues()
        self._step_logging = None
        if log_every_n_updates is not None:
            self._step_logging = due_check(self, every(n_updates=log_every_n_updates))
        self._started_for_evaluation = False

    @property
    def log_every_n_updates(self) -> int | None:
        """The interval given to the constructor (read-only: build a new callback to change
        it)."""
        return None if self._step_logging is None else self._step_logging.event_filter.n_updates

    def get_tracker(self, name: str) -> GeneralTracker:
        """The tracker in use named ``name`` (e.g. ``"mlflow"``); ``.tracker`` on it is the
        library's own object (the ``SummaryWriter``, the MLflow run)."""
        for tracker in self.trackers:
            if tracker.name == name:
                return tracker
        names = ", ".join(tracker.name for tracker in self.trackers) or "none"
        raise ValueError(f"No tracker named {name!r} is in use (in use: {names}).")

    # -- starting and finishing ------------------------------------------------------------

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer)
        self._finish_trackers()  # a run that ended abnormally may have left some open
        self._training_trackers = []
        self._pending.clear()
        config = {**dict(trainer.run_config), **self.extra_config}
        self._start_or_fail(trainer, lambda: self._start_trackers(trainer, config))

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._log_steps(self._pending.wait())
        self._training_trackers = list(self._started_trackers)
        self._finish_trackers()

    def on_exception(self, trainer: Trainer, exception: BaseException, **kwargs: Any) -> None:
        self._pending.clear()
        self._finish_trackers()  # close files and end tracker runs before the error propagates

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_evaluation_run_start(trainer)
        self._started_for_evaluation = not self.trackers
        if self._started_for_evaluation:  # evaluate() outside train()
            self.is_writer = trainer.accelerator.is_main_process
            self._start_or_fail(trainer, lambda: self._start_evaluation_trackers(trainer))

    def on_evaluation_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_evaluation_run_end(trainer)
        if self._started_for_evaluation:
            self._finish_trackers()
            self._started_for_evaluation = False

    def reopen_tracker(self, tracker: GeneralTracker) -> bool:
        """Starts ``tracker``, finished at the end of the last ``train()``, again on that
        training's run, so that ``evaluate()`` logs into it; returns whether it could.

        An MLflow tracker resumes its run (by run id), a TensorBoard tracker writes to its run
        directory again; no hyperparameters are stored a second time. Other trackers are not
        reopened (``False``): override this method to reopen yours (e.g. a W&B run with
        ``wandb.init(id=..., resume="must")``).

        Example:
            ```python
            class MyTrackerCallback(ExperimentTrackerCallback):
                def reopen_tracker(self, tracker):
                    if tracker.name == "wandb":
                        tracker.init_kwargs.update(id=tracker.run.id, resume="must")
                        tracker.start()
                        return True
                    return super().reopen_tracker(tracker)
            ```
        """
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        if isinstance(tracker, TensorBoardTracker):
            tracker.start()
            return True
        if isinstance(tracker, MLflowTracker):
            # Pinned for this start only: the next train() starts a run of its own.
            run_id, tracker.run_id = tracker.run_id, tracker.active_run.info.run_id
            try:
                tracker.start()
            finally:
                tracker.run_id = run_id
            return True
        return False

    def _start_evaluation_trackers(self, trainer: Trainer) -> None:
        if self.evaluation_run == "new" or not self._training_trackers:
            self._start_trackers(trainer, dict(self.extra_config))
            return
        for tracker in self._training_trackers:
            if not self.reopen_tracker(tracker):
                warnings.warn(
                    f"ExperimentTrackerCallback cannot reopen the {tracker.name!r} run of the "
                    "last train(), so evaluate() logs to a new run of it. Pass "
                    'evaluation_run="new" if that is what you want, or override '
                    "reopen_tracker() to reopen it.",
                    stacklevel=2,
                )
                tracker.start()
                tracker.store_init_configuration(tracker_safe_config(self.extra_config))
            self._started_trackers.append(tracker)
            self.trackers.append(tracker)

    def _start_or_fail(self, trainer: Trainer, start: Callable[[], None]) -> None:
        """Starts the trackers on the main process; if that fails, every process fails
        (`CallbackSetupError`) before training, unless ``error_policy="warn"`` was chosen."""
        error = None
        if self.is_writer:
            try:
                start()
            except Exception as caught:
                error = caught
        failure = None if error is None else f"{type(error).__name__}: {error}"
        if trainer.accelerator.num_processes > 1:  # the main process's outcome, everywhere
            failure = broadcast_object_list([failure], from_process=0)[0]
        if failure is None:
            return
        with contextlib.suppress(Exception):  # cleanup only: the start's failure is reported
            self._finish_trackers()
        if self.may_run_without_destination:
            if error is not None:
                raise error  # reported once as a warning, and the callback disabled
            return
        raise CallbackSetupError(
            f"ExperimentTrackerCallback could not start its trackers ({failure}), so nothing "
            "would be logged: the run stops before training. Fix the tracker's configuration, "
            'or pass error_policy="warn" to ExperimentTrackerCallback to train without it.'
        ) from error

    def _start_trackers(self, trainer: Trainer, config: dict[str, Any]) -> None:
        hyperparameters = tracker_safe_config(config)
        if self._tracker_specs is None:
            self._use_accelerator_trackers(trainer, hyperparameters)
            return
        for spec in self._tracker_specs:
            tracker = spec if _is_tracker(spec) else self._create_tracker(spec)
            tracker.start()
            self._started_trackers.append(tracker)
            self.trackers.append(tracker)
            tracker.store_init_configuration(hyperparameters)

    def _create_tracker(self, name: str) -> GeneralTracker:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        kwargs = self.tracker_init_kwargs.get(name, {})
        if tracker_class.requires_logging_directory:
            return tracker_class(self.project_name, str(self.logging_dir), **kwargs)
        return tracker_class(self.project_name, **kwargs)

    def _use_accelerator_trackers(self, trainer: Trainer, hyperparameters: dict[str, Any]) -> None:
        accelerator = trainer.accelerator
        if not accelerator.trackers:
            if not accelerator.log_with:
                raise ValueError(
                    "ExperimentTrackerCallback(trackers=None) uses the trackers of the "
                    "trainer's Accelerator, but it has none. Name the trackers, e.g. "
                    'ExperimentTrackerCallback(["tensorboard"]), or build the trainer with '
                    'accelerator_kwargs={"log_with": "tensorboard", "project_dir": "runs"}.'
                )
            accelerator.init_trackers(self.project_name, hyperparameters, self.tracker_init_kwargs)
            self._started_trackers.extend(accelerator.trackers)
            self._initialized_accelerator = accelerator
        self.trackers.extend(accelerator.trackers)

    def _finish_trackers(self) -> None:
        started, self._started_trackers = self._started_trackers, []
        self.trackers.clear()
        if self._initialized_accelerator is not None:
            # Forget them there too, so that the next run initialises fresh ones.
            accelerator, self._initialized_accelerator = self._initialized_accelerator, None
            accelerator.trackers = [t for t in accelerator.trackers if t not in started]
        for tracker in started:
            tracker.finish()

    # -- logging ---------------------------------------------------------------------------

    def on_train_step_end(self, trainer: Trainer, batch_output: dict, **kwargs: Any) -> None:
        if not self.trackers or self._step_logging is None:
            return
        if self._step_logging.is_due(trainer):
            num_updates = trainer.progress.num_update_steps
            values: dict[str, Any] = {"train_loss": batch_output["loss"]}
            values.update(learning_rates(trainer.optimizer))
            values.update(trainer.step_metrics)  # e.g. GradientNormMonitorCallback's
            self._pending.submit(num_updates, {f"{name}_step": v for name, v in values.items()})
        self._log_steps(self._pending.ready())

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        # The epoch's end reads its loss from the device anyway: nothing left to overlap.
        self._log_steps(self._pending.wait())

    def _log_steps(self, steps: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in steps:
            self._log(values, step)

    def log_epoch_metrics(self, trainer: Trainer, metrics: dict[str, float], epoch: int) -> None:
        step = epoch if self.epoch_step == "epoch" else trainer.progress.num_update_steps
        self._log(metrics, step)

    def log_evaluation_metrics(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.epoch_step == "epoch":
            step = trainer.run_history.current_epoch - 1
        else:
            step = trainer.progress.num_update_steps
        self._log(metrics, step)

    def _log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)


def _is_tracker(value: Any) -> bool:
    from accelerate.tracking import GeneralTracker

    return isinstance(value, GeneralTracker)


def _check_tracker_spec(spec: Any) -> None:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if _is_tracker(spec):
        return
    if not isinstance(spec, str) or spec not in LOGGER_TYPE_TO_CLASS:
        raise ValueError(
            f"Unknown tracker {spec!r}. Use one of {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}, "
            "or an accelerate.tracking.GeneralTracker instance."
        )
    if spec not in {str(tracker) for tracker in get_available_trackers()}:
        raise ImportError(
            f"The {spec!r} tracker needs its package, which is not installed: "
            f'pip install {spec.replace("_", "-")} (pip install "trainwright[tensorboard]" or '
            '"trainwright[mlflow]" for those two).'
        )


class CSVLoggerCallback(LoggerCallback):
    """Writes one CSV row per epoch: ``epoch``, then every numeric metric recorded in the run
    history during that epoch. Uses only the standard library.

    Column policy: columns appear in the order metrics are first recorded (``epoch`` first,
    the metrics of one epoch in alphabetical order). When a metric first appears in a later
    epoch, the file is rewritten with the union of the columns, earlier rows left empty in
    the new column; otherwise each epoch appends a row. The file is replaced atomically
    (written beside it, then renamed) whenever it is rewritten. A new ``train()`` with a
    fresh run history starts a new file; the rows are kept in the callback's
    `state_dict`, so a resumed run continues the same file. Evaluation runs
    ([`evaluate`][trainwright.trainer.Trainer.evaluate]) are not written.

    Args:
        path: the CSV file to write (its directory is created).
        strict: raise write errors instead of reporting them once and stopping writes.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer,
                          callbacks=[*DEFAULT_CALLBACKS, CSVLoggerCallback("metrics.csv")])
        trainer.train(train_dataset, num_epochs=3, eval_dataset=eval_dataset)
        # metrics.csv: epoch,eval_loss_epoch,train_loss_epoch / 1,0.98,1.05 / ...
        ```
    """

    def __init__(self, path: str | os.PathLike, *, strict: bool = False) -> None:
        check_path("path", path)
        super().__init__(strict=strict)
        self.path = Path(path)
        self.columns: list[str] = ["epoch"]
        self.rows: list[dict[str, Any]] = []

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer)
        if trainer.run_history.current_epoch == 1:  # a fresh history: a fresh file
            self.columns, self.rows = ["epoch"], []

    def log_epoch_metrics(self, trainer: Trainer, metrics: dict[str, float], epoch: int) -> None:
        new_columns = sorted(name for name in metrics if name not in self.columns)
        self.columns.extend(new_columns)
        row = {"epoch": epoch, **metrics}
        self.rows.append(row)
        if new_columns or not self.path.exists():
            self._rewrite()
        else:
            self._append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.columns = list(state["columns"])
        self.rows = [dict(row) for row in state["rows"]]
        if self.is_writer:
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.tmp")
        with open(staging, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(staging, self.path)

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.columns, restval="").writerow(row)
