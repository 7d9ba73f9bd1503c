"""Callbacks that show the run's progress and print its metrics.

Which library does what: [`ProgressBarCallback`][trainwright.callbacks.progress.ProgressBarCallback]
draws with tqdm (a dependency),
[`RichProgressBarCallback`][trainwright.callbacks.progress.RichProgressBarCallback] with rich
(optional, imported when the callback is built); the printing callbacks use
[`Trainer.print`][trainwright.trainer.Trainer.print].
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import torch
from tqdm.std import tqdm

from trainwright.callbacks.base import ALL_METRICS, StopTrainingError, TrainerCallback
from trainwright.data import dataloader_length
from trainwright.device_values import DeviceValueReader
from trainwright.tracking import format_metric_value
from trainwright.validation import check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "LogMetricsCallback",
    "PrintMetricsCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "RichProgressBarCallback",
]


class PrintProgressCallback(TrainerCallback):
    """Prints a line when the run, each epoch and each evaluation starts, and why a run
    stopped early (main process only)."""

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        config = trainer.run_config
        # Training data without a length leaves one of the two unknown (see RunConfig).
        if config.num_epochs is None:
            plan = f"epochs until {config.num_update_steps} optimizer update(s)"
        elif config.num_update_steps is None:
            plan = f"{config.num_epochs} epoch(s), each until the data runs out"
        else:
            plan = f"{config.num_epochs} epoch(s), {config.num_update_steps} optimizer update(s)"
        trainer.print(f"\nStarting training run: {plan}")

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
    """A progress bar over each training and evaluation epoch (main process of each machine
    only), drawn with tqdm where the output is a terminal and as widgets in a Jupyter
    notebook (with ipywidgets installed: ``pip install "trainwright[notebook]"``). The bar
    redraws at a bounded rate (tqdm's ``mininterval``, 0.1 s by default) however fast the
    steps are.

    Where the output is not a terminal (a log file, a CI job, a pipe), redrawing a bar would
    fill the log with carriage-return frames, so the callback prints a plain line instead,
    at most once every ``line_every_n_seconds`` seconds, e.g.
    ``epoch 3:  35% 12/34 [00:45<01:22,  3.77s/it, loss=0.2301]``; an epoch shorter than
    that prints nothing (the epoch's metrics line of `PrintMetricsCallback` reports it).

    The training bar shows the latest loss, refreshed every ``loss_every_n_steps`` batches
    without making the host wait for the device: the loss is copied to the host in the
    background (`DeviceValueReader`) and shown once it has arrived (on the CPU from the
    bar's next redraw, on a GPU a redraw or so later). A dataloader without a length (an
    ``IterableDataset`` without ``__len__``) gets a bar that counts batches.

    Most steps cost the callback one counter and one comparison: the bar (or the plain
    lines) is told of the batches done at a bounded rate, about every 0.05 s (or at the bar's
    ``mininterval``, or ``line_every_n_seconds``, when shorter), judged from the rate of the
    steps so far, so tqdm's own per-call work is not paid on every step. With
    ``mininterval=0`` (or ``line_every_n_seconds=0``) it is told of every batch, as it
    ends. The count is complete when the bar closes at the end of each epoch.

    Args:
        loss_every_n_steps: show the loss of every this-many-th batch; ``None`` hides it.
        draw_bar: whether to draw a redrawing bar: by default, where the output is a
            terminal or a Jupyter notebook. ``True`` draws one anyway (a console that
            renders carriage returns but is not a terminal, as some IDEs have); ``False``
            always prints plain lines.
        line_every_n_seconds: the least time between two plain lines; ``None`` prints none.
        **tqdm_kwargs: passed to tqdm's bar, e.g. ``mininterval=1.0`` or
            ``file=sys.stdout`` (plain lines go to the same ``file``, stderr by default).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer,
                          callbacks=[PrintProgressCallback, ProgressBarCallback(mininterval=1.0)])
        ```
    """

    def __init__(
        self,
        loss_every_n_steps: int | None = 10,
        *,
        draw_bar: bool | None = None,
        line_every_n_seconds: float | None = 30.0,
        **tqdm_kwargs: Any,
    ) -> None:
        check_positive_int("loss_every_n_steps", loss_every_n_steps, optional=True)
        if line_every_n_seconds is not None and not line_every_n_seconds >= 0:
            raise ValueError(
                f"line_every_n_seconds must be >= 0 seconds, or None to print no lines; "
                f"got {line_every_n_seconds!r}."
            )
        self._bar: Any = None
        self.loss_every_n_steps = loss_every_n_steps
        self.draw_bar = draw_bar
        self.line_every_n_seconds = line_every_n_seconds
        self.tqdm_kwargs = {"leave": False, "dynamic_ncols": True, **tqdm_kwargs}
        self._losses = DeviceValueReader()
        self._is_shown = False
        # Batches of the open bar: seen, and told to the bar; the counts at which to tell the
        # bar next, to look at the next loss to show, and the earlier of the two.
        self._num_batches = self._num_batches_told = 0
        self._next_tell = self._next_values = self._next_check = math.inf
        self._told_at = 0.0  # time.monotonic() when the bar was last told
        self._period_s = math.inf  # the aimed-for time between two tells

    def _open(self, trainer: Trainer, dataloader: Any, description: str) -> None:
        """Opens the bar of an epoch over ``dataloader`` (``total=None`` without a length)."""
        self._close()
        total = dataloader_length(dataloader)
        bar_class = _bar_class(self.tqdm_kwargs.get("file"), self.draw_bar)
        if not self._is_shown or bar_class is None:
            interval = self.line_every_n_seconds if self._is_shown else None
            self._bar = _ProgressLines(total, description, interval, self.tqdm_kwargs.get("file"))
        else:
            self._bar = bar_class(total=total, desc=description, **self.tqdm_kwargs)

    def _redraw_period_s(self) -> float:
        """The least time between two redraws of the open bar (``inf``: it never draws)."""
        if isinstance(self._bar, _ProgressLines):
            return math.inf if self._bar.interval is None else self._bar.interval
        return self.tqdm_kwargs.get("mininterval", _TQDM_MININTERVAL_S)

    def _start_counting(self) -> None:
        """Starts the batch count of the bar just opened."""
        self._num_batches = self._num_batches_told = 0
        self._told_at = time.monotonic()
        self._period_s = min(self._redraw_period_s(), _LONGEST_TELL_PERIOD_S)
        self._next_tell = 1 if self._period_s < math.inf else math.inf
        self._next_values = 1 if self._is_shown and self.loss_every_n_steps else math.inf
        self._next_check = min(self._next_tell, self._next_values)

    def _tell_bar(self) -> None:
        """Moves the bar on by the batches done since it was last told, and schedules the
        next time: after as many batches as take about ``_period_s`` at the rate since then
        (at most twice as many as this time, so a slowdown is noticed soon)."""
        now = time.monotonic()
        num_batches = self._num_batches - self._num_batches_told
        self._advance(num_batches)
        self._num_batches_told = self._num_batches
        gap = 1
        elapsed = now - self._told_at
        if self._period_s > 0 and elapsed > 0:
            gap = max(1, min(int(num_batches * self._period_s / elapsed), 2 * num_batches))
        self._told_at = now
        self._next_tell = self._num_batches + gap

    def _advance(self, num_batches: int) -> None:
        """Moves the bar on by ``num_batches`` batches."""
        self._bar.update(num_batches)

    def _show_values(self, values: dict[str, float]) -> None:
        """Shows ``values`` (the loss and any ``trainer.step_metrics``) beside the bar; drawn
        at the bar's next refresh."""
        self._bar.set_postfix(
            refresh=False, **{name: f"{value:.4g}" for name, value in values.items()}
        )

    def _close(self) -> None:
        """Closes the open bar, if any, once it has counted every batch."""
        if self._bar is not None:
            if self._num_batches > self._num_batches_told:
                self._advance(self._num_batches - self._num_batches_told)
                self._num_batches_told = self._num_batches
            self._bar.close()
            self._bar = None

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._is_shown = trainer.accelerator.is_local_main_process
        self._losses.clear()
        self._open(trainer, trainer.train_dataloader, f"epoch {trainer.run_history.current_epoch}")
        self._start_counting()

    def on_train_step_end(
        self, trainer: Trainer, batch_output: dict, step: int, **kwargs: Any
    ) -> None:
        self._num_batches += 1
        if self._num_batches >= self._next_check:  # rarely: the rest of the steps end here
            self._check(trainer, batch_output, step)

    def _check(self, trainer: Trainer, batch_output: dict, step: int) -> None:
        """Tells the bar of the batches done and keeps the loss of a loss-showing step, as
        scheduled."""
        is_telling = self._num_batches >= self._next_tell
        if is_telling:
            self._tell_bar()
        if self._next_values < math.inf:
            every = self.loss_every_n_steps
            if (step + 1) % every == 0:
                self._losses.submit(batch_output["loss"], tag="loss")
                for name, value in trainer.step_metrics.items():  # e.g. gradient_norm
                    if torch.is_tensor(value):
                        self._losses.submit(value, tag=name)
            self._next_values = self._num_batches + every - (step + 1) % every
            if is_telling and self._losses:  # shown from the bar's next redraw
                arrived = dict(self._losses.ready())  # the newest value of each
                if arrived:
                    self._show_values(arrived)
        self._next_check = min(self._next_tell, self._next_values)

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._losses.clear()
        self._close()

    def on_eval_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._is_shown = trainer.accelerator.is_local_main_process
        self._open(trainer, trainer.eval_dataloader, "evaluating")
        self._start_counting()
        self._next_values = math.inf  # the evaluation bar shows no loss
        self._next_check = self._next_tell

    def on_eval_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._num_batches += 1
        if self._num_batches >= self._next_tell:
            self._tell_bar()

    def on_eval_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()  # an early stop can leave a bar open


class RichProgressBarCallback(ProgressBarCallback):
    """A `ProgressBarCallback` drawn with `rich <https://rich.readthedocs.io>`_
    (optional: ``pip install rich``): a bar with the batch count, elapsed and remaining time,
    and the latest loss, read without host syncs as for the tqdm bar. A dataloader without a
    length shows a running count.

    Args:
        loss_every_n_steps: show the loss of every this-many-th batch; ``None`` hides it.
        **progress_kwargs: passed to `rich.progress.Progress`, e.g.
            ``refresh_per_second=2`` or ``console=rich.console.Console(stderr=True)``.

    Raises:
        ImportError: if rich is not installed.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer,
                          callbacks=[PrintProgressCallback, RichProgressBarCallback()])
        ```
    """

    def __init__(self, loss_every_n_steps: int | None = 10, **progress_kwargs: Any) -> None:
        try:
            import rich.progress
        except ImportError:
            raise ImportError(
                "RichProgressBarCallback needs rich, which is not installed: pip install rich "
                '(or pip install "trainwright[rich]"), or use ProgressBarCallback.'
            ) from None
        super().__init__(loss_every_n_steps)
        self._rich_progress = rich.progress
        self.progress_kwargs = {"transient": True, **progress_kwargs}
        #: The open `rich.progress.Progress` (``None`` between epochs).
        self.progress: Any = None
        self._task: Any = None

    def _open(self, trainer: Trainer, dataloader: Any, description: str) -> None:
        self._close()
        if not self._is_shown:
            return
        progress = self._rich_progress
        self.progress = progress.Progress(
            progress.TextColumn("[progress.description]{task.description}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TimeElapsedColumn(),
            progress.TimeRemainingColumn(),
            progress.TextColumn("{task.fields[loss]}"),
            **self.progress_kwargs,
        )
        self.progress.start()
        self._task = self.progress.add_task(
            description, total=dataloader_length(dataloader), loss=""
        )

    def _redraw_period_s(self) -> float:
        return 0.0  # rich redraws in its own thread: tell it of every batch

    def _advance(self, num_batches: int) -> None:
        if self.progress is not None:
            self.progress.advance(self._task, num_batches)

    def _show_values(self, values: dict[str, float]) -> None:
        if self.progress is not None:
            text = " ".join(f"{name} {value:.4g}" for name, value in values.items())
            self.progress.update(self._task, loss=text)

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = self._task = None


class PrintMetricsCallback(TrainerCallback):
    """Prints the numeric metrics recorded during each epoch (and each evaluation run) once
    it is over: ``epoch 3: train_loss_epoch: 0.215 | eval_loss_epoch: 0.2514 | ...``, each
    value to 4 significant digits (`format_metric_value`: ``learning_rate: 1e-06``,
    ``samples_per_s: 19470``), and
    ``evaluation: evaluation_loss: ...`` for [`evaluate`][trainwright.trainer.Trainer.evaluate].

    It prints at ``on_training_run_epoch_end``, after every ``on_eval_epoch_end``, so
    metrics that other callbacks record at epoch end are printed whatever the callback
    order; if a callback stops the run during that event (early stopping), the epoch's
    metrics are printed when the stop is reported. Override
    [`log_metrics`][trainwright.callbacks.progress.PrintMetricsCallback.log_metrics] to send them
    somewhere else.

    It reads every metric (``reads_metrics = (ALL_METRICS,)``), so it also runs after every
    callback that declares ``writes_metrics`` at ``on_training_run_epoch_end`` itself,
    whatever their ``order``.
    """

    order = 10  # after callbacks of the default order reacting to the same events
    reads_metrics = (ALL_METRICS,)

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

        Example:
            ```python
            class LogToFile(PrintMetricsCallback):
                def log_metrics(self, trainer, metrics, label):
                    with open("metrics.txt", "a") as file:
                        file.write(f"{label}: {metrics}\\n")
            ```
        """
        formatted = " | ".join(
            f"{name}: {format_metric_value(value)}" for name, value in metrics.items()
        )
        trainer.print(f"{label}: {formatted}")


#: The name pytorch-accelerated uses for `PrintMetricsCallback`.
LogMetricsCallback = PrintMetricsCallback


def _bar_class(file: IO[str] | None, draw_bar: bool | None) -> type[tqdm] | None:
    """The tqdm class that draws a bar into ``file`` (stderr when ``None``), or ``None``
    where plain lines should be printed instead. tqdm picks the notebook bar in a Jupyter
    kernel with ipywidgets, the terminal bar otherwise."""
    from tqdm.autonotebook import tqdm as auto_tqdm  # first imported, quietly, by trainwright

    if draw_bar is False:
        return None
    if draw_bar or auto_tqdm is not tqdm:  # asked for, or the notebook bar
        return auto_tqdm
    stream = sys.stderr if file is None else file
    is_terminal = getattr(stream, "isatty", lambda: False)()
    # A Jupyter kernel's output is no terminal, but renders carriage returns.
    return auto_tqdm if is_terminal or _is_in_jupyter_kernel() else None


def _is_in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (not merely with ipykernel imported)."""
    zmqshell, ipython = sys.modules.get("ipykernel.zmqshell"), sys.modules.get("IPython")
    if zmqshell is None or ipython is None:
        return False
    return isinstance(ipython.get_ipython(), zmqshell.ZMQInteractiveShell)


#: tqdm's default ``mininterval``.
_TQDM_MININTERVAL_S = 0.1
#: The longest aimed-for time between two tells of the bar.
_LONGEST_TELL_PERIOD_S = 0.05

# tqdm's default line without the bar itself (without a total, tqdm's default has none).
_LINE_FORMAT_WITH_TOTAL = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class _ProgressLines:
    """What stands for a tqdm bar where the output is not a terminal: a plain line, with no
    carriage return, at most once every ``interval`` seconds (never when ``None``), in
    tqdm's words (``epoch 3:  35% 12/34 [00:45<01:22,  3.77s/it, loss=0.2301]``)."""

    def __init__(
        self, total: int | None, description: str, interval: float | None, file: IO[str] | None
    ) -> None:
        self.total, self.description, self.interval, self.file = total, description, interval, file
        self.n = 0
        self.postfix = ""
        self._start = self._last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            line = tqdm.format_meter(
                self.n,
                self.total,
                now - self._start,
                prefix=self.description,
                postfix=self.postfix,
                bar_format=_LINE_FORMAT_WITH_TOTAL if self.total else None,
            )
            print(line, file=sys.stderr if self.file is None else self.file, flush=True)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self) -> None:
        """Nothing to clear: every line printed is complete."""


def _is_number(value: Any) -> bool:
    if isinstance(value, numbers.Number):
        return True
    return hasattr(value, "numel") and value.numel() == 1
