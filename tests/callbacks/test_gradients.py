"""GradientNormMonitorCallback: the norms match a hand computation, per update and per epoch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import GradientNormMonitorCallback

NO_WORKERS = {"shuffle": False, "num_workers": 0, "persistent_workers": False}


class NormsByHand(TrainerCallback):
    """Computes the norm of every update's gradients before clipping, the plain way."""

    order = -20

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_after_backward(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self._latest = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()

    def on_before_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self.norms.append(self._latest)  # the last backward of the window: before clipping


class PublishedNorms(TrainerCallback):
    order = 10  # after the monitor

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_after_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self.values.append(float(trainer.step_metrics["gradient_norm"]))


def _run(max_grad_norm: float | None, accumulation: int) -> tuple[Trainer, list[float], list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    by_hand, published = NormsByHand(), PublishedNorms()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.5),
        callbacks=(GradientNormMonitorCallback(), by_hand, published),
    )
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(
        torch.randn(20, 4, generator=generator), torch.randint(0, 3, (20,), generator=generator)
    )
    trainer.train(
        dataset,
        num_epochs=2,
        per_device_batch_size=4,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=max_grad_norm,
        train_dataloader_kwargs=NO_WORKERS,
    )
    return trainer, by_hand.norms, published.values


@pytest.mark.parametrize(
    ("max_grad_norm", "accumulation"), [(None, 1), (None, 2), (0.05, 1), (0.05, 2)]
)
def test_gradient_norms_match_a_hand_computation(
    max_grad_norm: float | None, accumulation: int
) -> None:
    trainer, expected, published = _run(max_grad_norm, accumulation)
    updates_per_epoch = -(-5 // accumulation)
    assert len(expected) == len(published) == 2 * updates_per_epoch
    assert published == pytest.approx(expected, rel=1e-5)
    history = trainer.run_history
    for epoch in range(2):
        epoch_norms = expected[epoch * updates_per_epoch : (epoch + 1) * updates_per_epoch]
        assert history.get_metric_values("gradient_norm_max")[epoch] == pytest.approx(
            max(epoch_norms), rel=1e-5
        )
        assert history.get_metric_values("gradient_norm_mean")[epoch] == pytest.approx(
            sum(epoch_norms) / len(epoch_norms), rel=1e-5
        )
    if max_grad_norm is not None:  # the clipping's own norm, before it clipped
        assert max(expected) > max_grad_norm


def test_norms_reach_trackers_and_the_progress_bar_per_update() -> None:
    import io
    import sys
    from pathlib import Path

    from trainwright.callbacks import ExperimentTrackerCallback, ProgressBarCallback

    sys.path.insert(0, str(Path(__file__).parent))
    from test_loggers import RecordingTracker

    tracker = RecordingTracker()
    output = io.StringIO()
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(
            ExperimentTrackerCallback([tracker], log_every_n_updates=1),
            ProgressBarCallback(loss_every_n_steps=1, line_every_n_seconds=0, file=output),
            GradientNormMonitorCallback(),
        ),
    )
    dataset = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    trainer.train(
        dataset, num_epochs=1, per_device_batch_size=4, train_dataloader_kwargs=NO_WORKERS
    )
    norms = tracker.values_of("gradient_norm_step")
    assert len(norms) == 3 and all(norm > 0 for norm in norms)
    assert tracker.steps_of("gradient_norm_step") == [1, 2, 3]
    # a line is printed as the step ends, showing the values that had arrived before it
    assert f"gradient_norm={norms[1]:.4g}" in output.getvalue().splitlines()[2]
