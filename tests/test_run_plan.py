"""The run plan, computed without a Trainer: from train()'s arguments and the built loaders."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from accelerate import Accelerator
from helpers.tiny import make_dataset, make_trainer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader, IterableDataset

from trainwright import TrainerCallback
from trainwright.callbacks import LimitBatchesCallback, LimitEvalStepsCallback
from trainwright.run_plan import (
    BatchLimits,
    RunPlan,
    SchedulerStepping,
    TrainArguments,
    batch_limits,
    plan_run,
    scheduler_stepping,
)

SETTINGS = {"batch_size": 2, "num_workers": 0}


def _plan(arguments: TrainArguments, train_loader, eval_loader=None, callbacks=()) -> RunPlan:
    accelerator = Accelerator(cpu=True)
    settings = {"train": SETTINGS, "eval": SETTINGS}
    return plan_run(arguments, callbacks, accelerator, train_loader, eval_loader, settings)


def test_the_plan_of_a_run_with_accumulation_and_a_batch_limit():
    dataset = make_dataset(10)
    arguments = TrainArguments(
        dataset,
        num_epochs=3,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_num_train_batches_per_epoch=3,
    )
    plan = _plan(arguments, DataLoader(dataset, batch_size=2), DataLoader(dataset, batch_size=2))
    assert plan.num_train_batches == 3  # 5 batches, cut to 3
    assert plan.limits == BatchLimits(3, None, None)
    assert plan.run_config.num_update_steps_per_epoch == 2  # windows of 2, then 1
    assert plan.run_config.num_update_steps == plan.max_num_update_steps == 6
    assert plan.nominal_window_items == 4
    assert plan.defers_gradient_sync
    assert plan.scheduler == SchedulerStepping()  # no scheduler yet
    # What decides whether a micro-step updates: every 2nd, and the epoch's last (short) one.
    assert [plan.is_update_step(step, plan.num_train_batches) for step in range(3)] == [
        False,
        True,
        True,
    ]
    assert [plan.is_epoch_cut_after(step) for step in range(3)] == [False, False, True]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_train_batches = 4


def test_the_plan_is_computed_without_side_effects():
    dataset = make_dataset(8)
    arguments = TrainArguments(dataset, num_epochs=2, per_device_batch_size=2)
    loader = DataLoader(dataset, batch_size=2, shuffle=True)
    rng_before = torch.get_rng_state()
    first, second = _plan(arguments, loader), _plan(arguments, loader)
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_limit_that_does_not_cut_is_dropped_and_callbacks_lower_limits():
    dataset = make_dataset(8)
    arguments = TrainArguments(
        dataset, num_epochs=1, per_device_batch_size=2, max_num_train_batches_per_epoch=10
    )
    callbacks = [LimitBatchesCallback(3), LimitEvalStepsCallback(1)]
    assert batch_limits(callbacks, 10, None) == BatchLimits(3, 3, 1)
    plan = _plan(arguments, DataLoader(dataset, batch_size=2))
    assert plan.limits.max_num_train_batches_per_epoch is None  # 4 batches: 10 does not cut
    assert plan.num_train_batches == 4


class _Stream(IterableDataset):
    def __iter__(self):
        yield from make_dataset(6)


def test_data_without_a_length_leaves_the_epoch_length_to_the_data():
    arguments = TrainArguments(
        _Stream(),
        num_epochs=2,
        per_device_batch_size=2,
        max_num_train_steps=5,
        gradient_accumulation_steps=2,
    )
    plan = _plan(arguments, DataLoader(_Stream(), batch_size=2))
    assert plan.num_train_batches is None
    assert plan.run_config.num_epochs is None and plan.run_config.num_update_steps == 5
    assert not plan.is_update_step(0, None) and plan.is_update_step(1, None)
    assert plan.is_update_step(2, 3)  # the last batch, once it is known, ends its window


def test_scheduler_stepping_is_decided_by_the_scheduler_type():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert scheduler_stepping(StepLR(optimizer, 1), None, None) == SchedulerStepping(True)
    assert scheduler_stepping(StepLR(optimizer, 1), "epoch", None) == SchedulerStepping(False, True)
    plateau = scheduler_stepping(ReduceLROnPlateau(optimizer), None, "eval_loss_epoch")
    assert plateau == SchedulerStepping(False, True, False, "eval_loss_epoch")
    with pytest.raises(ValueError, match="ReduceLROnPlateau is stepped once per epoch"):
        scheduler_stepping(ReduceLROnPlateau(optimizer), None, None)
    with pytest.raises(ValueError, match="only used by ReduceLROnPlateau"):
        scheduler_stepping(OneCycleLR(optimizer, 0.1, total_steps=4), None, "eval_loss_epoch")


def test_bad_arguments_are_refused_when_the_arguments_are_made():
    with pytest.raises(ValueError, match="num_epochs"):
        TrainArguments(make_dataset(4), num_epochs=0)
    with pytest.raises(ValueError, match="only apply to a scheduler"):
        TrainArguments(make_dataset(4), num_epochs=1, scheduler_metric="eval_loss_epoch")


def test_the_trainer_runs_the_plan_it_made():
    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=3,
        create_scheduler_fn=lambda optimizer: StepLR(optimizer, 1),
    )
    plan = trainer._plan
    assert trainer.run_config is plan.run_config
    assert plan.scheduler.per_update and not plan.scheduler.per_epoch
    assert trainer.progress.num_update_steps == plan.run_config.num_update_steps == 2
    assert plan.max_num_update_steps == 2 and math.isfinite(plan.max_num_update_steps)


class _MaySkip(TrainerCallback):
    may_skip_updates = True


def test_updates_are_agreed_on_only_with_several_processes_and_a_declaration():
    dataset = make_dataset(8)
    arguments = TrainArguments(dataset, num_epochs=1, per_device_batch_size=2)
    loader = DataLoader(dataset, batch_size=2)
    plan = _plan(arguments, loader, callbacks=[_MaySkip()])
    assert not plan.may_skip_updates  # one process: there is nothing to agree on
    # (the 2-process skip tests in tests/distributed/ cover a declaration on several processes)
