"""Every "the same" in docs/migration.md's tables, checked: pytorch-accelerated 0.1.61's
names (and parameter names, in their order) exist in trainwright. What the names do is
tested where each feature lives, and by the ported examples in test_ported_examples.py."""

from __future__ import annotations

import importlib
import inspect

import pytest

import trainwright
from trainwright import InMemoryRunHistory, RunConfig, Trainer, TrainerPlaceholderValues
from trainwright import callbacks as cb
from trainwright.finetuning import ModelFreezer
from trainwright.schedulers import CosineLrScheduler, WSDLrScheduler


def parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def assert_in_order(names: list[str], available: list[str]) -> None:
    positions = [available.index(name) for name in names]  # ValueError: a name is missing
    assert positions == sorted(positions), f"{names} not in order in {available}"


IMPORTS = {
    "trainwright": ["Trainer", "TrainerPlaceholderValues", "notebook_launcher"],
    "trainwright.trainer": [
        "Trainer",
        "TrainerPlaceholderValues",
        "DEFAULT_CALLBACKS",
        "TrainerWithTimmScheduler",
    ],
    "trainwright.callbacks": ["TrainerCallback", "StopTrainingError", "get_default_callbacks"],
    "trainwright.tracking": ["RunHistory", "InMemoryRunHistory"],
    "trainwright.run_config": ["TrainerRunConfig"],
    "trainwright.schedulers": ["CosineLrScheduler", "WSDLrScheduler"],
    "trainwright.finetuning": ["ModelFreezer"],
    "trainwright.utils": [
        "ModelEma",
        "local_process_zero_only",
        "world_process_zero_only",
        "local_process_zero_first",
        "worker_init_fn",
    ],
}


@pytest.mark.parametrize("module_name", IMPORTS)
def test_imports(module_name):
    module = importlib.import_module(module_name)
    for name in IMPORTS[module_name]:
        assert hasattr(module, name), f"{module_name}.{name}"


SIGNATURES = [
    (Trainer.__init__, ["model", "loss_func", "optimizer", "callbacks", "run_history"]),
    (
        Trainer.train,
        [
            "train_dataset",
            "num_epochs",
            "eval_dataset",
            "per_device_batch_size",
            "max_num_train_steps",
            "gradient_accumulation_steps",
            "gradient_clip_value",
            "create_scheduler_fn",
            "train_dataloader_kwargs",
            "eval_dataloader_kwargs",
            "reset_run_history",
            "collate_fn",
        ],
    ),
    (Trainer.train, ["resume_from"]),
    (Trainer.evaluate, ["dataset", "per_device_batch_size", "dataloader_kwargs", "collate_fn"]),
    (Trainer.get_default_train_dl_kwargs, ["batch_size"]),
    (Trainer.get_default_eval_dl_kwargs, ["batch_size"]),
    (Trainer.create_train_dataloader, ["batch_size", "train_dl_kwargs"]),
    (Trainer.create_eval_dataloader, ["batch_size", "eval_dl_kwargs"]),
    (Trainer.gather, ["tensor", "padding_value"]),
    (Trainer.get_model, ["keep_torch_compile"]),
    (
        Trainer.save_checkpoint,
        ["save_path", "checkpoint_kwargs", "save_optimizer", "save_scheduler", "save_per_node"],
    ),
    (Trainer.load_checkpoint, ["checkpoint_path", "load_optimizer", "load_scheduler"]),
    (Trainer.save_training_state, ["checkpoint_kwargs"]),
    (cb.get_default_callbacks, ["progress_bar"]),
    (
        cb.SaveBestModelCallback.__init__,
        [
            "save_path",
            "watch_metric",
            "greater_is_better",
            "reset_on_train",
            "save_optimizer",
            "save_scheduler",
            "load_saved_checkpoint",
        ],
    ),
    (
        cb.EarlyStoppingCallback.__init__,
        [
            "early_stopping_patience",
            "early_stopping_threshold",
            "watch_metric",
            "greater_is_better",
            "reset_on_train",
        ],
    ),
    (cb.LimitBatchesCallback.__init__, ["num_batches"]),
    (cb.LimitEvalStepsCallback.__init__, ["num_eval_steps", "limit_intermediate_only"]),
    (
        cb.SaveTrainingStateCallback.__init__,
        ["save_dir", "save_every_n_epochs", "save_every_n_steps", "save_at_end", "max_checkpoints"],
    ),
    (
        cb.WSDCheckpointCallback.__init__,
        ["save_dir", "save_optimizer", "save_scheduler", "initial_checkpoint"],
    ),
    (cb.StepBasedEvaluationCallback.__init__, ["eval_every_n_steps"]),
    (cb.ModelEmaCallback.__init__, ["decay", "evaluate_during_training", "save_path"]),
    (ModelFreezer.__init__, ["model", "freeze_batch_norms"]),
    (ModelFreezer.freeze, ["from_index", "to_index", "set_modules_as_eval"]),
    (ModelFreezer.unfreeze, ["from_index", "to_index", "set_modules_as_training"]),
    (
        CosineLrScheduler.__init__,
        ["optimizer", "total_num_epochs", "num_update_steps_per_epoch", "k_decay", "lr_min"],
    ),
    (CosineLrScheduler.__init__, ["min_lr_ratio", "num_warmup_epochs", "warmup_starting_lr"]),
    (CosineLrScheduler.__init__, ["num_cooldown_epochs"]),
    (
        WSDLrScheduler.__init__,
        ["optimizer", "num_warmup_steps", "decay_phase_ratio", "lr_min", "use_inverse_sqrt_decay"],
    ),
    (WSDLrScheduler.__init__, ["num_epochs", "num_update_steps_per_epoch", "total_steps"]),
    (WSDLrScheduler.__init__, ["num_checkpoints", "is_continuation_from_checkpoint"]),
]


