"""Trainer.find_learning_rate: the range test leaves the trainer exactly as it was, and its
suggestion trains better than the extremes it tried."""

from __future__ import annotations

import math
import random

import numpy
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer
from trainwright.lr_finder import learning_rate_schedule, steepest, suggest

NO_WORKERS = {"num_workers": 0, "persistent_workers": False}


def _digits() -> TensorDataset:
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16
    return TensorDataset(inputs[:640], torch.tensor(digits.target)[:640])


def _trainer(optimizer_class: type = torch.optim.SGD, lr: float = 0.01) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    return Trainer(
        model, nn.CrossEntropyLoss(), optimizer_class(model.parameters(), lr=lr), callbacks=()
    )


def _final_loss(lr: float, dataset: TensorDataset) -> float:
    trainer = _trainer(lr=lr)
    trainer.train(
        dataset, num_epochs=1, per_device_batch_size=32, train_dataloader_kwargs=NO_WORKERS
    )
    loss = trainer.run_history.get_latest_metric("train_loss_epoch")
    return loss if math.isfinite(loss) else math.inf


def test_the_suggestion_lies_in_the_range_and_trains_better_than_its_extremes() -> None:
    dataset = _digits()
    result = _trainer().find_learning_rate(
        dataset, per_device_batch_size=32, num_steps=100, dataloader_kwargs=NO_WORKERS
    )
    lowest, highest = result.learning_rates[0], result.learning_rates[-1]
    assert lowest == pytest.approx(1e-7)
    assert lowest <= result.suggestion <= highest
    assert lowest <= result.steepest_lr <= highest
    assert len(result.losses) == len(result.learning_rates) == len(result.raw_losses)
    suggested = _final_loss(result.suggestion, dataset)
    assert suggested < _final_loss(lowest, dataset)
    assert suggested < _final_loss(highest, dataset)


def test_the_trainer_is_bit_identical_after_the_test() -> None:
    dataset = _digits()
    trainer = _trainer(torch.optim.AdamW, lr=1e-3)
    trainer.train(
        dataset, num_epochs=1, per_device_batch_size=64, train_dataloader_kwargs=NO_WORKERS
    )
    model = trainer.get_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm stats too
    optimizer_state = trainer.optimizer.state_dict()
    optimizer_tensors = {
        (index, name): value.clone()
        for index, state in optimizer_state["state"].items()
        for name, value in state.items()
    }
    param_groups = [dict(group) for group in optimizer_state["param_groups"]]
    rng = (torch.get_rng_state(), random.getstate(), numpy.random.get_state()[1].copy())

    result = trainer.find_learning_rate(
        dataset, per_device_batch_size=32, num_steps=30, dataloader_kwargs=NO_WORKERS
    )
    assert len(result.learning_rates) > 3  # it trained, changing everything it then restored

    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    state = trainer.optimizer.state_dict()
    assert state["param_groups"] == param_groups
    for (index, name), value in optimizer_tensors.items():
        assert torch.equal(state["state"][index][name], value)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert numpy.array_equal(numpy.random.get_state()[1], rng[2])
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert model.training


def test_a_run_after_the_test_equals_a_run_without_it() -> None:
    dataset = _digits()

    def train(with_finder: bool) -> dict[str, torch.Tensor]:
        trainer = _trainer()
        if with_finder:
            trainer.find_learning_rate(
                dataset, per_device_batch_size=32, num_steps=20, dataloader_kwargs=NO_WORKERS
            )
        trainer.train(
            dataset, num_epochs=1, per_device_batch_size=32, train_dataloader_kwargs=NO_WORKERS
        )
        return trainer.get_model().state_dict()

    torch.manual_seed(1)
    without = train(False)
    torch.manual_seed(1)
    with_finder = train(True)
    for name, value in without.items():
        assert torch.equal(value, with_finder[name]), name


def test_the_test_stops_when_the_loss_diverges() -> None:
    result = _trainer().find_learning_rate(
        _digits(),
        per_device_batch_size=32,
        start_lr=1.0,
        end_lr=1e6,
        num_steps=60,
        dataloader_kwargs=NO_WORKERS,
    )
    assert result.stopped_early
    assert len(result.learning_rates) < 60


def test_the_schedule_and_suggestion_helpers() -> None:
    schedule = learning_rate_schedule(1e-4, 1.0, 5)
    assert schedule == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    losses = [3.0, 2.9, 2.5, 1.5, 1.0, 0.9, 5.0]
    lrs = learning_rate_schedule(1e-6, 1.0, len(losses))
    assert suggest(lrs, losses) == pytest.approx(lrs[5] / 10)
    assert steepest(lrs, losses) == pytest.approx(lrs[3])
    assert suggest(lrs[:2], losses[:2]) is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr"),
        ({"num_steps": 0}, "num_steps"),
        ({"smoothing": 0}, "smoothing"),
        ({"divergence_factor": 1}, "divergence_factor"),
        ({"per_device_batch_size": 0}, "per_device_batch_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _trainer().find_learning_rate(_digits(), **kwargs)


def test_the_plot_marks_the_suggestion() -> None:
    result = _trainer().find_learning_rate(
        _digits(), per_device_batch_size=32, num_steps=30, dataloader_kwargs=NO_WORKERS
    )
    figure = result.plot()
    (axes,) = figure.axes
    assert axes.get_xscale() == "log"
    assert len(axes.lines) == 2  # the loss curve and the suggestion's line
