"""Early stopping and stopping on a non-finite loss."""

from __future__ import annotations

import io
import math

import pytest
import torch
from helpers.host_syncs import ALL_HOST_READS, HostSyncCounter, UninstallLast
from helpers.tiny import RecorderCallback, make_dataset, make_model, make_trainer
from torch.utils.data import TensorDataset

from trainwright import StopTrainingError, Trainer, TrainerCallback
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    EarlyStoppingCallback,
    NonFiniteLossError,
    PrintMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
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


def test_checked_every_step_a_nan_loss_stops_the_run_at_its_step(capsys):
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[TerminateOnNaNCallback(check_every_n_steps=1), recorder])
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


class CaptureStop(TrainerCallback):
    error = None

    def on_stop_training_error(self, trainer, error, **kwargs):
        self.error = error


def test_the_stop_message_names_the_step_and_no_system_exit():
    capture = CaptureStop()
    trainer = make_trainer(callbacks=[TerminateOnNaNCallback(check_every_n_steps=1), capture])
    trainer.train(
        dataset_with_nan_at(7),
        num_epochs=1,
        per_device_batch_size=2,
        train_dataloader_kwargs={"shuffle": False},
    )
    assert str(capture.error) == "Stopping training: the loss is nan at step 3 of epoch 1."


def test_by_default_the_run_stops_at_the_next_check_naming_the_first_bad_loss(capsys):
    recorder, capture = RecorderCallback(), CaptureStop()
    trainer = make_trainer(
        callbacks=[
            TerminateOnNaNCallback(check_every_n_steps=4),
            recorder,
            capture,
            PrintMetricsCallback(),
        ]
    )
    trainer.train(
        dataset_with_nan_at(5, num_samples=24),  # 12 steps; the NaN in step 2
        num_epochs=2,
        per_device_batch_size=2,
        train_dataloader_kwargs={"shuffle": False},
    )
    # checked after steps 3, 7 and 11: the run stops at the first check after the NaN
    started = [step for event, step in recorder.steps if event == "on_train_step_start"]
    assert started == [0, 1, 2, 3]
    error = capture.error
    assert isinstance(error, NonFiniteLossError) and isinstance(error, StopTrainingError)
    assert (math.isnan(error.loss), error.epoch, error.step) == (True, 1, 2)
    assert str(error) == "Stopping training: the loss is nan at step 2 of epoch 1."
    history = trainer.run_history
    assert history.get_metric_values("non_finite_loss_step") == [2]
    assert math.isnan(history.get_latest_metric("non_finite_loss"))
    assert "train_loss_epoch" not in history.get_metric_names()
    assert "epoch 1: non_finite_loss: nan | non_finite_loss_step: 2" in capsys.readouterr().out


class NanFromStep(Trainer):
    """Its training loss is multiplied by ``factor`` from step ``bad_step`` of epoch
    ``bad_epoch`` on (0-based), until the end of that epoch."""

    bad_epoch, bad_step, factor = 1, 2, math.nan

    def calculate_train_batch_loss(self, batch):
        batch_output = super().calculate_train_batch_loss(batch)
        if self.progress.epoch == self.bad_epoch and self.progress.step >= self.bad_step:
            batch_output["loss"] = batch_output["loss"] * self.factor
        return batch_output


def nan_trainer(callbacks, bad_epoch=1, bad_step=2, factor=math.nan, lr=0.0):
    model = make_model()
    trainer = NanFromStep(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=lr),
        callbacks=callbacks,
    )
    trainer.bad_epoch, trainer.bad_step, trainer.factor = bad_epoch, bad_step, factor
    return trainer


def test_an_infinite_loss_is_reported_with_its_value():
    capture = CaptureStop()
    trainer = nan_trainer([TerminateOnNaNCallback(), capture], bad_epoch=0, factor=math.inf)
    trainer.train(make_dataset(12), num_epochs=2, per_device_batch_size=2)
    assert (capture.error.loss, capture.error.epoch, capture.error.step) == (math.inf, 1, 2)
    assert "the loss is inf at step 2 of epoch 1" in str(capture.error)


