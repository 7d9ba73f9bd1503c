"""How train() steps the scheduler: per update, per epoch, on plateau, and timm-style."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.tiny import RecorderCallback, make_dataset, make_trainer
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from trainwright import TrainerCallback
from trainwright.schedulers import CosineLrScheduler
from trainwright.tracking import MetricNotFoundError


class LrPerEpoch(TrainerCallback):
    """The learning rates each epoch's optimizer updates used."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, **kwargs):
        self.lrs.append([])

    def on_before_optimizer_step(self, trainer, **kwargs):
        self.lrs[-1].append(trainer.optimizer.param_groups[0]["lr"])


class ConstantScore(TrainerCallback):
    """Records a metric that never improves."""

    writes_metrics = ("score",)

    def on_train_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("score", 1.0)


class TimmStyleScheduler:
    """Behaves like a timm scheduler: ``step(epoch)`` sets the LR of ``epoch`` (0.1 ** epoch
    times the base LR) and ``step_update(num_updates)`` is called after every update."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.param_groups[0]["lr"]
        self.epochs: list[tuple[int, float | None]] = []
        self.num_updates: list[int] = []

    def step(self, epoch: int, metric: float | None = None) -> None:
        self.epochs.append((epoch, metric))
        self.optimizer.param_groups[0]["lr"] = self.base_lr * 0.1**epoch

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        self.num_updates.append(num_updates)


def test_epoch_interval_steps_once_per_epoch():
    lrs = LrPerEpoch()
    trainer = make_trainer(callbacks=[lrs], lr=0.1)
    trainer.train(
        make_dataset(6),
        num_epochs=3,
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(StepLR, step_size=1, gamma=0.5),
        scheduler_step_interval="epoch",
    )
    assert lrs.lrs == [
        pytest.approx([0.1] * 3),
        pytest.approx([0.05] * 3),
        pytest.approx([0.025] * 3),
    ]


def test_update_interval_is_the_default():
    lrs = LrPerEpoch()
    trainer = make_trainer(callbacks=[lrs], lr=0.1)
    trainer.train(
        make_dataset(6),
        num_epochs=1,
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(StepLR, step_size=1, gamma=0.5),
    )
    assert lrs.lrs == [pytest.approx([0.1, 0.05, 0.025])]


def test_reduce_lr_on_plateau_steps_per_epoch_with_the_watched_metric():
    lrs = LrPerEpoch()
    trainer = make_trainer(callbacks=[ConstantScore(), lrs], lr=0.1)
    trainer.train(
        make_dataset(6),
        num_epochs=4,
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(ReduceLROnPlateau, factor=0.5, patience=0),
        scheduler_metric="score",
    )
    # epoch 1 sets the best score; every later epoch fails to improve and halves the LR
    assert [epoch_lrs[0] for epoch_lrs in lrs.lrs] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert all(len(set(epoch_lrs)) == 1 for epoch_lrs in lrs.lrs)  # never within an epoch


def test_reduce_lr_on_plateau_watching_the_eval_loss():
    trainer = make_trainer(lr=0.1)
    trainer.train(
        make_dataset(6),
        num_epochs=2,
        eval_dataset=make_dataset(4, seed=1),
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(ReduceLROnPlateau, patience=5),
        scheduler_metric="eval_loss_epoch",
    )
    assert trainer.scheduler.best == min(trainer.run_history.get_metric_values("eval_loss_epoch"))


def test_timm_style_scheduler_gets_update_counts_and_the_epoch_about_to_start():
    lrs = LrPerEpoch()
    trainer = make_trainer(callbacks=[lrs], lr=0.1)
    trainer.train(
        make_dataset(8),
        num_epochs=3,
        eval_dataset=make_dataset(4, seed=1),
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=TimmStyleScheduler,
        scheduler_metric="eval_loss_epoch",
    )
    scheduler = trainer.scheduler
    assert scheduler.num_updates == [1, 2, 3, 4, 5, 6]
    eval_losses = trainer.run_history.get_metric_values("eval_loss_epoch")
    assert scheduler.epochs == list(zip([1, 2, 3], eval_losses))
    # epoch e (from 0) trains with the LR the schedule gives epoch e, not e + 1
    assert lrs.lrs == [
        pytest.approx([0.1] * 2),
        pytest.approx([0.01] * 2),
        pytest.approx([0.001] * 2),
    ]


def test_timm_style_scheduler_restricted_to_one_interval():
    trainer = make_trainer()
    trainer.train(
        make_dataset(4),
        num_epochs=2,
        per_device_batch_size=2,
        create_scheduler_fn=TimmStyleScheduler,
        scheduler_step_interval="update",
    )
    assert (trainer.scheduler.num_updates, trainer.scheduler.epochs) == ([1, 2, 3, 4], [])
    trainer.train(
        make_dataset(4),
        num_epochs=2,
        per_device_batch_size=2,
        create_scheduler_fn=TimmStyleScheduler,
        scheduler_step_interval="epoch",
    )
    assert trainer.scheduler.num_updates == []
    assert trainer.scheduler.epochs == [(1, None), (2, None)]


@pytest.mark.parametrize(
    ("create_scheduler_fn", "options", "message"),
    [
        (functools.partial(ReduceLROnPlateau), {}, "pass scheduler_metric="),
        (
            functools.partial(ReduceLROnPlateau),
            {"scheduler_metric": "train_loss_epoch", "scheduler_step_interval": "update"},
            "stepped once per epoch",
        ),
        (
            functools.partial(ReduceLROnPlateau),
            {"scheduler_metric": "eval_loss_epoch"},
            "reads 'eval_loss_epoch', but nothing is known to record it",
        ),
        (
            functools.partial(StepLR, step_size=1),
            {"scheduler_metric": "train_loss_epoch"},
            "only used by ReduceLROnPlateau",
        ),
        (functools.partial(StepLR, step_size=1), {"scheduler_step_interval": "batch"}, '"update"'),
        (None, {"scheduler_step_interval": "epoch"}, "only apply to a scheduler"),
    ],
)
def test_inconsistent_scheduler_options_fail_before_training(create_scheduler_fn, options, message):
    trainer = make_trainer()
    weights_before = trainer.model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=message):
        trainer.train(
            make_dataset(4),
            num_epochs=1,
            per_device_batch_size=2,
            create_scheduler_fn=create_scheduler_fn,
            **options,
        )
    assert torch.equal(trainer.model[0].weight, weights_before)  # nothing was trained


def test_a_metric_a_user_callback_might_record_only_warns():
    trainer = make_trainer(callbacks=[RecorderCallback()])
    with (
        pytest.warns(UserWarning, match=r"declare writes_metrics = \('accuracy',\)"),
        pytest.raises(MetricNotFoundError, match="nothing recorded it by the end of epoch 1"),
    ):
        trainer.train(
            make_dataset(4),
            num_epochs=1,
            per_device_batch_size=2,
            create_scheduler_fn=functools.partial(ReduceLROnPlateau),
            scheduler_metric="accuracy",
        )


def test_warmup_longer_than_the_run_fails_at_train_start():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[recorder])
    with pytest.raises(ValueError, match=r"num_warmup_steps \(10\).*total_num_steps=4"):
        trainer.train(
            make_dataset(8),
            num_epochs=1,
            per_device_batch_size=2,
            create_scheduler_fn=CosineLrScheduler.create_scheduler_fn(num_warmup_steps=10),
        )
    assert [event for event, _ in recorder.events] == ["on_init_end"]  # nothing trained
