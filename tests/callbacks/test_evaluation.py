"""StepBasedEvaluationCallback: evaluates every N optimizer updates, then trains on."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from torch import nn

from trainwright import StopTrainingError, Trainer, TrainerCallback
from trainwright.callbacks import DEFAULT_CALLBACKS, StepBasedEvaluationCallback


class StepWatcher(TrainerCallback):
    """Notes the model's mode at every step start, and the steps after which the step
    evaluation metric grew (runs after StepBasedEvaluationCallback)."""

    order = 1

    def __init__(self, metric_name: str = "step_eval_loss") -> None:
        self.metric_name = metric_name
        self.modes: list[bool] = []
        self.evaluated_at: list[tuple[int, int, int]] = []  # (epoch, step, updates so far)
        self._count = 0

    def on_train_step_start(self, trainer, **kwargs):
        self.modes.append(trainer.model.training)

    def on_train_step_end(self, trainer, step, **kwargs):
        history = trainer.run_history
        count = (
            len(history.get_metric_values(self.metric_name))
            if self.metric_name in history.get_metric_names()
            else 0
        )
        if count > self._count:
            progress = trainer.progress
            self.evaluated_at.append((progress.epoch, step, progress.num_update_steps))
            self._count = count


def eval_loss(model: nn.Module, dataset) -> float:
    inputs, targets = dataset.tensors
    with torch.no_grad():
        return nn.functional.cross_entropy(model(inputs), targets).item()


def test_evaluates_every_n_updates_on_update_steps_only_and_keeps_training_mode():
    watcher = StepWatcher()
    trainer = make_trainer(callbacks=[StepBasedEvaluationCallback(2), watcher])
    eval_dataset = make_dataset(6, seed=1)
    trainer.train(
        make_dataset(12),
        num_epochs=2,
        eval_dataset=eval_dataset,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
    )
    # 6 batches per epoch, an update every 2: updates 2, 4 and 6 end steps 3, 1 and 5
    assert watcher.evaluated_at == [(0, 3, 2), (1, 1, 4), (1, 5, 6)]
    assert len(watcher.modes) == 12 and all(watcher.modes)  # back in train mode every step
    values = trainer.run_history.get_metric_values("step_eval_loss")
    assert len(values) == 3
    # the last evaluation ran after the final update: it is the trained model's loss
    assert values[-1] == pytest.approx(eval_loss(trainer.get_model(), eval_dataset))
    assert len(trainer.run_history.get_metric_values("eval_loss_epoch")) == 2


def test_own_eval_dataset_and_metric_name_with_the_default_callbacks():
    step_eval_dataset = make_dataset(5, seed=2)
    watcher = StepWatcher("holdout_loss")
    callback = StepBasedEvaluationCallback(
        3, eval_dataset=step_eval_dataset, metric_name="holdout_loss"
    )
    trainer = make_trainer(callbacks=[*DEFAULT_CALLBACKS, callback, watcher])
    trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=2)
    assert [updates for _, _, updates in watcher.evaluated_at] == [3, 6]
    values = trainer.run_history.get_metric_values("holdout_loss")
    assert values[-1] == pytest.approx(eval_loss(trainer.get_model(), step_eval_dataset))
    assert callback.writes_metrics == ("holdout_loss",)
    assert all(watcher.modes)


def test_no_data_to_evaluate_on_fails_at_train_start():
    watcher = StepWatcher()
    trainer = make_trainer(callbacks=[StepBasedEvaluationCallback(1), watcher])
    with pytest.raises(ValueError, match="no data to evaluate on"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    assert watcher.modes == []
    with pytest.raises(ValueError, match="positive integer"):
        StepBasedEvaluationCallback(0)


class _PlainEvalDefaultsTrainer(Trainer):
    def get_default_eval_dl_kwargs(self, batch_size):
        return {"batch_size": batch_size, "shuffle": False, "num_workers": 0}  # no collate_fn


def test_its_own_eval_data_gets_the_collate_fn_given_to_train():
    batch_sizes = []

    def collate(samples):
        batch_sizes.append(len(samples))
        return torch.utils.data.default_collate(samples)

    model = nn.Linear(4, 3)
    trainer = _PlainEvalDefaultsTrainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[StepBasedEvaluationCallback(2, eval_dataset=make_dataset(3, seed=2))],
    )
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2, collate_fn=collate)
    assert batch_sizes == [2, 2, 2, 1]  # two training batches, then the 3 evaluation samples


def test_a_resume_right_after_an_evaluated_update_does_not_evaluate_it_again(tmp_path):
    def run(callbacks, **kwargs):
        trainer = make_trainer(callbacks=[StepBasedEvaluationCallback(2), *callbacks])
        trainer.train(
            make_dataset(12),
            num_epochs=2,
            eval_dataset=make_dataset(6, seed=1),
            per_device_batch_size=2,
            gradient_accumulation_steps=2,
            train_dataloader_kwargs={"shuffle": False},
            **kwargs,
        )
        return trainer.run_history.get_metric_values("step_eval_loss")

    class SaveAndStop(TrainerCallback):
        order = 1  # after the evaluation of update 2 (epoch 0, step 3)

        def on_train_step_end(self, trainer, step, **kwargs):
            if trainer.progress.num_update_steps == 2:
                trainer.save_training_state(tmp_path / "state")
                raise StopTrainingError("interrupted")

    uninterrupted = run([])
    assert len(uninterrupted) == 3  # after updates 2, 4 and 6
    assert run([SaveAndStop()]) == uninterrupted[:1]
    # The resumed run's first step performs no update (the count is still 2): no evaluation.
    assert run([], resume_from=tmp_path / "state") == pytest.approx(uninterrupted)
