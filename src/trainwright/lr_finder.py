"""The learning-rate range test behind `Trainer.find_learning_rate`: the schedule of learning
rates it tries, the smoothed loss, the stop on divergence, the suggestion, and the snapshot
that puts the trainer back exactly as it was.

The test (Leslie Smith's "LR range test", as fastai's `lr_find` and Lightning's `Tuner.lr_find`
run it) trains for a few hundred updates while the learning rate grows exponentially from
`start_lr` to `end_lr`, records an exponentially smoothed loss, and stops once the smoothed
loss exceeds `divergence_factor` times the lowest seen. The suggestion is the learning rate
a tenth of the learning rate with the lowest smoothed loss (fastai's rule of thumb); the
learning rate of the steepest fall (Lightning's) is given beside it.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainwright.plotting import require_matplotlib

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainwright.trainer import Trainer

__all__ = [
    "LearningRateFinderResult",
    "TrainerSnapshot",
    "learning_rate_schedule",
    "steepest",
    "suggest",
]


def learning_rate_schedule(start_lr: float, end_lr: float, num_steps: int) -> list[float]:
    """`num_steps` learning rates growing exponentially from `start_lr` to `end_lr`."""
    if num_steps == 1:
        return [start_lr]
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (step / (num_steps - 1)) for step in range(num_steps)]


def suggest(learning_rates: list[float], smoothed_losses: list[float]) -> float | None:
    """A tenth of the learning rate at which the smoothed loss is lowest (fastai's rule of
    thumb: the minimum is already at the edge of divergence), kept inside the tried range.

    `None` when fewer than 3 finite losses were recorded.
    """
    points = [
        (lr, loss) for lr, loss in zip(learning_rates, smoothed_losses) if math.isfinite(loss)
    ]
    if len(points) < 3:
        return None
    lowest_lr = min(points, key=lambda point: point[1])[0]
    return min(max(lowest_lr / 10, learning_rates[0]), learning_rates[-1])


def steepest(learning_rates: list[float], smoothed_losses: list[float]) -> float | None:
    """The learning rate where `smoothed_losses` fall fastest against log(learning rate)
    (Lightning's suggestion). The first tenth of the points (at most 10) is left out, where
    the smoothing has not settled, and so is the last point, where the loss has often started
    to diverge. `None` when fewer than 3 points are left."""
    skip_begin = min(10, len(learning_rates) // 10)
    points = [
        (math.log(lr), loss)
        for lr, loss in zip(learning_rates[skip_begin:-1], smoothed_losses[skip_begin:-1])
        if math.isfinite(loss)
    ]
    if len(points) < 3:
        return None
    slopes = []
    for index in range(len(points)):  # central differences, one-sided at the ends
        before, after = points[max(index - 1, 0)], points[min(index + 1, len(points) - 1)]
        slopes.append((after[1] - before[1]) / (after[0] - before[0]))
    return math.exp(points[min(range(len(slopes)), key=slopes.__getitem__)][0])


@dataclass
class LearningRateFinderResult:
    """What `Trainer.find_learning_rate` found.

    Attributes:
        learning_rates: the learning rate of every update tried, in order.
        losses: the smoothed training loss after each of those updates (the mean over all
            processes of the batch's loss, exponentially smoothed and bias-corrected).
        raw_losses: the same losses before smoothing.
        suggestion: a tenth of the learning rate with the lowest smoothed loss (see
            `suggest`); `None` when the test stopped too early to tell (with a warning).
        steepest_lr: the learning rate where the smoothed loss falls fastest (Lightning's
            suggestion; often closer to divergence); `None` likewise.
        stopped_early: whether the loss diverged before the last learning rate.
    """

    learning_rates: list[float]
    losses: list[float]
    raw_losses: list[float] = field(default_factory=list)
    suggestion: float | None = None
    steepest_lr: float | None = None
    stopped_early: bool = False

    def plot(self, show_suggestion: bool = True) -> Figure:
        """The smoothed loss against the learning rate (log scale), with the suggestion
        marked; a matplotlib `Figure` (displayed inline in a notebook, or
        `figure.savefig("lr.png")`). Needs matplotlib."""
        figure = require_matplotlib()(figsize=(6, 3.5))
        axes = figure.add_subplot()
        axes.plot(self.learning_rates, self.losses)
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("smoothed loss")
        if show_suggestion and self.suggestion is not None:
            axes.axvline(self.suggestion, color="tab:red", linestyle="--")
            axes.annotate(f"suggestion {self.suggestion:.3g}", (self.suggestion, max(self.losses)))
        figure.tight_layout()
        return figure


class TrainerSnapshot:
    """Everything the range test changes, copied so that `restore` puts it back bit for bit:
    the model's parameters and buffers, the gradients, the optimizer's state and learning
    rates, the scheduler's and gradient scaler's state, and the Python, NumPy, torch and CUDA
    random number generators."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        model = trainer.model
        self._model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._gradients = [
            None if p.grad is None else p.grad.detach().clone() for p in _params(trainer)
        ]
        self._optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
        scheduler = trainer.scheduler
        self._scheduler_state = (
            copy.deepcopy(scheduler.state_dict()) if hasattr(scheduler, "state_dict") else None
        )
        scaler = trainer.accelerator.scaler
        self._scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
        self._rng = _rng_states()

    def restore(self) -> None:
        trainer = self._trainer
        trainer.model.load_state_dict(self._model_state)
        for parameter, gradient in zip(_params(trainer), self._gradients):
            parameter.grad = gradient
        trainer.optimizer.load_state_dict(self._optimizer_state)
        if self._scheduler_state is not None:
            trainer.scheduler.load_state_dict(self._scheduler_state)
        if self._scaler_state is not None:
            trainer.accelerator.scaler.load_state_dict(self._scaler_state)
        _set_rng_states(self._rng)


def _params(trainer: Trainer) -> list[torch.nn.Parameter]:
    return list(trainer.model.parameters())


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy

        states["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "numpy" in states:
        import numpy

        numpy.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
