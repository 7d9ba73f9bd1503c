"""Watching a metric: which metrics will be recorded, declared by callbacks or the Trainer."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from helpers.tiny import make_dataset, make_model
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainwright import Trainer
from trainwright.callbacks import EarlyStoppingCallback, SaveBestModelCallback
from trainwright.tracking import MetricNotFoundError


class AccuracyInTheLoopTrainer(Trainer):
    """Computes accuracy in the loop, as pytorch-accelerated's "metrics in the loop" example."""

    def eval_epoch_start(self):
        super().eval_epoch_start()
        self.num_correct = self.num_samples = 0

    def calculate_eval_batch_loss(self, batch):
        output = super().calculate_eval_batch_loss(batch)
        predictions = output["model_outputs"].argmax(dim=-1)
        self.num_correct += int((predictions == batch[1]).sum())
        self.num_samples += len(batch[1])
        return output

    def eval_epoch_end(self):
        self.run_history.update_metric("accuracy", self.num_correct / self.num_samples)


class DeclaredAccuracyTrainer(AccuracyInTheLoopTrainer):
    writes_metrics = ("accuracy",)


def make_subclass_trainer(trainer_class, callbacks, lr=0.0):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return trainer_class(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks)


TRAIN = {"eval_dataset": make_dataset(6, seed=1), "per_device_batch_size": 2}


def test_a_metric_recorded_by_trainer_hooks_can_be_watched(tmp_path):
    stopping = EarlyStoppingCallback(watch_metric="accuracy", greater_is_better=True)
    best = SaveBestModelCallback(tmp_path / "best.pt", "accuracy", greater_is_better=True)
    trainer = make_subclass_trainer(AccuracyInTheLoopTrainer, [stopping, best])
    with pytest.warns(UserWarning, match=r"declare writes_metrics = \('accuracy',\)"):
        trainer.train(make_dataset(4), num_epochs=5, **TRAIN)
    # lr 0: accuracy never improves after epoch 1, so early stopping ends epoch 2
    assert len(trainer.run_history.get_metric_values("accuracy")) == 2
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["accuracy"] == trainer.run_history.get_metric_values("accuracy")[0]


def test_metrics_declared_on_the_trainer_are_watched_without_a_warning():
    stopping = EarlyStoppingCallback(watch_metric="accuracy", greater_is_better=True)
    trainer = make_subclass_trainer(DeclaredAccuracyTrainer, [stopping], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.train(
            make_dataset(4),
            num_epochs=2,
            create_scheduler_fn=functools.partial(ReduceLROnPlateau, mode="max"),
            scheduler_metric="accuracy",
            **TRAIN,
        )
    assert trainer.scheduler.best == max(trainer.run_history.get_metric_values("accuracy"))


def test_a_metric_no_hook_records_fails_at_the_first_epoch_end_with_the_helpful_message():
    stopping = EarlyStoppingCallback(watch_metric="acuracy", greater_is_better=True)  # a typo
    trainer = make_subclass_trainer(AccuracyInTheLoopTrainer, [stopping])
    with (
        pytest.warns(UserWarning, match="the hooks of AccuracyInTheLoopTrainer"),
        pytest.raises(MetricNotFoundError, match="nothing recorded it by the end of ep") as info,
    ):
        trainer.train(make_dataset(4), num_epochs=3, **TRAIN)
    assert "Metrics recorded: accuracy, eval_loss_epoch, train_loss_epoch" in str(info.value)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1


def test_without_code_of_yours_an_unrecorded_metric_fails_before_training():
    model = make_model()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[EarlyStoppingCallback(watch_metric="accuracy")],
    )
    with pytest.raises(ValueError, match="EarlyStoppingCallback reads 'accuracy'"):
        trainer.train(make_dataset(4), num_epochs=1, **TRAIN)
    assert trainer.run_history.get_metric_names() == set()
