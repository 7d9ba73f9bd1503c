"""Experiment trackers (TensorBoard, MLflow, custom) and the CSV logger, read back with the
libraries' own readers."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from accelerate.tracking import GeneralTracker
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import (
    CallbackSetupError,
    CSVLoggerCallback,
    ExperimentTrackerCallback,
    LearningRateMonitorCallback,
)
from trainwright.callbacks.loggers import tracker_safe_config


class RecordingTracker(GeneralTracker):
    """An Accelerate tracker that keeps every call in memory."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.config: dict | None = None
        self.logs: list[tuple[dict, int | None]] = []
        self.started = self.finished = 0

    @property
    def tracker(self):
        return self

    def start(self):
        self.started += 1

    def store_init_configuration(self, values):
        self.config = dict(values)

    def log(self, values, step=None, **kwargs):
        self.logs.append((dict(values), step))

    def finish(self):
        self.finished += 1

    def steps_of(self, name: str) -> list[int]:
        return [step for values, step in self.logs if name in values]

    def values_of(self, name: str) -> list[float]:
        return [values[name] for values, _ in self.logs if name in values]


class FailingTracker(RecordingTracker):
    name = "failing"

    def __init__(self, fail_in: tuple[str, ...] = ("start", "store", "log", "finish")):
        super().__init__()
        self.fail_in = fail_in
        self.calls = 0

    def _maybe_fail(self, what):
        self.calls += 1
        if what in self.fail_in:
            raise ConnectionError(f"tracking server unreachable ({what})")

    def start(self):
        self._maybe_fail("start")

    def store_init_configuration(self, values):
        self._maybe_fail("store")

    def log(self, values, step=None, **kwargs):
        self._maybe_fail("log")

    def finish(self):
        self._maybe_fail("finish")


def train(callbacks, num_epochs=2, **kwargs):
    trainer = make_trainer(callbacks=callbacks)
    trainer.train(
        make_dataset(12),
        num_epochs=num_epochs,
        eval_dataset=make_dataset(4),
        per_device_batch_size=2,
        **kwargs,
    )
    return trainer


def test_tracker_gets_config_step_values_and_epoch_metrics():
    tracker = RecordingTracker()
    trainer = train([ExperimentTrackerCallback([tracker], log_every_n_updates=4)])
    history = trainer.run_history
    assert tracker.started == tracker.finished == 1
    # the run config, flattened to values every tracker accepts
    assert tracker.config["num_epochs"] == 2
    assert tracker.config["train_dl_kwargs.batch_size"] == 2
    assert tracker.config["max_num_train_steps"] == "None"
    # 6 updates per epoch, 12 in all: logged at updates 4, 8 and 12
    assert tracker.steps_of("train_loss_step") == [4, 8, 12]
    assert tracker.values_of("learning_rate_step") == [0.1, 0.1, 0.1]
    assert all(isinstance(value, float) for value in tracker.values_of("train_loss_step"))
    # epoch metrics at the epoch number, equal to the run history's
    assert tracker.steps_of("train_loss_epoch") == [1, 2]
    assert tracker.values_of("train_loss_epoch") == history.get_metric_values("train_loss_epoch")
    assert tracker.values_of("eval_loss_epoch") == history.get_metric_values("eval_loss_epoch")


def test_logged_step_loss_is_the_loss_of_the_batch_completing_the_update():
    class BatchLosses(TrainerCallback):
        losses: list[float] = []

        def on_train_step_end(self, trainer, batch_output, **kwargs):
            self.losses.append(batch_output["loss"].item())

    tracker, losses = RecordingTracker(), BatchLosses()
    train([ExperimentTrackerCallback([tracker], log_every_n_updates=3), losses], num_epochs=1)
    assert tracker.values_of("train_loss_step") == pytest.approx(
        [losses.losses[2], losses.losses[5]]
    )


def test_with_accumulation_step_values_follow_optimizer_updates():
    tracker = RecordingTracker()
    train(
        [ExperimentTrackerCallback([tracker], log_every_n_updates=2, epoch_step="update")],
        gradient_accumulation_steps=2,
    )
    # 6 batches, 3 updates per epoch: updates 2, 4 and 6
    assert tracker.steps_of("train_loss_step") == [2, 4, 6]
    assert tracker.steps_of("train_loss_epoch") == [3, 6]  # epoch_step="update"


