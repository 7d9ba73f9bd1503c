"""SaveBestModelCallback: saves on improvement, reloads the best weights at the end."""

from __future__ import annotations

import torch
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import SaveBestModelCallback


class ScriptedScore(TrainerCallback):
    writes_metrics = ("score",)

    def __init__(self, values):
        self.values = list(values)
        self.weights_per_epoch = []

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("score", self.values.pop(0))
        weights = {k: v.clone() for k, v in trainer.get_model().state_dict().items()}
        self.weights_per_epoch.append(weights)


class KeysSeen(TrainerCallback):
    order = 50  # after the saving callback of the same event

    def __init__(self, path):
        self.path, self.keys, self.epochs = path, [], []

    def on_training_run_epoch_end(self, trainer, **kwargs):
        if self.path.exists():
            checkpoint = torch.load(self.path, weights_only=True)
            self.keys.append(tuple(sorted(checkpoint)))
            self.epochs.append(checkpoint["epoch"])


def test_saves_on_improvement_with_the_same_keys_and_reloads_the_best(tmp_path):
    path = tmp_path / "best.pt"
    scores = ScriptedScore([0.5, 0.3, 0.4, 0.2, 0.6])
    keys = KeysSeen(path)
    trainer = make_trainer(callbacks=[scores, SaveBestModelCallback(path, "score"), keys])
    trainer.train(
        make_dataset(8), num_epochs=5, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    assert keys.epochs == [1, 2, 2, 4, 4]
    assert len(set(keys.keys)) == 1
    assert keys.keys[0] == ("epoch", "model_state_dict", "optimizer_state_dict", "score")
    # the model now holds epoch 4's weights, not the last epoch's
    for name, value in trainer.get_model().state_dict().items():
        assert torch.equal(value, scores.weights_per_epoch[3][name])
        assert not torch.equal(value, scores.weights_per_epoch[4][name])


def test_greater_is_better_and_two_instances_watching_different_metrics(tmp_path):
    class TwoMetrics(TrainerCallback):
        writes_metrics = ("accuracy",)
        values = [0.5, 0.9, 0.7]

        def on_eval_epoch_end(self, trainer, **kwargs):
            trainer.run_history.update_metric("accuracy", self.values.pop(0))

    loss_saver = SaveBestModelCallback(tmp_path / "loss.pt", load_saved_checkpoint=False)
    accuracy_saver = SaveBestModelCallback(
        tmp_path / "acc.pt", "accuracy", greater_is_better=True, load_saved_checkpoint=False
    )
    trainer = make_trainer(callbacks=[TwoMetrics(), loss_saver, accuracy_saver])
    trainer.train(
        make_dataset(8), num_epochs=3, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    assert torch.load(tmp_path / "acc.pt", weights_only=True)["epoch"] == 2
    assert accuracy_saver.monitor.best_value == 0.9
    losses = trainer.run_history.get_metric_values("eval_loss_epoch")
    assert loss_saver.monitor.best_value == min(losses)


def test_a_run_stopped_before_any_save_does_not_fail(tmp_path):
    class StopFirst(TrainerCallback):
        def on_train_step_end(self, trainer, **kwargs):
            raise StopTrainingError("before any epoch ended")

    path = tmp_path / "best.pt"
    trainer = make_trainer(callbacks=[StopFirst(), SaveBestModelCallback(path)])
    trainer.train(
        make_dataset(8), num_epochs=2, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    assert not path.exists()


def test_state_round_trips():
    saver = SaveBestModelCallback()
    saver.monitor.update(0.25, epoch=3)
    saver.saved_this_run = True
    restored = SaveBestModelCallback()
    restored.load_state_dict(saver.state_dict())
    assert (restored.monitor.best_value, restored.monitor.best_epoch) == (0.25, 3)
    assert restored.saved_this_run


def test_wsd_checkpoints_are_saved_before_each_decay_and_at_each_checkpoint(tmp_path):
    from trainwright.callbacks import WSDCheckpointCallback
    from trainwright.schedulers import WSDLrScheduler

    class WeightsAtUpdate(TrainerCallback):
        def __init__(self):
            self.weights = {}

        def on_after_optimizer_step(self, trainer, **kwargs):
            state = trainer.get_model().state_dict()
            self.weights[trainer.progress.num_update_steps] = {
                k: v.clone() for k, v in state.items()
            }

    recorder = WeightsAtUpdate()
    trainer = make_trainer(callbacks=[recorder, WSDCheckpointCallback(tmp_path)])
    # 12 updates; checkpoints after 6 and 12 updates, decay windows of 2 and 3 updates
    scheduler_fn = WSDLrScheduler.create_scheduler_fn(
        checkpoint_steps=[6, 12], decay_phase_ratio=0.25, lr_min_ratio=0.1
    )
    trainer.train(make_dataset(12), num_epochs=2, per_device_batch_size=2,
                  create_scheduler_fn=scheduler_fn)  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "post-decay-000000006.pt",
        "post-decay-000000012.pt",
        "pre-decay-000000004",
        "pre-decay-000000009",
    ]
    for updates in (6, 12):
        saved = torch.load(tmp_path / f"post-decay-{updates:09d}.pt", weights_only=True)
        for name, value in saved["model_state_dict"].items():
            assert torch.equal(value, recorder.weights[updates][name])
    state = torch.load(tmp_path / "pre-decay-000000009" / "trainer_state_0.pt", weights_only=True)
    assert state["progress"]["num_update_steps"] == 9


def test_wsd_checkpoints_need_a_wsd_scheduler(tmp_path):
    import pytest

    from trainwright.callbacks import WSDCheckpointCallback

    trainer = make_trainer(callbacks=[WSDCheckpointCallback(tmp_path)])
    with pytest.raises(ValueError, match="needs a WSDLrScheduler"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
