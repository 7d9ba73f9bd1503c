"""pytorch-accelerated 0.1.61's example scripts, ported by changing only their imports.

Each script in ``scripts/`` is written as it would be for pytorch-accelerated (its imports
name ``pytorch_accelerated``), from that library's public examples, with generated data and
tiny models; ``port()`` swaps the package name in the import lines and runs it.
"""

from __future__ import annotations

import math

import pytest
import torch
from ported import port
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from trainwright import Trainer
from trainwright.finetuning import Layer


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SaveBestModelCallback's default best_model.pt lands here


def test_core_mnist():
    trainer = port("core_mnist").main()
    history = trainer.run_history
    assert len(history.get_metric_values("train_loss_epoch")) == 2
    assert len(history.get_metric_values("eval_loss_epoch")) == 2
    assert math.isfinite(history.get_latest_metric("evaluation_loss"))


def test_metrics_in_callback():
    trainer = port("metrics_in_callback").main()
    accuracy = trainer.run_history.get_metric_values("accuracy")
    assert len(accuracy) == 3  # two training epochs, then evaluate()
    assert all(0.0 <= value <= 1.0 for value in accuracy)


def test_metrics_in_loop():
    trainer = port("metrics_in_loop").main()
    assert len(trainer.run_history.get_metric_values("accuracy")) == 3


def test_custom_event():
    _trainer, verifier = port("custom_event").main()
    assert verifier.num_verified == 2 * (72 // 16)  # drop_last: 4 full batches per epoch


def test_timm_style_components(tmp_path):
    trainer = port("timm_style").main(num_epochs=3)
    scheduler = trainer.scheduler
    # the script's scheduler_step override steps per update, its eval_epoch_end per epoch;
    # the trainer adds its own step(epoch) after each epoch (see the migration guide)
    assert scheduler.num_update_calls == 3 * 2
    assert scheduler.epochs_stepped == [2, 1, 3, 2, 4, 3]
    ema = trainer.ema_model
    assert isinstance(ema, nn.Module)
    assert len(trainer.run_history.get_metric_values("ema_model_accuracy")) == 3
    assert (tmp_path / "best_model.pt").is_file()


def test_progressive_resizing(tmp_path):
    trainer = port("progressive_resizing").main()
    history = trainer.run_history
    assert history.current_epoch == 4  # 1 + 2 epochs, the history kept across train() calls
    assert len(history.get_metric_values("accuracy")) == 3
    # OneCycleLR sized by the placeholders ends on the last update of each run
    assert trainer.scheduler.last_epoch == trainer.run_config.num_update_steps
    assert (tmp_path / "best_model.pt").is_file()


def test_hf_glue_with_a_tiny_random_bert():
    trainer = port("hf_glue").main(num_epochs=2, batch_size=8, gradient_accumulation_steps=2)
    metrics = trainer.run_history.get_metric_values("metrics")
    assert len(metrics) == 2 and set(metrics[0]) == {"accuracy", "f1"}
    # get_linear_schedule_with_warmup, created by the create_scheduler(self) override, on
    # the optimizer the override passed, stepped after every update
    assert isinstance(trainer.scheduler, LambdaLR)
    assert trainer.scheduler.last_epoch == trainer.run_config.num_update_steps == 2


def test_pets_fine_tuning_with_model_freezer():
    results = port("pets_finetune").main()
    trainer = results["trainer"]
    assert isinstance(trainer, Trainer)
    assert results["frozen_groups"][0] == (0, -5)  # conv1 of 5 groups with parameters
    assert results["num_param_groups"] > 1  # one new group per unfrozen layer group
    assert trainer.run_history.current_epoch == 4
    assert all(parameter.requires_grad for parameter in trainer.get_model().parameters())
    assert all(isinstance(layer, Layer) and not layer.is_frozen for layer in results["layers"])
    assert torch.isfinite(torch.tensor(trainer.run_history.get_metric_values("accuracy"))).all()
