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
    assert lines[0].startswith("epoch 1: accuracy: 0.7500 | eval_loss_epoch: ")
    assert "train_loss_epoch: " in lines[1]


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
        callbacks=[PrintProgressCallback, ProgressBarCallback(mininterval=0, leave=True)]
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
