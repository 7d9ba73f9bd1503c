"""RunConfig: frozen, typed, readable as a mapping."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import make_dataset, make_trainer


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