def test_learning_rate_per_param_group_and_per_epoch_metrics_from_other_callbacks():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01},
        ]
    )
    tracker = RecordingTracker()
    from trainwright import Trainer

    trainer = Trainer(
        model,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        callbacks=[
            ExperimentTrackerCallback([tracker], log_every_n_updates=6),
            LearningRateMonitorCallback(),
        ],
    )
    trainer.train(make_dataset(12), num_epochs=2, per_device_batch_size=2)
    assert tracker.values_of("learning_rate_group_0_step") == [0.1, 0.1]
    assert tracker.values_of("learning_rate_group_1_step") == [0.01, 0.01]
    # recorded in the run history by the monitor, logged per epoch by the tracker callback
    assert tracker.steps_of("learning_rate_group_1") == [1, 2]


def test_evaluate_outside_training_logs_evaluation_loss_in_a_run_of_its_own_when_asked():
    tracker = RecordingTracker()
    callback = ExperimentTrackerCallback([tracker], log_every_n_updates=None, evaluation_run="new")
    trainer = train([callback])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.evaluate(make_dataset(4))
    assert tracker.started == tracker.finished == 2
    assert tracker.steps_of("evaluation_loss") == [2]  # after 2 completed epochs
    assert tracker.steps_of("train_loss_step") == []  # log_every_n_updates=None


def test_a_tracker_that_cannot_be_reopened_for_evaluate_is_started_anew_with_a_warning():
    tracker = RecordingTracker()
    trainer = train([ExperimentTrackerCallback([tracker], log_every_n_updates=None)])
    with pytest.warns(UserWarning, match="cannot reopen the 'recording' run"):
        trainer.evaluate(make_dataset(4))
    assert tracker.started == tracker.finished == 2
    assert tracker.steps_of("evaluation_loss") == [2]


def test_trackers_of_the_accelerator_are_used_with_trackers_none(tmp_path):
    from trainwright import Trainer

    tracker = RecordingTracker()
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[ExperimentTrackerCallback(None, log_every_n_updates=6)],
        accelerator_kwargs={"log_with": [tracker]},
    )
    trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=2)
    assert tracker.config["num_epochs"] == 1
    assert tracker.steps_of("train_loss_step") == [6]
    assert (tracker.started, tracker.finished) == (1, 1)
    assert trainer.accelerator.trackers == []  # finished trackers are not reused
    trainer.train(make_dataset(12), num_epochs=2, per_device_batch_size=2)
    assert (tracker.started, tracker.finished) == (2, 2)
    assert tracker.config["num_epochs"] == 2


def test_trackers_are_finished_when_an_error_ends_the_run():
    class Crash(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 2:
                raise RuntimeError("out of memory")

    tracker = RecordingTracker()
    with pytest.raises(RuntimeError, match="out of memory"):
        train([ExperimentTrackerCallback([tracker], log_every_n_updates=1), Crash()])
    assert (tracker.started, tracker.finished) == (1, 1)


def test_unknown_or_missing_tracker_is_an_error_when_built():
    with pytest.raises(ValueError, match="Unknown tracker 'tensorbord'"):
        ExperimentTrackerCallback(["tensorbord"])
    with pytest.raises(ValueError, match="log_every_n_updates"):
        ExperimentTrackerCallback([RecordingTracker()], log_every_n_updates=0)


def test_tracker_safe_config_flattens_and_stringifies():
    config = {"lr": 0.1, "fused": True, "dl": {"batch_size": 8, "sampler": None}, "ids": [1, 2]}
    assert tracker_safe_config(config) == {
        "lr": 0.1,
        "fused": True,
        "dl.batch_size": 8,
        "dl.sampler": "None",
        "ids": "[1, 2]",
    }


def test_a_tracker_that_cannot_start_fails_the_run_before_training():
    failing = FailingTracker()
    trainer = make_trainer(callbacks=[ExperimentTrackerCallback([failing])])
    with pytest.raises(CallbackSetupError, match="tracking server unreachable") as raised:
        trainer.train(make_dataset(12), num_epochs=2, per_device_batch_size=2)
    assert 'error_policy="warn"' in str(raised.value)
    assert trainer.run_history.get_metric_names() == set()  # not one step trained


def test_a_tracker_that_always_raises_with_warn_chosen_does_not_stop_training():
    failing = FailingTracker()
    callback = ExperimentTrackerCallback([failing], log_every_n_updates=1, error_policy="warn")
    with pytest.warns(RuntimeWarning) as caught:
        trainer = train([callback])
    messages = [str(warning.message) for warning in caught]
    reports = [message for message in messages if "ExperimentTrackerCallback" in message]
    assert len(reports) == 1
    assert "'on_training_run_start'" in reports[0]
    assert "ConnectionError: tracking server unreachable (start)" in reports[0]
    assert failing.calls == 1  # disabled after the first failure
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2


def test_a_tracker_failing_mid_run_is_reported_once_with_its_event():
    failing = FailingTracker(fail_in=("log",))
    with pytest.warns(RuntimeWarning, match="'on_train_step_end'") as caught:
        trainer = train([ExperimentTrackerCallback([failing], log_every_n_updates=2)])
    assert sum("ExperimentTrackerCallback" in str(w.message) for w in caught) == 1
    assert trainer.run_history.current_epoch == 3  # both epochs ran


def test_strict_mode_raises_the_trackers_error_naming_callback_and_event():
    failing = FailingTracker(fail_in=("log",))
    with pytest.raises(ConnectionError) as raised:
        train([ExperimentTrackerCallback([failing], log_every_n_updates=2, strict=True)])
    notes = getattr(raised.value, "__notes__", [])
    assert any(
        "ExperimentTrackerCallback" in note and "on_train_step_end" in note for note in notes
    )


# ---------------------------------------------------------------------------------------------
# TensorBoard, read back with TensorBoard's own event reader
# ---------------------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_expected_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ExperimentTrackerCallback(
        ["tensorboard"], project_name="tiny", logging_dir=tmp_path, log_every_n_updates=3
    )
    trainer = train([callback])
    accumulator = EventAccumulator(str(tmp_path / "tiny"))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train_loss_step", "learning_rate_step", "train_loss_epoch", "eval_loss_epoch"} <= (
        scalars
    )

    def read(tag):
        return [(event.step, event.value) for event in accumulator.Scalars(tag)]

    assert [step for step, _ in read("train_loss_step")] == [3, 6, 9, 12]
    learning_rates = read("learning_rate_step")  # TensorBoard stores float32
    assert [step for step, _ in learning_rates] == [3, 6, 9, 12]
    assert [value for _, value in learning_rates] == pytest.approx([0.1] * 4)
    expected = trainer.run_history.get_metric_values("eval_loss_epoch")
    assert [step for step, _ in read("eval_loss_epoch")] == [1, 2]
    assert [value for _, value in read("eval_loss_epoch")] == pytest.approx(expected, rel=1e-6)
    # hyperparameters: stored by Accelerate beside the scalars
    assert list((tmp_path / "tiny").glob("*/hparams.yml"))


