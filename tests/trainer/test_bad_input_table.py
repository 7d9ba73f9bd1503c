"""Every public argument of Trainer, train(), evaluate() and the built-in callbacks, given a
wrong type or value: a ValueError or TypeError whose message names the argument, raised
before the first optimizer step (for train(), before any training work at all)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers.tiny import make_dataset, make_model
from torch import nn
from torch.utils.data import DataLoader

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import (
    BatchLimitsCallback,
    ConvertSyncBatchNormCallback,
    CSVLoggerCallback,
    EarlyStoppingCallback,
    ExperimentTrackerCallback,
    GradientNormMonitorCallback,
    LearningRateMonitorCallback,
    LimitBatchesCallback,
    LimitEvalStepsCallback,
    ModelEmaCallback,
    ModelSummaryCallback,
    ProgressBarCallback,
    SaveBestModelCallback,
    SavePlotCallback,
    SaveTrainingStateCallback,
    StepBasedEvaluationCallback,
    TorchProfilerCallback,
    WSDCheckpointCallback,
    every,
)

NAN, INF = math.nan, math.inf


class StepProbe(TrainerCallback):
    """Records whether training got as far as any training step."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_training_run_start(self, trainer, **kwargs):
        self.events.append("on_training_run_start")

    def on_before_optimizer_step(self, trainer, **kwargs):
        self.events.append("on_before_optimizer_step")


def trainer_arguments() -> dict:
    model = make_model()
    return {
        "model": model,
        "loss_func": nn.CrossEntropyLoss(),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "callbacks": (),
    }


def sgd_over_another_model(arguments: dict) -> dict:
    return {"optimizer": torch.optim.SGD(make_model(seed=1).parameters(), lr=0.1)}


# (argument, bad value, or a function of the valid arguments returning the bad ones)
TRAINER_CASES = [
    ("model", "not a model"),
    ("model", None),
    ("loss_func", 3),
    # loss_func=None is valid: the batch-loss hooks then compute the loss (pytorch-accelerated)
    ("optimizer", "sgd"),
    ("optimizer", None),
    ("optimizer", sgd_over_another_model),
    ("callbacks", 5),
    ("callbacks", "ProgressBarCallback"),
    ("callbacks", [object()]),
    ("callbacks", [ProgressBarCallback(), "EarlyStoppingCallback"]),
    ("run_history", {}),
    ("mixed_precision", "fp64"),
    ("mixed_precision", True),
    ("accelerator_kwargs", ["cpu"]),
    ("accelerator_kwargs", {1: True}),
    ("reorder_metric_readers", "yes"),
    ("profile_callbacks", 1),
]


def _message(error: BaseException) -> str:
    return str(error)


@pytest.mark.parametrize(
    "argument,bad", TRAINER_CASES, ids=[f"{a}={b!r:.30}" for a, b in TRAINER_CASES]
)
def test_trainer_arguments(argument, bad):
    arguments = trainer_arguments()
    overrides = bad(arguments) if callable(bad) and not isinstance(bad, type) else None
    arguments.update(overrides if isinstance(overrides, dict) else {argument: bad})
    with pytest.raises((TypeError, ValueError)) as info:
        Trainer(**arguments)
    assert argument in _message(info.value)


def bad_scheduler_returning_the_optimizer(optimizer):
    return optimizer


TRAIN_CASES = [
    ("train_dataset", None),
    ("train_dataset", 3),
    ("train_dataset", "data.csv"),
    ("train_dataset", {"inputs": [1, 2]}),
    ("train_dataset", DataLoader(make_dataset(4), batch_size=2)),
    ("num_epochs", 0),
    ("num_epochs", -1),
    ("num_epochs", 1.5),
    ("num_epochs", "2"),
    ("num_epochs", True),
    ("num_epochs", None),
    ("eval_dataset", 3),
    ("eval_dataset", DataLoader(make_dataset(4), batch_size=2)),
    ("eval_dataset", make_dataset(4, num_features=5)),  # batches the model cannot take
    ("per_device_batch_size", 0),
    ("per_device_batch_size", 2.0),
    ("per_device_batch_size", "8"),
    ("per_device_batch_size", None),
    ("max_num_train_steps", 0),
    ("max_num_train_steps", 1.5),
    ("max_num_train_steps", "3"),
    ("gradient_accumulation_steps", 0),
    ("gradient_accumulation_steps", 1.0),
    ("gradient_accumulation_steps", None),
    ("gradient_clip_value", -1.0),
    ("gradient_clip_value", 0),
    ("gradient_clip_value", NAN),
    ("gradient_clip_value", INF),
    ("gradient_clip_value", "1"),
    ("gradient_clip_value", True),
    ("max_grad_norm", 0.0),
    ("max_grad_norm", NAN),
    ("max_grad_norm", "1.0"),
    ("create_scheduler_fn", 3),
    ("create_scheduler_fn", "StepLR"),
    ("create_scheduler_fn", bad_scheduler_returning_the_optimizer),
    ("create_scheduler_fn", lambda optimizer: None),
    ("train_dataloader_kwargs", [("num_workers", 0)]),
    ("train_dataloader_kwargs", {"batch_sz": 2}),
    ("train_dataloader_kwargs", {"dataset": make_dataset(4)}),
    ("eval_dataloader_kwargs", "shuffle"),
    ("eval_dataloader_kwargs", {"shufle": True}),
    ("reset_run_history", "no"),
    ("reset_run_history", 0),
    ("collate_fn", 3),
    ("eval_per_device_batch_size", 0),
    ("eval_per_device_batch_size", -1),
    ("eval_per_device_batch_size", 1.5),
    ("max_num_train_batches_per_epoch", 0),
    ("max_num_train_batches_per_epoch", 1.5),
    ("max_num_eval_batches", 0),
    ("max_num_eval_batches", "2"),
    ("scheduler_step_interval", "step"),
    ("scheduler_metric", 3),
    ("resume_from", 3),
    ("resume_from", ""),
]