def test_a_nan_loss_never_reaches_a_recorded_epoch_or_a_best_model(tmp_path):
    # The default interval (100 steps) is longer than the epoch (6 steps): the epoch's last
    # step is checked, so epoch 2's NaN stops the run before anything of epoch 2 is recorded.
    recorder = RecorderCallback()
    saver = SaveBestModelCallback(tmp_path / "best.pt", load_saved_checkpoint=False)
    trainer = nan_trainer([TerminateOnNaNCallback(), saver, recorder], lr=0.1)
    trainer.train(
        make_dataset(12), num_epochs=3, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    history = trainer.run_history
    assert len(history.get_metric_values("train_loss_epoch")) == 1  # epoch 1 only
    assert len(history.get_metric_values("eval_loss_epoch")) == 1
    assert history.get_metric_values("non_finite_loss_step") == [2]
    assert torch.load(tmp_path / "best.pt", weights_only=False)["epoch"] == 1
    events = [event for event, _ in recorder.events]
    assert events.count("on_training_run_epoch_end") == 1
    assert events.count("on_eval_epoch_start") == 1
    # epoch 2 ran to its last step (5), whose check found the NaN of step 2
    assert [s for e, s in recorder.steps if e == "on_train_step_start"][-1] == 5


@pytest.mark.parametrize(
    "limits",
    [{"max_num_train_batches_per_epoch": 4}, {"max_num_train_steps": 10}],
)
def test_the_last_step_of_an_epoch_cut_short_is_checked(limits):
    trainer = nan_trainer([TerminateOnNaNCallback(), CaptureStop()])
    trainer.train(make_dataset(12), num_epochs=3, per_device_batch_size=2, **limits)
    # epoch 2 ends after 4 steps: at its last step, not at the epoch's end, the NaN is found
    assert "train_loss_epoch" in trainer.run_history.get_metric_names()
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1
    assert trainer.run_history.get_metric_values("non_finite_loss_step") == [2]


def test_an_epoch_ended_early_is_checked_before_its_evaluation(tmp_path):
    class EndEpochAtStep3(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 3:
                trainer.request_end_epoch()

    recorder = RecorderCallback()
    saver = SaveBestModelCallback(tmp_path / "best.pt", load_saved_checkpoint=False)
    trainer = nan_trainer(
        [TerminateOnNaNCallback(), EndEpochAtStep3(), saver, recorder], bad_epoch=0
    )
    trainer.train(
        make_dataset(12), num_epochs=2, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    events = [event for event, _ in recorder.events]
    assert "on_eval_epoch_start" not in events and "on_training_run_epoch_end" not in events
    assert not (tmp_path / "best.pt").exists()
    assert trainer.run_history.get_metric_values("non_finite_loss_step") == [2]
    # recorded before on_train_epoch_end, where the check runs: NaN, not a good value
    assert math.isnan(trainer.run_history.get_latest_metric("train_loss_epoch"))


def test_a_run_stopped_for_another_reason_reports_an_unchecked_bad_loss():
    class StopAtStep4(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 4:
                raise StopTrainingError("enough")

    capture = CaptureStop()
    trainer = nan_trainer([TerminateOnNaNCallback(), StopAtStep4(), capture], bad_epoch=0)
    with pytest.warns(RuntimeWarning, match="the loss is nan at step 2 of epoch 1"):
        trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=2)
    assert str(capture.error) == "enough"
    assert trainer.run_history.get_metric_values("non_finite_loss_step") == [2]


def test_a_resumed_run_checks_the_losses_left_unchecked_in_its_state(tmp_path):
    class FailAtStep4(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 4:
                raise RuntimeError("crash")

    def callbacks():
        return [
            TerminateOnNaNCallback(),
            CaptureStop(),
            SaveTrainingStateCallback(tmp_path, save_every_n_steps=4, save_at_end=False),
        ]

    # lr 0.1: from the NaN of step 2 on, the weights and every later loss are NaN
    trainer = nan_trainer([*callbacks(), FailAtStep4()], bad_epoch=0, lr=0.1)
    with pytest.raises(RuntimeError, match="crash"):
        trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=2)
    state = find_latest_training_state(tmp_path)  # saved after step 3, steps 0-3 unchecked
    resumed_callbacks = callbacks()
    resumed = nan_trainer(resumed_callbacks, bad_epoch=0, lr=0.1)
    resumed.train(make_dataset(12), num_epochs=1, per_device_batch_size=2, resume_from=state)
    error = resumed_callbacks[1].error
    assert (error.epoch, error.step) == (1, 2)  # not 4, the first bad loss of the resumed run


def test_the_check_interval_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="check_every_n_steps"):
        TerminateOnNaNCallback(check_every_n_steps=0)


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


def test_the_default_callbacks_read_the_host_only_at_the_nan_checks():
    counter = HostSyncCounter(names=ALL_HOST_READS)
    defaults = [
        TerminateOnNaNCallback(check_every_n_steps=4) if c is TerminateOnNaNCallback else c
        for c in DEFAULT_CALLBACKS
    ]
    # the bar drawing every batch and showing every loss: its reads are of landed copies
    defaults[defaults.index(ProgressBarCallback)] = ProgressBarCallback(
        loss_every_n_steps=1, draw_bar=True, file=io.StringIO(), mininterval=0
    )
    trainer = make_trainer(callbacks=[*defaults, counter, UninstallLast(counter)])
    try:
        trainer.train(
            make_dataset(40),
            num_epochs=2,
            eval_dataset=make_dataset(8),
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            max_grad_norm=1.0,
        )
    finally:
        counter._uninstall()
    # 10 steps an epoch, checked after steps 3 and 7 and at the last one: one read each
    assert counter.read_at == [(0, 3), (0, 7), (0, 9), (1, 3), (1, 7), (1, 9)]