def test_tensorboard_evaluate_after_train_logs_into_the_training_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = ExperimentTrackerCallback(["tensorboard"], project_name="tiny", logging_dir=tmp_path)
    trainer = train([callback])
    runs_after_training = sorted(path.parent for path in tmp_path.rglob("events.out.tfevents*"))
    trainer.evaluate(make_dataset(4))
    trainer.evaluate(make_dataset(4))
    runs = sorted(path.parent for path in tmp_path.rglob("events.out.tfevents*"))
    assert sorted(set(runs)) == sorted(set(runs_after_training))  # no extra TensorBoard run
    assert len(list(tmp_path.rglob("hparams.yml"))) == 1
    accumulator = EventAccumulator(str(tmp_path / "tiny"))
    accumulator.Reload()
    evaluations = [(event.step, event.value) for event in accumulator.Scalars("evaluation_loss")]
    assert [step for step, _ in evaluations] == [2, 2]
    assert evaluations[-1][1] == pytest.approx(
        trainer.run_history.get_latest_metric("evaluation_loss")
    )


# ---------------------------------------------------------------------------------------------
# MLflow, read back with MlflowClient
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_tracking_uri(mlflow_server_uri, monkeypatch):
    """The session's real ``mlflow server`` (SQLite backend, on loopback; see conftest.py),
    reached by the tracker through MLFLOW_TRACKING_URI."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    yield mlflow_server_uri
    while mlflow.active_run() is not None:  # never leak a run into other tests
        mlflow.end_run()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
def test_mlflow_run_holds_params_and_metric_histories(mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    callback = ExperimentTrackerCallback(
        ["mlflow"],
        project_name="tiny-mlflow",
        log_every_n_updates=4,
        tracker_init_kwargs={"mlflow": {"run_name": "baseline"}},
        extra_config={"model": "mlp"},
    )
    trainer = train([callback])
    client = MlflowClient(tracking_uri=mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("tiny-mlflow")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "baseline"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["num_epochs"] == "2"
    assert params["train_per_device_batch_size"] == "2"
    assert params["model"] == "mlp"

    def history(name):
        metrics = client.get_metric_history(run.info.run_id, name)
        return sorted((metric.step, metric.value) for metric in metrics)

    assert [step for step, _ in history("train_loss_step")] == [4, 8, 12]
    assert history("learning_rate_step") == [(4, 0.1), (8, 0.1), (12, 0.1)]
    expected = trainer.run_history.get_metric_values("train_loss_epoch")
    assert history("train_loss_epoch") == [(1, expected[0]), (2, expected[1])]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
def test_mlflow_evaluate_after_train_logs_into_the_training_run(mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    callback = ExperimentTrackerCallback(
        ["mlflow"],
        project_name="tiny-mlflow-evaluate",
        log_every_n_updates=None,
        tracker_init_kwargs={"mlflow": {"run_name": "baseline"}},
    )
    trainer = train([callback])
    trainer.evaluate(make_dataset(4))
    client = MlflowClient(tracking_uri=mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("tiny-mlflow-evaluate")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not two named baseline
    assert run.info.status == "FINISHED"
    evaluation = client.get_metric_history(run.info.run_id, "evaluation_loss")
    expected = trainer.run_history.get_latest_metric("evaluation_loss")
    assert [(metric.step, metric.value) for metric in evaluation] == [(2, expected)]
    trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=2)  # a run of its own
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_mlflow_refusing_its_file_store_fails_before_training_unless_warn_is_chosen(
    tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    trainer = make_trainer(callbacks=[ExperimentTrackerCallback(["mlflow"])])
    with pytest.raises(CallbackSetupError, match="MLFLOW_ALLOW_FILE_STORE"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    assert trainer.run_history.get_metric_names() == set()
    callback = ExperimentTrackerCallback(["mlflow"], error_policy="warn")
    with pytest.warns(RuntimeWarning, match="ExperimentTrackerCallback raised MlflowException"):
        trainer = train([callback])
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


class LateMetric(TrainerCallback):
    """Records ``accuracy`` from the second epoch on."""

    writes_metrics = ("accuracy",)

    def on_eval_epoch_end(self, trainer, **kwargs):
        if trainer.run_history.current_epoch >= 2:
            trainer.run_history.update_metric("accuracy", 0.5 + trainer.run_history.current_epoch)


def read_csv(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return reader.fieldnames, list(reader)


def test_csv_has_one_row_per_epoch_and_stable_columns_when_metrics_appear_later(tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    trainer = train([CSVLoggerCallback(path), LateMetric()], num_epochs=3)
    columns, rows = read_csv(path)
    assert columns == ["epoch", "eval_loss_epoch", "train_loss_epoch", "accuracy"]
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [row["accuracy"] for row in rows] == ["", "2.5", "3.5"]
    history = trainer.run_history.get_metric_values("train_loss_epoch")
    assert [float(row["train_loss_epoch"]) for row in rows] == history


def test_csv_restarts_with_a_new_run_and_skips_non_numeric_metrics(tmp_path):
    class Note(TrainerCallback):
        def on_train_epoch_end(self, trainer, **kwargs):
            trainer.run_history.update_metric("note", "text")

    path = tmp_path / "metrics.csv"
    logger = CSVLoggerCallback(path)
    trainer = make_trainer(callbacks=[logger, Note()])
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=4)
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    columns, rows = read_csv(path)
    assert columns == ["epoch", "train_loss_epoch"]
    assert [row["epoch"] for row in rows] == ["1"]


def test_csv_write_failure_warns_once_and_training_continues(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the CSV's directory should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train([CSVLoggerCallback(blocker / "metrics.csv")], num_epochs=2)
    reports = [w for w in caught if "CSVLoggerCallback" in str(w.message)]
    assert len(reports) == 1
    assert "'on_training_run_epoch_end'" in str(reports[0].message)
    assert trainer.run_history.current_epoch == 3


def test_csv_rows_survive_a_resume(tmp_path):
    from trainwright.callbacks import SaveTrainingStateCallback

    class StopAfterTwoEpochs(TrainerCallback):
        def on_training_run_epoch_end(self, trainer, **kwargs):
            if trainer.run_history.current_epoch == 2:
                raise StopTrainingError("preempted")

    path, states = tmp_path / "metrics.csv", tmp_path / "states"
    first = make_trainer(
        callbacks=[CSVLoggerCallback(path), SaveTrainingStateCallback(states), StopAfterTwoEpochs()]
    )
    first.train(make_dataset(8), num_epochs=3, per_device_batch_size=4)
    path.unlink()  # the rows come back from the training state
    resumed = make_trainer(callbacks=[CSVLoggerCallback(path), SaveTrainingStateCallback(states)])
    resumed.train(make_dataset(8), num_epochs=3, per_device_batch_size=4, resume_from="latest")
    _, rows = read_csv(path)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    history = resumed.run_history.get_metric_values("train_loss_epoch")
    assert [float(row["train_loss_epoch"]) for row in rows] == history