@pytest.mark.parametrize(
    "argument,bad", TRAIN_CASES, ids=[f"{a}={b!r:.30}" for a, b in TRAIN_CASES]
)
def test_train_arguments(argument, bad):
    arguments = trainer_arguments()
    probe = StepProbe()
    arguments["callbacks"] = [probe]
    trainer = Trainer(**arguments)
    before = [parameter.detach().clone() for parameter in trainer.get_model().parameters()]
    train_arguments = {
        "train_dataset": make_dataset(8),
        "num_epochs": 1,
        "eval_dataset": make_dataset(4),
        "per_device_batch_size": 2,
        argument: bad,
    }
    if argument == "scheduler_step_interval":  # with a scheduler, so only the value is wrong
        train_arguments["create_scheduler_fn"] = functools.partial(
            torch.optim.lr_scheduler.StepLR, step_size=1
        )
    with pytest.raises((TypeError, ValueError)) as info:
        trainer.train(**train_arguments)
    assert argument in _message(info.value)
    assert probe.events == []  # before the run started: no step, no callback event
    for parameter, original in zip(trainer.get_model().parameters(), before):
        assert torch.equal(parameter, original)


EVALUATE_CASES = [
    ("dataset", 3),
    ("dataset", DataLoader(make_dataset(4), batch_size=2)),
    ("per_device_batch_size", 0),
    ("per_device_batch_size", "8"),
    ("dataloader_kwargs", "shuffle"),
    ("dataloader_kwargs", {"batch": 2}),
    ("collate_fn", 3),
]


@pytest.mark.parametrize(
    "argument,bad", EVALUATE_CASES, ids=[f"{a}={b!r:.30}" for a, b in EVALUATE_CASES]
)
def test_evaluate_arguments(argument, bad):
    trainer = Trainer(**trainer_arguments())
    with pytest.raises((TypeError, ValueError)) as info:
        trainer.evaluate(**{"dataset": make_dataset(4), argument: bad})
    assert argument in _message(info.value)


PREDICT_CASES = [*EVALUATE_CASES]


@pytest.mark.parametrize(
    "argument,bad", PREDICT_CASES, ids=[f"{a}={b!r:.30}" for a, b in PREDICT_CASES]
)
def test_predict_arguments(argument, bad):
    trainer = Trainer(**trainer_arguments())
    with pytest.raises((TypeError, ValueError)) as info:
        trainer.predict(**{"dataset": make_dataset(4), argument: bad})
    assert argument in _message(info.value)


FIND_LEARNING_RATE_CASES = [
    ("train_dataset", 3),
    ("train_dataset", DataLoader(make_dataset(4), batch_size=2)),
    ("per_device_batch_size", 0),
    ("dataloader_kwargs", {"batch": 2}),
    ("collate_fn", 3),
    ("start_lr", 0),
    ("start_lr", "1e-7"),
    ("end_lr", NAN),
    ("num_steps", 0),
    ("smoothing", 1.5),
    ("smoothing", "0.1"),
    ("divergence_factor", 1),
]


@pytest.mark.parametrize(
    "argument,bad",
    FIND_LEARNING_RATE_CASES,
    ids=[f"{a}={b!r:.30}" for a, b in FIND_LEARNING_RATE_CASES],
)
def test_find_learning_rate_arguments(argument, bad):
    trainer = Trainer(**trainer_arguments())
    before = [parameter.detach().clone() for parameter in trainer.get_model().parameters()]
    with pytest.raises((TypeError, ValueError)) as info:
        trainer.find_learning_rate(**{"train_dataset": make_dataset(8), argument: bad})
    assert argument in _message(info.value)
    for parameter, original in zip(trainer.get_model().parameters(), before):
        assert torch.equal(parameter, original)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"n_updates": 0}, "n_updates"),
        ({"n_epochs": 1.5}, "n_epochs"),
        ({"seconds": -1}, "seconds"),
    ],
)
def test_event_filter_arguments(kwargs, name):
    with pytest.raises((TypeError, ValueError)) as info:
        every(**kwargs)
    assert name in _message(info.value)


