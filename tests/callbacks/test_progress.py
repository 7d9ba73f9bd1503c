"""Progress printing, the progress bar, and printed metrics."""

from __future__ import annotations

from conftest import make_dataset, make_trainer
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
    assert DEFAULT_CALLBACKS == (
        MoveModulesToDeviceCallback,
        TerminateOnNaNCallback,
        PrintProgressCallback,
        ProgressBarCallback,
        PrintMetricsCallback,
    )


def test_log_metrics_callback_is_print_metrics_callback():
    assert LogMetricsCallback is PrintMetricsCallback


class Accuracy(TrainerCallback):
    writes_metrics = ("accuracy",)

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", 0.75)


def test_metrics_recorded_during_the_epoch_are_printed_whatever_the_order(capsys):
    # the printer is given before the metric writer: it still prints the metric
    trainer = make_trainer(callbacks=[PrintMetricsCallback, Accuracy()])
    trainer.train(make_dataset(4), num_epochs=2, eval_dataset=make_dataset(2), per_device_batch_size=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1: accuracy: 0.7500 | eval_loss_epoch: ")
    assert "train_loss_epoch: " in lines[1]


def test_log_metrics_can_be_overridden():
    class Collect(PrintMetricsCallback):
        logged = []

        def log_metrics(self, trainer, metrics):
            self.logged.append(dict(metrics))

    collector = Collect()
    trainer = make_trainer(callbacks=[collector])
    trainer.train(make_dataset(4), num_epochs=2, per_device_batch_size=2)
    trainer.evaluate(make_dataset(4))
    assert [sorted(m) for m in collector.logged] == [
        ["train_loss_epoch"], ["train_loss_epoch"], ["evaluation_loss"]
    ]
    assert collector.logged[0]["train_loss_epoch"] == trainer.run_history.get_metric_values(
        "train_loss_epoch"
    )[0]


def test_progress_lines_and_bars(capsys):
    trainer = make_trainer(callbacks=[PrintProgressCallback, ProgressBarCallback])
    trainer.train(make_dataset(6), num_epochs=2, eval_dataset=make_dataset(2), per_device_batch_size=2)
    captured = capsys.readouterr()
    assert "Starting training run: 2 epoch(s), 6 optimizer update(s)" in captured.out
    assert "Starting epoch 2" in captured.out
    assert "Finishing training run" in captured.out
    assert "epoch 1" in captured.err and "3/3" in captured.err  # tqdm writes to stderr
    assert "evaluating" in captured.err