@pytest.mark.parametrize(
    ("function", "names"), SIGNATURES, ids=lambda v: getattr(v, "__qualname__", "")
)
def test_signatures_keep_pytorch_accelerated_names(function, names):
    available = parameters(function)
    for name in names:
        assert name in available, f"{function.__qualname__} has no {name!r}"
    if len(names) > 1 and not any(
        inspect.signature(function).parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        for name in names
    ):
        assert_in_order(names, available)


def test_hooks_the_same():
    hooks = [
        "training_run_start",
        "train_epoch_start",
        "calculate_train_batch_loss",
        "backward_step",
        "optimizer_step",
        "scheduler_step",
        "optimizer_zero_grad",
        "train_epoch_end",
        "eval_epoch_start",
        "calculate_eval_batch_loss",
        "eval_epoch_end",
        "training_run_epoch_end",
        "training_run_end",
        "evaluation_run_start",
        "evaluation_run_end",
        "create_scheduler",
    ]
    for hook in hooks:
        assert callable(getattr(Trainer, hook)), hook
    for attribute in ("_train_dataloader", "_eval_dataloader", "_accelerator", "device"):
        assert isinstance(getattr(Trainer, attribute), property), attribute
    assert callable(Trainer.print)


def test_run_config_fields_the_same():
    fields = [
        "num_epochs",
        "train_per_device_batch_size",
        "train_dl_kwargs",
        "eval_per_device_batch_size",
        "eval_dl_kwargs",
        "gradient_accumulation_steps",
        "gradient_clip_value",
        "train_total_batch_size",
        "max_num_train_steps",
        "is_local_process_zero",
        "is_world_process_zero",
        "is_distributed",
        "mixed_precision",
        "num_processes",
        "num_update_steps_per_epoch",
    ]
    assert set(fields) <= set(RunConfig._field_names())
    for name in ("num_local_update_steps_per_epoch", "eval_total_batch_size"):
        assert isinstance(getattr(RunConfig, name), property)


def test_placeholders_the_same():
    for name in (
        "NUM_EPOCHS",
        "NUM_UPDATE_STEPS_PER_EPOCH",
        "PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH",
        "TRAIN_DATALOADER_LEN",
        "EVAL_DATALOADER_LEN",
    ):
        assert name in TrainerPlaceholderValues.__members__
    assert (
        TrainerPlaceholderValues.PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH
        is TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH
    )


def test_callbacks_and_events_the_same():
    for name in [
        "TrainerCallback",
        "StopTrainingError",
        "LogMetricsCallback",
        "PrintProgressCallback",
        "ProgressBarCallback",
        "TerminateOnNaNCallback",
        "MoveModulesToDeviceCallback",
        "ConvertSyncBatchNormCallback",
        "WSDCheckpointCallback",
        "SaveTrainingStateCallback",
    ]:
        assert hasattr(cb, name), name
    assert cb.LogMetricsCallback is cb.PrintMetricsCallback
    assert len(cb.get_default_callbacks()) == 5
    for event in [
        "on_init_end",
        "on_training_run_start",
        "on_train_epoch_start",
        "on_train_epoch_end",
        "on_eval_epoch_start",
        "on_eval_epoch_end",
        "on_training_run_epoch_end",
        "on_training_run_end",
        "on_evaluation_run_start",
        "on_evaluation_run_end",
        "on_stop_training_error",
        "on_train_step_start",
        "on_train_step_end",
        "on_eval_step_start",
        "on_eval_step_end",
    ]:
        assert event in cb.EVENTS, event


def test_run_history_the_same():
    history = InMemoryRunHistory()
    history.update_metric("accuracy", 0.5)
    history.increment_epoch()
    assert history.get_metric_names() == {"accuracy"}
    assert history.get_metric_values("accuracy") == [0.5]
    assert history.get_latest_metric("accuracy") == 0.5
    assert history.current_epoch == 2
    history.reset()
    assert history.current_epoch == 1 and history.get_metric_names() == set()
    assert trainwright.RunHistory is not None


def test_limit_eval_steps_default_is_pytorch_accelerateds():
    assert cb.LimitEvalStepsCallback(2).limit_intermediate_only is True


def test_old_arguments_that_must_go_say_what_to_write():
    with pytest.raises(TypeError, match="watch_metric='ema_model_eval_loss_epoch'"):
        cb.ModelEmaCallback(watch_metric="accuracy")
    assert cb.ModelEmaCallback(evaluate_during_training=False).evaluate is False
    assert cb.StepBasedEvaluationCallback(eval_every_n_steps=3).eval_every_n_updates == 3