CALLBACK_CASES = [
    (EarlyStoppingCallback, "early_stopping_patience", NAN),
    (EarlyStoppingCallback, "early_stopping_patience", 0),
    (EarlyStoppingCallback, "early_stopping_patience", 1.5),
    (EarlyStoppingCallback, "early_stopping_patience", "3"),
    (EarlyStoppingCallback, "early_stopping_threshold", -0.1),
    (EarlyStoppingCallback, "early_stopping_threshold", NAN),
    (EarlyStoppingCallback, "early_stopping_threshold", "0.1"),
    (EarlyStoppingCallback, "watch_metric", 3),
    (EarlyStoppingCallback, "greater_is_better", "yes"),
    (EarlyStoppingCallback, "reset_on_train", 1),
    (SaveBestModelCallback, "save_path", 3),
    (SaveBestModelCallback, "save_path", ""),
    (SaveBestModelCallback, "watch_metric", None),
    (SaveBestModelCallback, "greater_is_better", "no"),
    (SaveBestModelCallback, "reset_on_train", None),
    (SaveBestModelCallback, "save_optimizer", "y"),
    (SaveBestModelCallback, "load_saved_checkpoint", 0),
    (SaveTrainingStateCallback, "save_dir", None),
    (SaveTrainingStateCallback, "save_dir", 3),
    (SaveTrainingStateCallback, "save_every_n_epochs", 0),
    (SaveTrainingStateCallback, "save_every_n_epochs", 1.5),
    (SaveTrainingStateCallback, "save_every_n_steps", -1),
    (SaveTrainingStateCallback, "save_at_end", "y"),
    (SaveTrainingStateCallback, "max_checkpoints", 0),
    (ProgressBarCallback, "loss_every_n_steps", 0),
    (ProgressBarCallback, "loss_every_n_steps", "10"),
    (LimitBatchesCallback, "num_batches", 0),
    (LimitBatchesCallback, "num_batches", 1.5),
    (LimitEvalStepsCallback, "num_eval_steps", 0),
    (BatchLimitsCallback, "max_num_train_batches_per_epoch", 0),
    (BatchLimitsCallback, "max_num_eval_batches", "2"),
    (ModelEmaCallback, "decay", 1.5),
    (ModelEmaCallback, "decay", NAN),
    (ModelEmaCallback, "decay", "0.9"),
    (ModelEmaCallback, "use_warmup", "y"),
    (ModelEmaCallback, "evaluate", 1),
    (ModelEmaCallback, "save_path", 3),
    (StepBasedEvaluationCallback, "eval_every_n_updates", 0),
    (StepBasedEvaluationCallback, "eval_dataset", DataLoader(make_dataset(4))),
    (StepBasedEvaluationCallback, "metric_name", 3),
    (CSVLoggerCallback, "path", 3),
    (CSVLoggerCallback, "strict", "y"),
    (ExperimentTrackerCallback, "log_every_n_updates", 0),
    (ExperimentTrackerCallback, "epoch_step", "batch"),
    (ExperimentTrackerCallback, "project_name", 3),
    (ExperimentTrackerCallback, "logging_dir", None),
    (ExperimentTrackerCallback, "extra_config", ["lr"]),
    (SavePlotCallback, "path", None),
    (SavePlotCallback, "every_epoch", "y"),
    (WSDCheckpointCallback, "save_dir", 3),
    (WSDCheckpointCallback, "save_pre_decay_states", "y"),
    (WSDCheckpointCallback, "save_post_decay_models", None),
    (ConvertSyncBatchNormCallback, "convert_on_one_process", "y"),
    (LearningRateMonitorCallback, "log_every_n_updates", 0),
    (GradientNormMonitorCallback, "norm_type", 0),
    (GradientNormMonitorCallback, "norm_type", "2"),
    (TorchProfilerCallback, "trace_dir", 3),
    (TorchProfilerCallback, "wait", -1),
    (TorchProfilerCallback, "warmup", 1.5),
    (TorchProfilerCallback, "active", 0),
    (TorchProfilerCallback, "record_shapes", "y"),
    (TorchProfilerCallback, "sort_by", None),
    (TorchProfilerCallback, "row_limit", -1),
    (ModelSummaryCallback, "max_depth", 0),
    (ModelSummaryCallback, "max_depth", "2"),
]

# The arguments a callback needs, for the cases that make another argument bad.
REQUIRED = {
    SaveTrainingStateCallback: {"save_dir": "states"},
    LimitBatchesCallback: {"num_batches": 2},
    LimitEvalStepsCallback: {"num_eval_steps": 2},
    StepBasedEvaluationCallback: {"eval_every_n_updates": 2},
    CSVLoggerCallback: {"path": "log.csv"},
    SavePlotCallback: {"path": "plot.png"},
    WSDCheckpointCallback: {"save_dir": "states"},
    ExperimentTrackerCallback: {"trackers": None},
}


@pytest.mark.parametrize(
    "callback_class,argument,bad",
    CALLBACK_CASES,
    ids=[f"{c.__name__}-{a}={b!r:.30}" for c, a, b in CALLBACK_CASES],
)
def test_callback_arguments(callback_class, argument, bad):
    with pytest.raises((TypeError, ValueError)) as info:
        callback_class(**{**REQUIRED.get(callback_class, {}), argument: bad})
    assert argument in _message(info.value)
