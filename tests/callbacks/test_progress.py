"""Progress printing, the progress bar, and printed metrics."""

from __future__ import annotations

import io
import time

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from tqdm.std import tqdm

from trainwright import TrainerCallback
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    LogMetricsCallback,
    MoveModulesToDeviceCallback,
    PrintMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    TerminateOnNaNCallback,
)


def test_default_callbacks():
    assert (
        MoveModulesToDeviceCallback,
        TerminateOnNaNCallback,
        PrintProgressCallback,
        ProgressBarCallback,
        PrintMetricsCallback,
    ) == DEFAULT_CALLBACKS


def test_log_metrics_callback_is_print_metrics_callback():
    assert LogMetricsCallback is PrintMetricsCallback


class Accuracy(TrainerCallback):
    writes_metrics = ("accuracy",)

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", 0.75)


def test_metrics_recorded_during_the_epoch_are_printed_whatever_the_order(capsys):
    # the printer is given before the metric writer: it still prints the metric
    trainer = make_trainer(callbacks=[PrintMetricsCallback, Accuracy()])
    trainer.train(
        make_dataset(4), num_epochs=2, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1: accuracy: 0.75 | eval_loss_epoch: ")
    assert "train_loss_epoch: " in lines[1]


class SpeedAndLearningRate(TrainerCallback):
    writes_metrics = ("learning_rate", "samples_per_s")

    def on_train_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("learning_rate", 1e-06)
        trainer.run_history.update_metric("samples_per_s", 19469.574)


def test_printed_metrics_show_significant_digits(capsys):
    trainer = make_trainer(callbacks=[PrintMetricsCallback, SpeedAndLearningRate()])
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    loss = trainer.run_history.get_latest_metric("train_loss_epoch")
    assert line == (
        f"epoch 1: learning_rate: 1e-06 | samples_per_s: 19470 | train_loss_epoch: {loss:.4g}"
    )


def test_log_metrics_can_be_overridden():
    class Collect(PrintMetricsCallback):
        logged = []

        def log_metrics(self, trainer, metrics, label):
            self.logged.append((label, dict(metrics)))

    collector = Collect()
    trainer = make_trainer(callbacks=[collector])
    trainer.train(make_dataset(4), num_epochs=2, per_device_batch_size=2)
    trainer.evaluate(make_dataset(4))
    assert [(label, sorted(m)) for label, m in collector.logged] == [
        ("epoch 1", ["train_loss_epoch"]),
        ("epoch 2", ["train_loss_epoch"]),
        ("evaluation", ["evaluation_loss"]),
    ]
    first_loss = trainer.run_history.get_metric_values("train_loss_epoch")[0]
    assert collector.logged[0][1]["train_loss_epoch"] == first_loss


def test_the_metrics_of_an_early_stopped_epoch_are_printed(capsys):
    from trainwright.callbacks import EarlyStoppingCallback

    trainer = make_trainer(
        callbacks=[PrintMetricsCallback, EarlyStoppingCallback(early_stopping_threshold=10.0)]
    )
    trainer.train(
        make_dataset(4), num_epochs=5, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]


def test_progress_lines_and_bars(capsys):
    trainer = make_trainer(
        callbacks=[
            PrintProgressCallback,
            ProgressBarCallback(draw_bar=True, mininterval=0, leave=True),
        ]
    )
    trainer.train(
        make_dataset(6), num_epochs=2, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    captured = capsys.readouterr()
    assert "Starting training run: 2 epoch(s), 6 optimizer update(s)" in captured.out
    assert "Starting epoch 2" in captured.out
    assert "Finishing training run" in captured.out
    assert "epoch 1" in captured.err and "3/3" in captured.err  # tqdm writes to stderr
    assert "evaluating" in captured.err


class BatchLosses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_train_step_end(self, trainer, batch_output, **kwargs):
        self.losses.append(batch_output["loss"].item())


def test_progress_bar_shows_the_latest_loss_at_its_interval():
    output, losses = io.StringIO(), BatchLosses()
    bar = ProgressBarCallback(
        loss_every_n_steps=2, draw_bar=True, file=output, mininterval=0, leave=True
    )
    trainer = make_trainer(callbacks=[bar, losses])
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    text = output.getvalue()
    assert f"loss={losses.losses[1]:.4g}" in text  # the second batch's, shown from the third
    assert f"loss={losses.losses[0]:.4g}" not in text  # not a logging step


class LengthlessBatches(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(make_dataset(6))


def drive_train_epoch(callback, num_steps):
    """Fires a training epoch's events at ``callback`` for a dataloader without a length."""
    trainer = make_trainer()
    trainer.train_dataloader = torch.utils.data.DataLoader(LengthlessBatches(), batch_size=2)
    callback.on_train_epoch_start(trainer)
    for step in range(num_steps):
        batch_output = {"loss": torch.tensor(0.5 + step), "batch_size": 2}
        callback.on_train_step_end(trainer, batch=None, batch_output=batch_output, step=step)
    return trainer


def test_progress_bar_counts_batches_of_a_dataloader_without_length():
    output = io.StringIO()
    bar = ProgressBarCallback(loss_every_n_steps=1, draw_bar=True, file=output, mininterval=0)
    trainer = drive_train_epoch(bar, num_steps=5)
    text = output.getvalue()
    assert "5it [" in text  # a count: tqdm shows "n/total" only with a total
    bar.on_train_epoch_end(trainer)


def test_rich_progress_bar_advances_and_shows_the_loss():
    pytest.importorskip("rich")
    from rich.console import Console

    from trainwright.callbacks import RichProgressBarCallback

    rich_bar = RichProgressBarCallback(loss_every_n_steps=1, console=Console(file=io.StringIO()))

    class Probe(TrainerCallback):
        order = 100
        seen = []

        def on_train_step_end(self, trainer, step, **kwargs):
            (task,) = rich_bar.progress.tasks
            self.seen.append((task.completed, task.total, task.fields["loss"]))

    trainer = make_trainer(callbacks=[rich_bar, Probe()])
    trainer.train(make_dataset(6), num_epochs=1, per_device_batch_size=2)
    assert [(completed, total) for completed, total, _ in Probe.seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(loss.startswith("loss ") for _, _, loss in Probe.seen)
    assert rich_bar.progress is None  # closed at the epoch's end
    # without a length: a running count
    drive_train_epoch(rich_bar, num_steps=4)
    (task,) = rich_bar.progress.tasks
    assert (task.completed, task.total) == (4, None)
    rich_bar.on_train_epoch_end(trainer)


class TerminalStream(io.StringIO):
    """Text written to a terminal, as tqdm sees it."""

    def isatty(self):
        return True


def train_with_bar(bar, num_samples=6):
    trainer = make_trainer(callbacks=[bar])
    trainer.train(
        make_dataset(num_samples),
        num_epochs=1,
        eval_dataset=make_dataset(2),
        per_device_batch_size=2,
    )


def test_a_terminal_gets_a_redrawing_bar():
    output = TerminalStream()
    train_with_bar(ProgressBarCallback(file=output, mininterval=0))
    assert "\r" in output.getvalue() and "3/3" in output.getvalue()


def test_output_that_is_not_a_terminal_gets_plain_lines_without_carriage_returns():
    output = io.StringIO()
    losses = BatchLosses()
    bar = ProgressBarCallback(loss_every_n_steps=1, line_every_n_seconds=0, file=output)
    trainer = make_trainer(callbacks=[bar, losses])
    trainer.train(
        make_dataset(6), num_epochs=1, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    text = output.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # one line per batch at this interval: 3 training batches, then 1 evaluation batch
    assert [line.split(" [")[0] for line in lines] == [
        "epoch 1:  33% 1/3",
        "epoch 1:  67% 2/3",
        "epoch 1: 100% 3/3",
        "evaluating: 100% 1/1",
    ]
    # a line is printed as the step ends, with the latest loss shown before it
    assert lines[2].endswith(f"loss={losses.losses[1]:.4g}]")


def test_plain_lines_keep_to_their_interval_and_can_be_turned_off():
    for interval in (3600, None):  # far longer than this run; none at all
        output = io.StringIO()
        train_with_bar(ProgressBarCallback(line_every_n_seconds=interval, file=output))
        assert output.getvalue() == ""


def test_plain_lines_for_a_dataloader_without_length_count_batches():
    output = io.StringIO()
    bar = ProgressBarCallback(loss_every_n_steps=None, line_every_n_seconds=0, file=output)
    trainer = drive_train_epoch(bar, num_steps=2)
    bar.on_train_epoch_end(trainer)
    assert [line.split(" [")[0] for line in output.getvalue().splitlines()] == [
        "epoch 1: 1it",
        "epoch 1: 2it",
    ]


def test_draw_bar_false_prints_plain_lines_even_to_a_terminal():
    output = TerminalStream()
    train_with_bar(ProgressBarCallback(draw_bar=False, line_every_n_seconds=0, file=output))
    assert "\r" not in output.getvalue() and "3/3" in output.getvalue()


def test_a_negative_line_interval_is_rejected():
    with pytest.raises(ValueError, match="line_every_n_seconds must be >= 0"):
        ProgressBarCallback(line_every_n_seconds=-1)


def test_the_bar_is_told_of_the_batches_at_a_bounded_rate(monkeypatch):
    # A clock that moves 1 µs per reading: the steps look fast, so the bar is told of the
    # batches done after 1, 3, 7, 15, 31 and 63 of the 64 batches (each gap at most twice
    # the last), and of the 64th as it closes; tqdm's own update runs 7 times, not 64.
    readings = iter(range(10**9))
    monkeypatch.setattr(time, "monotonic", lambda: next(readings) * 1e-6)
    calls = []
    original_update = tqdm.update
    monkeypatch.setattr(
        tqdm, "update", lambda bar, n=1: (calls.append(n), original_update(bar, n))[1]
    )
    output = TerminalStream()
    trainer = make_trainer(callbacks=[ProgressBarCallback(file=output, leave=True)])
    trainer.train(make_dataset(64), num_epochs=1, per_device_batch_size=1)
    assert calls == [1, 2, 4, 8, 16, 32, 1]
    assert "64/64" in output.getvalue()  # complete when closed
