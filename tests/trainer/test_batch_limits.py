"""Batch limits: run_config, the placeholders and the schedule all reflect them."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from torch import nn

from trainwright import TrainerCallback
from trainwright.callbacks import (
    BatchLimitsCallback,
    LimitBatchesCallback,
    LimitEvalStepsCallback,
    StepBasedEvaluationCallback,
)
from trainwright.schedulers import CosineLrScheduler


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.train_steps_per_epoch: list[int] = []
        self.eval_steps_per_epoch: list[int] = []
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, **kwargs):
        self.train_steps_per_epoch.append(0)

    def on_train_step_start(self, trainer, **kwargs):
        self.train_steps_per_epoch[-1] += 1

    def on_before_optimizer_step(self, trainer, **kwargs):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    def on_eval_epoch_start(self, trainer, **kwargs):
        self.eval_steps_per_epoch.append(0)

    def on_eval_step_start(self, trainer, **kwargs):
        self.eval_steps_per_epoch[-1] += 1


def test_limited_batches_with_accumulation_and_max_steps_end_the_schedule_on_the_last_update():
    counter = StepCounter()
    trainer = make_trainer(callbacks=[counter])
    trainer.train(
        make_dataset(20),  # 10 batches of 2
        num_epochs=5,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_num_train_batches_per_epoch=5,
        max_num_train_steps=5,
        create_scheduler_fn=CosineLrScheduler.create_scheduler_fn(lr_min_ratio=0.1),
    )
    run_config = trainer.run_config
    assert run_config.train_dataloader_len == 5
    assert run_config.num_update_steps_per_epoch == 3  # ceil(5 / 2): the last window is short
    assert (run_config.num_epochs, run_config.num_update_steps) == (2, 5)
    # epoch 1: 5 batches (updates after batches 2, 4, 5); epoch 2 stops after update 5
    assert counter.train_steps_per_epoch == [5, 4]
    scheduler = trainer.scheduler
    assert scheduler.total_num_steps == 5 and scheduler.update_step == 5
    assert counter.lrs == pytest.approx([scheduler.get_lr(i)[0] for i in range(5)])
    assert counter.lrs[-1] == pytest.approx(0.1 * 0.1)  # the minimum, on the very last update


def test_limited_batches_size_the_placeholders_and_accumulation_windows():
    class AccumulationWindows(TrainerCallback):
        def __init__(self):
            self.update_steps: list[int] = []

        def on_after_optimizer_step(self, trainer, step, **kwargs):
            self.update_steps.append(step)

    windows = AccumulationWindows()
    trainer = make_trainer(callbacks=[windows])
    trainer.train(
        make_dataset(20),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=3,
        max_num_train_batches_per_epoch=4,
    )
    # each epoch ends its last (short) window on the 4th batch, not the 10th
    assert windows.update_steps == [2, 3, 2, 3]
    assert trainer.run_config.num_update_steps == 4


def test_limited_evaluation_batches():
    counter = StepCounter()
    trainer = make_trainer(callbacks=[counter], lr=0.0)
    eval_dataset = make_dataset(6, seed=1)  # 3 batches of 2
    trainer.train(
        make_dataset(4),
        num_epochs=2,
        eval_dataset=eval_dataset,
        per_device_batch_size=2,
        max_num_eval_batches=1,
    )
    assert trainer.run_config.eval_dataloader_len == 1
    assert counter.eval_steps_per_epoch == [1, 1]
    inputs, targets = eval_dataset.tensors
    with torch.no_grad():  # lr=0: the model is unchanged; only the first batch is evaluated
        first_batch_loss = nn.functional.cross_entropy(trainer.model(inputs[:2]), targets[:2])
    assert trainer.run_history.get_latest_metric("eval_loss_epoch") == pytest.approx(
        first_batch_loss.item()
    )


def test_limits_larger_than_the_data_change_nothing_and_bad_limits_are_rejected():
    trainer = make_trainer()
    trainer.train(
        make_dataset(6), num_epochs=1, per_device_batch_size=2, max_num_train_batches_per_epoch=50
    )
    assert trainer.run_config.train_dataloader_len == 3
    for name in ("max_num_train_batches_per_epoch", "max_num_eval_batches"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            trainer.train(make_dataset(6), num_epochs=1, **{name: 0})


def test_limit_callbacks_size_the_run_like_the_train_arguments():
    counter = StepCounter()
    trainer = make_trainer(callbacks=[LimitBatchesCallback(3), counter])
    trainer.train(
        make_dataset(20),
        num_epochs=2,
        eval_dataset=make_dataset(10, seed=1),
        per_device_batch_size=2,
        create_scheduler_fn=CosineLrScheduler.create_scheduler_fn(),
    )
    assert (trainer.run_config.train_dataloader_len, trainer.run_config.eval_dataloader_len) == (
        3,
        3,
    )
    assert trainer.scheduler.total_num_steps == trainer.scheduler.update_step == 6
    assert counter.train_steps_per_epoch == [3, 3]
    assert counter.eval_steps_per_epoch == [3, 3]
    trainer.evaluate(make_dataset(10, seed=1), per_device_batch_size=2)  # limited as well
    assert counter.eval_steps_per_epoch == [3, 3, 3]


def test_the_smallest_limit_applies_and_eval_steps_limit_only_evaluation():
    counter = StepCounter()
    limit = LimitEvalStepsCallback(2, limit_intermediate_only=False)
    trainer = make_trainer(callbacks=[limit, counter])
    trainer.train(
        make_dataset(12),
        num_epochs=1,
        eval_dataset=make_dataset(10, seed=1),
        per_device_batch_size=2,
        max_num_eval_batches=4,
    )
    assert (counter.train_steps_per_epoch, counter.eval_steps_per_epoch) == ([6], [2])
    assert trainer.run_config.max_num_eval_batches == 2
    limits = BatchLimitsCallback(max_num_train_batches_per_epoch=4)
    trainer = make_trainer(callbacks=[limits])
    trainer.train(
        make_dataset(20), num_epochs=1, per_device_batch_size=2, max_num_train_batches_per_epoch=5
    )
    assert trainer.run_config.train_dataloader_len == 4
    with pytest.raises(ValueError, match="num_eval_steps must be a positive integer"):
        LimitEvalStepsCallback(0)


def test_eval_steps_limit_only_intermediate_evaluations_by_default_and_run_config_says_so():
    counter = StepCounter()
    callbacks = [LimitEvalStepsCallback(1), StepBasedEvaluationCallback(1), counter]
    trainer = make_trainer(callbacks=callbacks, lr=0.0)  # lr 0: every evaluation sees one model
    eval_dataset = make_dataset(8, seed=1)  # 4 batches of 2
    trainer.train(make_dataset(4), num_epochs=1, eval_dataset=eval_dataset, per_device_batch_size=2)
    assert counter.eval_steps_per_epoch == [4]  # the epoch's evaluation uses all the data
    inputs, targets = eval_dataset.tensors
    with torch.no_grad():
        outputs = trainer.model(inputs)
    history = trainer.run_history
    assert history.get_latest_metric("eval_loss_epoch") == pytest.approx(
        nn.functional.cross_entropy(outputs, targets).item()
    )
    first_batch_loss = nn.functional.cross_entropy(outputs[:2], targets[:2]).item()
    assert history.get_metric_values("step_eval_loss") == pytest.approx([first_batch_loss] * 2)
    config = trainer.run_config
    assert (config.max_num_intermediate_eval_batches, config.max_num_eval_batches) == (1, None)
    assert config.eval_dataloader_len == 4
    trainer.evaluate(eval_dataset, per_device_batch_size=2)  # not intermediate: all the data
    assert counter.eval_steps_per_epoch == [4, 4]
