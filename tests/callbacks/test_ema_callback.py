"""ModelEmaCallback: an EMA updated after every optimizer update, evaluated and saved."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from torch import nn

from trainwright import TrainerCallback
from trainwright.callbacks import ModelEmaCallback, SaveBestModelCallback


class WeightsAfterUpdates(TrainerCallback):
    """Records the model's weights at the start and after every optimizer update; runs
    before ModelEmaCallback (order -1), which only reads the weights."""

    order = -2

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.after_updates: list[dict[str, torch.Tensor]] = []

    def on_training_run_start(self, trainer, **kwargs):
        self.initial = copy.deepcopy(trainer.get_model().state_dict())

    def on_after_optimizer_step(self, trainer, **kwargs):
        self.after_updates.append(copy.deepcopy(trainer.get_model().state_dict()))


def hand_computed_ema(initial, after_updates, decay, use_warmup):
    ema = {name: value.clone() for name, value in initial.items()}
    for num_updates, weights in enumerate(after_updates):
        decay_t = min(decay, (1 + num_updates) / (10 + num_updates)) if use_warmup else decay
        for name, value in weights.items():
            ema[name] = decay_t * ema[name] + (1 - decay_t) * value
    return ema


def eval_loss(model: nn.Module, dataset) -> float:
    inputs, targets = dataset.tensors
    with torch.no_grad():
        return nn.functional.cross_entropy(model(inputs), targets).item()


@pytest.mark.parametrize("use_warmup", [True, False])
def test_ema_after_five_updates_equals_the_hand_computed_average(use_warmup):
    recorder = WeightsAfterUpdates()
    ema_callback = ModelEmaCallback(decay=0.8, use_warmup=use_warmup)
    trainer = make_trainer(callbacks=[ema_callback, recorder])
    eval_dataset = make_dataset(6, seed=1)
    trainer.train(
        make_dataset(10), num_epochs=1, eval_dataset=eval_dataset, per_device_batch_size=2
    )

    assert len(recorder.after_updates) == 5
    assert ema_callback.model_ema.num_updates == 5
    expected = hand_computed_ema(recorder.initial, recorder.after_updates, 0.8, use_warmup)
    for name, value in ema_callback.model_ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    # the trained model is not the average
    assert not torch.equal(trainer.get_model()[0].weight, ema_callback.model_ema.module[0].weight)
    # the EMA model was evaluated on the eval data, under its own metric name
    assert trainer.run_history.get_metric_values("ema_model_eval_loss_epoch") == pytest.approx(
        [eval_loss(ema_callback.model_ema.module, eval_dataset)]
    )
    assert "eval_loss_epoch" in trainer.run_history.get_metric_names()
    assert trainer.run_history.metric_name_prefix == ""


def test_ema_is_updated_once_per_optimizer_update_not_per_batch_or_epoch():
    ema_callback = ModelEmaCallback(evaluate=False)
    trainer = make_trainer(callbacks=[ema_callback])
    trainer.train(
        make_dataset(10), num_epochs=2, per_device_batch_size=2, gradient_accumulation_steps=2
    )
    assert ema_callback.model_ema.num_updates == trainer.run_config.num_update_steps == 6
    assert "ema_model_eval_loss_epoch" not in trainer.run_history.get_metric_names()


def test_evaluating_without_eval_data_fails_at_train_start():
    trainer = make_trainer(callbacks=[ModelEmaCallback()])
    before = copy.deepcopy(trainer.model.state_dict())
    with pytest.raises(ValueError, match=r"no eval_dataset.*evaluate=False"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    for name, value in trainer.get_model().state_dict().items():
        assert torch.equal(value, before[name])  # nothing was trained


def test_best_ema_weights_are_saved_and_watchable(tmp_path):
    ema_path, best_path = tmp_path / "ema.pt", tmp_path / "best.pt"
    ema_callback = ModelEmaCallback(decay=0.5, save_path=ema_path)
    # another callback can watch the EMA metric: it is recorded before the default order runs
    saver = SaveBestModelCallback(
        best_path, "ema_model_eval_loss_epoch", load_saved_checkpoint=False
    )
    trainer = make_trainer(callbacks=[saver, ema_callback])
    trainer.train(
        make_dataset(8), num_epochs=3, eval_dataset=make_dataset(4, seed=1), per_device_batch_size=2
    )
    losses = trainer.run_history.get_metric_values("ema_model_eval_loss_epoch")
    assert len(losses) == 3
    saved = torch.load(ema_path, weights_only=True)
    assert saved["ema_model_eval_loss_epoch"] == min(losses)
    assert saved["epoch"] == losses.index(min(losses)) + 1
    assert torch.load(best_path, weights_only=True)["epoch"] == saved["epoch"]
    if saved["epoch"] == 3:  # the last epoch was the best: the file holds the final average
        for name, value in ema_callback.model_ema.module.state_dict().items():
            torch.testing.assert_close(saved["model_state_dict"][name], value)
    trainer.load_checkpoint(ema_path, load_optimizer=False)  # loads into a model of that shape


def test_without_evaluation_the_final_average_is_saved(tmp_path):
    path = tmp_path / "ema.pt"
    ema_callback = ModelEmaCallback(evaluate=False, save_path=path)
    trainer = make_trainer(callbacks=[ema_callback])
    trainer.train(make_dataset(6), num_epochs=1, per_device_batch_size=2)
    saved = torch.load(path, weights_only=True)
    assert saved["num_updates"] == 3
    for name, value in ema_callback.model_ema.module.state_dict().items():
        torch.testing.assert_close(saved["model_state_dict"][name], value)


def test_state_dict_round_trip_continues_the_average():
    first = ModelEmaCallback(decay=0.9, evaluate=False)
    trainer = make_trainer(callbacks=[first])
    trainer.train(make_dataset(6), num_epochs=1, per_device_batch_size=2)
    state = first.state_dict()
    assert state["model_ema"]["_extra_state"]["num_updates"] == 3

    resumed = ModelEmaCallback(decay=0.9, evaluate=False)
    resumed.load_state_dict(state)  # before train(): applied when the run creates the average
    recorder = WeightsAfterUpdates()
    resumed_trainer = make_trainer(
        callbacks=[resumed, recorder], model=copy.deepcopy(trainer.model)
    )
    resumed_trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    assert resumed.model_ema.num_updates == 5
    expected = {
        name.removeprefix("module."): value.clone()
        for name, value in state["model_ema"].items()
        if name.startswith("module.")
    }
    for num_updates, weights in enumerate(recorder.after_updates, start=3):
        decay = min(0.9, (1 + num_updates) / (10 + num_updates))  # the warm-up resumes
        for name, value in weights.items():
            expected[name] = decay * expected[name] + (1 - decay) * value
    for name, value in resumed.model_ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[name])

    # a later train() without a loaded state starts a fresh average
    resumed_trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    assert resumed.model_ema.num_updates == 2


def test_declares_the_metric_it_writes():
    assert ModelEmaCallback().writes_metrics == ("ema_model_eval_loss_epoch",)
    assert ModelEmaCallback(evaluate=False).writes_metrics == ()
    with pytest.raises(ValueError, match="decay must be between 0 and 1"):
        ModelEmaCallback(decay=1.5)


def test_with_decay_zero_the_ema_evaluates_like_the_model_also_with_an_eval_batch_limit():
    ema_callback = ModelEmaCallback(decay=0.0, use_warmup=False)
    trainer = make_trainer(callbacks=[ema_callback])
    trainer.train(
        make_dataset(8),
        num_epochs=2,
        eval_dataset=make_dataset(7, seed=1),
        per_device_batch_size=2,
        max_num_eval_batches=2,
    )
    history = trainer.run_history
    assert history.get_metric_values("ema_model_eval_loss_epoch") == pytest.approx(
        history.get_metric_values("eval_loss_epoch")
    )
