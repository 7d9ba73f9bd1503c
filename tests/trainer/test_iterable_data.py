"""Training on data without a length: an ``IterableDataset`` without ``__len__``."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from torch.utils.data import IterableDataset

from trainwright import TrainerCallback, TrainerPlaceholderValues
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    ProgressBarCallback,
    SaveTrainingStateCallback,
    TimingCallback,
)


class Stream(IterableDataset):
    """The samples of a map-style dataset, in order, with no length."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return iter(self.dataset)


class CountUpdates(TrainerCallback):
    def __init__(self):
        self.updates_per_epoch: list[int] = []

    def on_train_epoch_start(self, trainer, **kwargs):
        self.updates_per_epoch.append(0)

    def on_after_optimizer_step(self, trainer, **kwargs):
        self.updates_per_epoch[-1] += 1


def test_each_epoch_runs_to_the_end_of_the_data_with_an_update_at_its_end():
    counter = CountUpdates()
    trainer = make_trainer(callbacks=[counter])
    trainer.train(
        Stream(make_dataset(10)),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
    )
    assert counter.updates_per_epoch == [3, 3]  # 5 batches: windows of 2, 2 and 1
    config = trainer.run_config
    assert config.num_epochs == 2
    assert config.train_dataloader_len is None
    assert config.num_update_steps_per_epoch is None
    assert config.num_update_steps is None
    assert trainer.progress.num_update_steps == 6


def test_train_loss_epoch_equals_that_of_the_same_data_with_a_length():
    def epoch_losses(dataset):
        trainer = make_trainer(lr=0.0)
        trainer.train(
            dataset,
            num_epochs=2,
            per_device_batch_size=2,
            gradient_accumulation_steps=2,
            train_dataloader_kwargs={"shuffle": False},
        )
        return trainer.run_history.get_metric_values("train_loss_epoch")

    data = make_dataset(10)
    assert epoch_losses(Stream(data)) == epoch_losses(data)


def test_max_num_train_steps_repeats_epochs_until_exactly_that_many_updates():
    counter = CountUpdates()
    trainer = make_trainer(callbacks=[counter])
    trainer.train(
        Stream(make_dataset(10)),
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_num_train_steps=7,
    )
    assert counter.updates_per_epoch == [3, 3, 1]
    assert trainer.run_config.num_epochs is None  # until max_num_train_steps
    assert trainer.run_config.num_update_steps == 7
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 3


def test_a_placeholder_needing_the_length_raises_a_clear_error():
    trainer = make_trainer()
    create_scheduler_fn = functools.partial(
        torch.optim.lr_scheduler.StepLR,
        step_size=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    with pytest.raises(ValueError, match="training data has no length"):
        trainer.train(
            Stream(make_dataset(10)),
            num_epochs=1,
            per_device_batch_size=2,
            create_scheduler_fn=create_scheduler_fn,
        )


def test_num_update_steps_placeholder_resolves_with_max_num_train_steps():
    trainer = make_trainer()
    create_scheduler_fn = functools.partial(
        torch.optim.lr_scheduler.LinearLR,
        total_iters=TrainerPlaceholderValues.NUM_UPDATE_STEPS,
    )
    trainer.train(
        Stream(make_dataset(10)),
        num_epochs=1,
        per_device_batch_size=2,
        max_num_train_steps=4,
        create_scheduler_fn=create_scheduler_fn,
    )
    assert trainer.scheduler.total_iters == 4


def test_progress_bar_counts_batches_during_train(capsys):
    bar = ProgressBarCallback(draw_bar=True, mininterval=0, leave=True)
    trainer = make_trainer(callbacks=[bar])
    trainer.train(Stream(make_dataset(10)), num_epochs=1, per_device_batch_size=2)
    err = capsys.readouterr().err
    assert re.search(r"\b5it \[", err)  # a count of batches
    assert "/5" not in err  # no total


def test_a_batch_limit_ends_the_epoch_and_its_accumulation_window():
    counter = CountUpdates()
    trainer = make_trainer(callbacks=[counter])
    trainer.train(
        Stream(make_dataset(20)),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_num_train_batches_per_epoch=3,
    )
    assert counter.updates_per_epoch == [2, 2]  # windows of 2 and 1
    assert trainer.progress.num_update_steps == 4


def test_data_that_yields_nothing_raises_a_clear_error():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="yielded no batches"):
        trainer.train(Stream([]), num_epochs=1, max_num_train_steps=3)


def test_a_run_resumed_mid_epoch_matches_an_uninterrupted_one(tmp_path):
    class SaveAndStop(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if trainer.progress.epoch == 1 and step == 2:  # mid accumulation window
                trainer.save_training_state(tmp_path / "state")
                trainer.request_stop()

    def train(callbacks, **kwargs):
        trainer = make_trainer(callbacks=callbacks)
        trainer.train(
            Stream(make_dataset(10)),
            num_epochs=2,
            per_device_batch_size=2,
            gradient_accumulation_steps=2,
            **kwargs,
        )
        return trainer

    uninterrupted = train([])
    train([SaveAndStop()])
    counter = CountUpdates()
    resumed = train([counter], resume_from=tmp_path / "state")
    assert counter.updates_per_epoch == [2]  # the rest of epoch 2, its batches skipped
    assert resumed.progress.num_update_steps == 6
    losses = resumed.run_history.get_metric_values("train_loss_epoch")
    assert losses == uninterrupted.run_history.get_metric_values("train_loss_epoch")
    expected = uninterrupted.get_model().parameters()
    for left, right in zip(expected, resumed.get_model().parameters()):
        torch.testing.assert_close(left, right)


@pytest.mark.parametrize("max_num_train_steps", [None, 7])  # both: 2 epochs
def test_default_callbacks_timing_saving_and_evaluation_on_data_without_length(
    tmp_path, max_num_train_steps
):
    saver = SaveTrainingStateCallback(tmp_path, save_at_end=True)
    trainer = make_trainer(callbacks=[*DEFAULT_CALLBACKS, TimingCallback(), saver])
    trainer.train(
        Stream(make_dataset(10)),
        num_epochs=2,
        eval_dataset=Stream(make_dataset(6)),
        per_device_batch_size=2,
        max_num_train_steps=max_num_train_steps,
    )
    history = trainer.run_history
    assert len(history.get_metric_values("eval_loss_epoch")) == 2
    assert trainer.run_config.eval_dataloader_len is None
    assert history.get_metric_values("eta_s")[-1] == 0.0
    assert [path.name for path in tmp_path.iterdir()] == [
        f"state-{trainer.progress.num_update_steps:09d}"
    ]
