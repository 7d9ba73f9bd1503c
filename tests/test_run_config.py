"""RunConfig: frozen, typed, readable as a mapping."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import TrainerCallback


def test_run_config_states_the_run():
    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=3,
        eval_dataset=make_dataset(5),
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
    )
    config = trainer.run_config
    assert config.num_epochs == 3
    assert config.train_dataloader_len == 5
    assert config.num_update_steps_per_epoch == 3
    assert config.num_update_steps == 9
    assert config.train_total_batch_size == 4
    assert config.eval_dataloader_len == 3
    assert config.num_processes == 1 and not config.is_distributed
    assert config.max_grad_norm == 1.0 and config.gradient_clip_value is None
    assert config["train_per_device_batch_size"] == 2
    assert dict(config)["num_update_steps"] == 9
    assert set(config) == {field.name for field in dataclasses.fields(config)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_epochs = 4
    with pytest.raises(KeyError, match="no field 'epochs'"):
        config["epochs"]


def test_batch_sizes_come_from_the_dataloaders_built():
    trainer = make_trainer()
    trainer.train(
        make_dataset(12),
        num_epochs=1,
        eval_dataset=make_dataset(6),
        per_device_batch_size=8,
        gradient_accumulation_steps=2,
        train_dataloader_kwargs={"batch_size": 4},
        eval_dataloader_kwargs={"batch_size": 3},
    )
    config = trainer.run_config
    assert config.train_per_device_batch_size == 4
    assert config.train_total_batch_size == 8
    assert config.train_dataloader_len == 3 and config.num_update_steps_per_epoch == 2
    assert config.eval_per_device_batch_size == 3 and config.eval_dataloader_len == 2
    assert config.train_dl_kwargs["batch_size"] == 4 and config.eval_dl_kwargs["batch_size"] == 3


class _RunConfigReader(TrainerCallback):
    """Reads run_config during an evaluation, as pytorch-accelerated's documented
    SavePredictionsCallback does (it writes its file on the main process only)."""

    def __init__(self):
        self.seen = []

    def on_eval_epoch_end(self, trainer, **kwargs):
        config = trainer.run_config
        if config.is_world_process_zero:
            self.seen.append((config.eval_per_device_batch_size, config.eval_dataloader_len))


def test_evaluate_describes_its_own_run():
    reader = _RunConfigReader()
    trainer = make_trainer(callbacks=[reader])
    trainer.evaluate(make_dataset(10), per_device_batch_size=4)  # before any train()
    assert reader.seen == [(4, 3)]
    assert trainer.run_config is None  # restored, as eval_dataloader is
    trainer.train(
        make_dataset(8), num_epochs=1, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    training_config = trainer.run_config
    trainer.evaluate(make_dataset(10), per_device_batch_size=5)
    assert reader.seen[-2:] == [(2, 2), (5, 2)]
    assert trainer.run_config is training_config


def test_the_evaluation_run_config_has_no_training_facts():
    configs = []

    class Keep(TrainerCallback):
        def on_evaluation_run_start(self, trainer, **kwargs):
            configs.append(trainer.run_config)

    trainer = make_trainer(callbacks=[Keep()])
    trainer.evaluate(make_dataset(6), per_device_batch_size=4)
    (config,) = configs
    assert config.num_epochs is None and config.train_dl_kwargs is None
    assert config.train_per_device_batch_size is None and config.num_update_steps is None
    assert config.num_processes == 1 and config.device == "cpu"
    assert config.eval_dl_kwargs["batch_size"] == 4
