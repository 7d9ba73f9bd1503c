"""Learning-rate, timing, model-summary and CUDA-memory callbacks."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer
from torch import nn

from trainwright.callbacks import (
    CudaMemoryCallback,
    LearningRateMonitorCallback,
    ModelSummaryCallback,
    TimingCallback,
)
from trainwright.callbacks.monitoring import learning_rates, summarize_model


def test_learning_rate_is_recorded_per_epoch_as_the_epoch_starts_with_it():
    monitor = LearningRateMonitorCallback(log_every_n_updates=2)
    trainer = make_trainer(callbacks=[monitor], lr=0.1)
    trainer.train(
        make_dataset(8),
        num_epochs=3,
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=4),
        # 4 updates per epoch: the LR drops by 10x after each epoch
    )
    assert trainer.run_history.get_metric_values("learning_rate") == pytest.approx(
        [0.1, 0.01, 0.001]
    )
    # every 2 updates, the rate after the update (and its scheduler step)
    steps = [step for step, _ in monitor.update_history]
    assert steps == [2, 4, 6, 8, 10, 12]
    rates = [rates["learning_rate"] for _, rates in monitor.update_history]
    assert rates == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001, 0.0001])


def test_learning_rates_name_every_param_group():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[1].parameters()}], lr=0.1
    )
    assert learning_rates(optimizer) == {"learning_rate_group_0": 0.5, "learning_rate_group_1": 0.1}


def test_timing_metrics_are_recorded_every_epoch():
    trainer = make_trainer(callbacks=[TimingCallback()])
    trainer.train(
        make_dataset(12), num_epochs=2, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    history = trainer.run_history
    for name in ("train_epoch_time_s", "epoch_time_s", "samples_per_s", "updates_per_s", "eta_s"):
        assert len(history.get_metric_values(name)) == 2, name
    train_time = history.get_latest_metric("train_epoch_time_s")
    assert 0 < train_time <= history.get_latest_metric("epoch_time_s")
    # 12 samples and 6 updates per epoch in train_epoch_time_s
    assert history.get_latest_metric("samples_per_s") == pytest.approx(12 / train_time)
    assert history.get_latest_metric("updates_per_s") == pytest.approx(6 / train_time)
    assert history.get_metric_values("eta_s")[0] > 0
    assert history.get_latest_metric("eta_s") == 0  # nothing left after the last epoch


def test_model_summary_counts_parameters_per_top_level_module(capsys):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    summary = ModelSummaryCallback()
    trainer = make_trainer(callbacks=[summary], model=model)
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=4)
    rows = [
        (row.name, row.type_name, row.num_trainable_parameters, row.num_parameters)
        for row in summary.summary
    ]
    assert rows == [("0", "Linear", 8, 40), ("1", "ReLU", 0, 0), ("2", "Linear", 27, 27)]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["module", "type", "trainable", "total"]
    assert printed[4].split() == ["total", "35", "67"]


def test_model_summary_counts_own_and_shared_parameters_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.encoder = nn.Linear(3, 3, bias=False)
            self.decoder = nn.Linear(3, 3, bias=False)
            self.decoder.weight = self.encoder.weight

    rows = summarize_model(Tied())
    assert [(row.name, row.num_parameters) for row in rows] == [
        ("encoder", 9),
        ("decoder", 0),
        ("(own)", 3),
    ]


def test_cuda_memory_callback_records_nothing_off_cuda():
    trainer = make_trainer(callbacks=[CudaMemoryCallback()])
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    if trainer.device.type == "cuda":
        assert trainer.run_history.get_latest_metric("cuda_max_memory_allocated_mib") > 0
    else:
        assert trainer.run_history.get_metric_names() == {"train_loss_epoch"}


def test_the_model_summary_goes_down_to_max_depth():
    from trainwright.callbacks.monitoring import format_model_summary, summarize_model

    model = nn.Sequential(
        nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 2)))
    )
    model[0].weight.requires_grad_(False)
    depth_one = [(row.name, row.num_parameters) for row in summarize_model(model)]
    assert depth_one == [("0", 40), ("1", 90)]
    rows = summarize_model(model, max_depth=3)
    assert [(row.name, row.depth, row.num_parameters) for row in rows] == [
        ("0", 1, 40),
        ("1", 1, 90),
        ("1.0", 2, 72),
        ("1.1", 2, 18),
        ("1.1.0", 3, 18),
    ]
    assert rows[0].num_trainable_parameters == 8
    table = format_model_summary(rows)
    assert "    1.1.0" in table  # indented by depth
    assert table.splitlines()[-1].split()[-2:] == ["98", "130"]  # totals count each once
    with pytest.raises(ValueError, match="max_depth"):
        summarize_model(model, max_depth=0)
