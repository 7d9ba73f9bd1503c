"""Tiny models and tensor datasets, a trainer built from them, a callback recording events."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import EVENTS


def make_dataset(num_samples: int = 12, num_features: int = 4, num_classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, num_features, generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return TensorDataset(inputs, targets)


def make_model(num_features: int = 4, num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(num_features, 8), nn.ReLU(), nn.Linear(8, num_classes))


def make_trainer(
    callbacks=(), lr: float = 0.1, model: nn.Module | None = None, **kwargs
) -> Trainer:
    model = model if model is not None else make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks, **kwargs)


class RecorderCallback(TrainerCallback):
    """Records every built-in event with the names of its keyword arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, ...]]] = []
        self.steps: list[tuple[str, int]] = []

    def _record(self, event: str, trainer: Trainer, kwargs: dict[str, Any]) -> None:
        assert isinstance(trainer, Trainer)
        self.events.append((event, tuple(sorted(kwargs))))
        if "step" in kwargs:
            self.steps.append((event, kwargs["step"]))


def _make_recording_method(event: str):
    def method(self, trainer, **kwargs):
        self._record(event, trainer, kwargs)

    method.__name__ = event
    return method


for _event in EVENTS:
    setattr(RecorderCallback, _event, _make_recording_method(_event))
