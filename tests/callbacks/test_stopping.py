"""Early stopping and stopping on a non-finite loss."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny import RecorderCallback, make_dataset, make_model, make_trainer
from torch.utils.data import TensorDataset

from trainwright import TrainerCallback
from trainwright.callbacks import (
    EarlyStoppingCallback,
    PrintProgressCallback,
    SaveBestModelCallback,
    SaveTrainingStateCallback,
    TerminateOnNaNCallback,
)
from trainwright.checkpointing import find_latest_training_state


def dataset_with_nan_at(index: int, num_samples: int = 12) -> TensorDataset:
    inputs, targets = make_dataset(num_samples).tensors
    inputs = inputs.clone()
    inputs[index] = math.nan
    return TensorDataset(inputs, targets)


def test_nan_loss_stops_the_run_naming_the_step(capsys):
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[TerminateOnNaNCallback(), recorder])
    trainer.train(
        dataset_with_nan_at(5),
        num_epochs=3,
        per_device_batch_size=2,
        train_dataloader_kwargs={"shuffle": False},
    )
    stop_events = [event for event, _ in recorder.events if event == "on_stop_training_error"]
    assert stop_events == ["on_stop_training_error"]
    # sample 5 is in batch 2: on the CPU the run stops in that step's on_train_step_end
    # (TerminateOnNaN runs before the recorder), so step 2 is the last one started
    started = [step for event, step in recorder.steps if event == "on_train_step_start"]
    assert started == [0, 1, 2]
    assert recorder.events[-1][0] == "on_training_run_end"


def test_the_stop_message_names_the_step_and_no_system_exit():
    class Capture(TrainerCallback):
        message = None

        def on_stop_training_error(self, trainer, error, **kwargs):
            self.message = str(error)

    capture = Capture()
    trainer = make_trainer(callbacks=[TerminateOnNaNCallback(), capture])
    trainer.train(
        dataset_with_nan_at(7),
        num_epochs=1,
        per_device_batch_size=2,
        train_dataloader_kwargs={"shuffle": False},
    )
    assert capture.message == "Stopping training: the loss is nan at step 3 of epoch 1."


def test_inf_loss_also_stops():
    class InfLoss(torch.nn.Module):
        def forward(self, outputs, targets):
            return torch.nn.functional.cross_entropy(outputs, targets) * math.inf

    recorder = RecorderCallback()
    model = make_model()
    from trainwright import Trainer

    trainer = Trainer(
        model,
        InfLoss(),
        torch.optim.SGD(model.parameters(), lr=0.0),
        callbacks=[TerminateOnNaNCallback(), recorder],
    )
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=2)
    assert ("on_stop_training_error", ("error",)) in recorder.events
    assert [s for e, s in recorder.steps if e == "on_train_step_start"] == [0]


def test_the_same_trainer_trains_normally_afterwards():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[TerminateOnNaNCallback(), recorder])
    trainer.train(dataset_with_nan_at(0), num_epochs=2, per_device_batch_size=2)
    with torch.no_grad():  # the NaN update poisoned the weights: start them afresh
        for parameter, fresh in zip(trainer.get_model().parameters(), make_model().parameters()):
            parameter.copy_(fresh)
    recorder.events.clear()
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=2)
    assert ("on_stop_training_error", ("error",)) not in recorder.events
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2
    assert all(math.isfinite(v) for v in trainer.run_history.get_metric_values("train_loss_epoch"))


class ScriptedMetric(TrainerCallback):
    """Records a chosen sequence of values as 'score', one per epoch."""

    writes_metrics = ("score",)

    def __init__(self, values):
        self.values = list(values)

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("score", self.values.pop(0))


def epochs_run(values, **early_stopping_kwargs) -> int:
    trainer = make_trainer(
        callbacks=[
            ScriptedMetric(values),
            EarlyStoppingCallback(watch_metric="score", **early_stopping_kwargs),
        ]
    )
    trainer.train(
        make_dataset(4),
        num_epochs=len(values),
        eval_dataset=make_dataset(2),
        per_device_batch_size=2,
    )
    return len(trainer.run_history.get_metric_values("train_loss_epoch"))


def test_early_stopping_patience_lower_is_better():
    values = [1.0, 0.9, 0.95, 0.92, 0.91, 0.5]
    assert epochs_run(values, early_stopping_patience=3, early_stopping_threshold=0.0) == 5
    assert epochs_run(values, early_stopping_patience=1, early_stopping_threshold=0.0) == 3
    assert epochs_run(values, early_stopping_patience=4, early_stopping_threshold=0.0) == 6


def test_early_stopping_minimum_improvement():
    values = [1.0, 0.995, 0.99, 0.985, 0.5]
    # each step improves by 0.005 < 0.01: no improvement counts
    assert epochs_run(values, early_stopping_patience=2, early_stopping_threshold=0.01) == 3
    assert epochs_run(values, early_stopping_patience=2, early_stopping_threshold=0.001) == 5


def test_the_stop_message_and_the_saved_best_model_report_the_same_best(tmp_path, capsys):
    # 0.995 and 0.99 beat 1.0 by less than the threshold: early stopping still counts from
    # 1.0 (epoch 1), while the saver keeps epoch 3's 0.99; both are reported.
    trainer = make_trainer(
        callbacks=[
            PrintProgressCallback,
            ScriptedMetric([1.0, 0.995, 0.99]),
            EarlyStoppingCallback(2, early_stopping_threshold=0.01, watch_metric="score"),
            SaveBestModelCallback(tmp_path / "best.pt", watch_metric="score"),
        ]
    )
    trainer.train(
        make_dataset(4), num_epochs=3, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    printed = capsys.readouterr().out
    assert (
        "Stopping early: score has not improved on 1 (epoch 1) by more than 0.01 for 2 "
        "epoch(s); the best value is 0.99 (epoch 3)." in printed
    )
    assert "Loading the best model (score 0.99 at epoch 3)" in printed


def test_the_stop_message_without_a_smaller_best_names_one_value():
    trainer = make_trainer(
        callbacks=[ScriptedMetric([0.5, 0.6]), EarlyStoppingCallback(1, watch_metric="score")]
    )
    trainer.train(
        make_dataset(4), num_epochs=2, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    assert trainer.callback_handler.callbacks[-1]._stop_message() == (
        "Stopping early: score has not improved on 0.5 (epoch 1) by more than 0.01 for 1 epoch(s)."
    )


def test_the_stop_message_of_a_metric_that_was_always_nan():
    captured = []

    class Capture(TrainerCallback):
        def on_stop_training_error(self, trainer, error, **kwargs):
            captured.append(str(error))

    trainer = make_trainer(
        callbacks=[
            ScriptedMetric([math.nan, math.nan]),
            EarlyStoppingCallback(2, watch_metric="score"),
            Capture(),
        ]
    )
    trainer.train(
        make_dataset(4), num_epochs=3, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    assert captured == ["Stopping early: score has been NaN for 2 epoch(s)."]


def test_early_stopping_greater_is_better():
    values = [0.5, 0.6, 0.55, 0.58, 0.9]
    assert (
        epochs_run(
            values, early_stopping_patience=2, early_stopping_threshold=0.0, greater_is_better=True
        )
        == 4
    )
    assert (
        epochs_run(
            values, early_stopping_patience=2, early_stopping_threshold=0.0, greater_is_better=False
        )
        == 3
    )


def test_a_metric_that_will_never_be_recorded_is_an_error_at_the_start():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[EarlyStoppingCallback(watch_metric="accuracy")])
    with pytest.raises(ValueError, match="will be recorded: train_loss_epoch") as info:
        trainer.train(make_dataset(4), num_epochs=2, per_device_batch_size=2)
    assert "accuracy" in str(info.value)
    # nothing trained: the error came before the first epoch
    assert trainer.run_history.get_metric_names() == set()
    assert recorder.events == []


def test_an_undeclared_user_metric_is_warned_about_at_the_start():
    class Undeclared(TrainerCallback):
        def on_eval_epoch_end(self, trainer, **kwargs):
            trainer.run_history.update_metric("accuracy", 0.5)

    trainer = make_trainer(callbacks=[Undeclared(), EarlyStoppingCallback(watch_metric="accuracy")])
    with pytest.warns(UserWarning, match="eval_loss_epoch, train_loss_epoch"):
        trainer.train(
            make_dataset(4), num_epochs=3, eval_dataset=make_dataset(2), per_device_batch_size=2
        )
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2


def test_early_stopping_state_round_trips():
    callback = EarlyStoppingCallback(early_stopping_patience=3)
    callback.monitor.update(0.4, epoch=2)
    callback.best_seen.update(0.395, epoch=3)
    callback.epochs_without_improvement = 1
    restored = EarlyStoppingCallback(early_stopping_patience=3)
    restored.load_state_dict(callback.state_dict())
    assert restored.monitor.best_value == 0.4
    assert restored.monitor.best_epoch == 2
    assert (restored.best_seen.best_value, restored.best_seen.best_epoch) == (0.395, 3)
    assert restored.epochs_without_improvement == 1


class EpochNumbers(TrainerCallback):
    order = -5  # before early stopping, which raises in the same event

    def __init__(self):
        self.epochs: list[int] = []

    def on_training_run_epoch_end(self, trainer, **kwargs):
        self.epochs.append(trainer.run_history.current_epoch)


def test_an_epoch_ended_by_early_stopping_counts(tmp_path):
    numbers = EpochNumbers()
    best = SaveBestModelCallback(tmp_path / "best.pt")
    callbacks = [numbers, EarlyStoppingCallback(early_stopping_patience=1), best]
    states = SaveTrainingStateCallback(tmp_path / "states")
    trainer = make_trainer(callbacks=[*callbacks, states], lr=0.0)  # lr 0: no improvement
    data = {"eval_dataset": make_dataset(4, seed=1), "per_device_batch_size": 2}
    trainer.train(make_dataset(4), num_epochs=5, **data)  # stops at the end of epoch 2
    assert numbers.epochs == [1, 2]
    assert (trainer.run_history.current_epoch, trainer.progress.epoch) == (3, 2)
    # the state saved at the stop resumes with the same counters as the run in memory
    resumed = make_trainer(callbacks=[EpochNumbers(), SaveTrainingStateCallback(tmp_path / "x")])
    resumed.load_training_state(find_latest_training_state(tmp_path / "states"))
    assert (resumed.run_history.current_epoch, resumed.progress.epoch) == (3, 2)
    # continuing the history numbers the next epochs on: best-model epochs are distinct
    trainer.train(make_dataset(4), num_epochs=5, reset_run_history=False, **data)
    assert numbers.epochs == [1, 2, 3, 4]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3
