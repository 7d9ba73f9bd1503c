"""Saved, resumed and preempted 2-process runs of the resume tests' job (``resume_job``).

The job trains 3 epochs of a dropout MLP with gradient accumulation 2 and a StepLR scheduler
on shuffled data. With 22 samples, 4 per process per batch and 2 processes, an epoch has 3
steps: 0 and 1 form an accumulation window (an update after step 1), step 2 a short window
of its own (an update after it), so 2 updates per epoch.

Each process seeds torch's RNG differently once the model is built, so dropout masks differ
between processes: a resume that gave a process the RNG state of another (or none) changes
the weights. ``worker.py`` runs these functions under ``torchrun``; every one returns plain
JSON values, per process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from helpers import resume_job
from helpers.accumulation_cases import BatchSizeAsNumItemsTrainer

from trainwright import StopTrainingError, Trainer, TrainerCallback
from trainwright.callbacks import SaveTrainingStateCallback


def _build(
    extra_callbacks: tuple[TrainerCallback, ...] = (), returns_num_items: bool = False
) -> tuple[Trainer, Any]:
    trainer_class = BatchSizeAsNumItemsTrainer if returns_num_items else Trainer
    trainer, dataset = resume_job.build(
        extra_callbacks=extra_callbacks, trainer_class=trainer_class
    )
    torch.manual_seed(1000 + trainer.accelerator.process_index)  # per-process dropout masks
    return trainer, dataset


def _summary(trainer: Trainer, dataset: Any) -> dict[str, Any]:
    summary = resume_job.summary(trainer, dataset)
    return {
        **{
            key: summary[key]
            for key in (
                "weights",
                "history",
                "current_epoch",
                "lr",
                "steps_seen",
                "best_value",
                "best_model",
                "interrupt_signal",
            )
        },
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }


def uninterrupted(returns_num_items: bool = False) -> dict[str, Any]:
    """The reference: the whole job, saving nothing (``returns_num_items``: its hook returns
    each batch's size as ``num_items``)."""
    trainer, dataset = _build(returns_num_items=returns_num_items)
    resume_job.train(trainer, dataset)
    return _summary(trainer, dataset)


class SaveAtSteps(TrainerCallback):
    """Saves a training state at the end of each ``(epoch, step)`` in ``points`` (epochs
    counted from 1), to ``save_dir / f"e{epoch}-s{step}"``, and lets the run go on."""

    order = 100  # after every other callback, so that the state holds their step

    def __init__(self, points: list[list[int]], save_dir: str) -> None:
        self.points = {tuple(point) for point in points}
        self.save_dir = Path(save_dir)

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        epoch = trainer.run_history.current_epoch
        if (epoch, step) in self.points:
            trainer.save_training_state(self.save_dir / f"e{epoch}-s{step}")


def save_along_the_way(
    points: list[list[int]], save_dir: str, returns_num_items: bool = False
) -> dict[str, Any]:
    """The whole job, saving training states at the end of the steps ``points`` and at the
    end of every epoch (``save_dir / "epochs" / "state-<updates>"``)."""
    trainer, dataset = _build(
        (
            SaveAtSteps(points, save_dir),
            SaveTrainingStateCallback(
                Path(save_dir) / "epochs", save_every_n_epochs=1, save_at_end=False
            ),
        ),
        returns_num_items,
    )
    resume_job.train(trainer, dataset)
    return _summary(trainer, dataset)


def resume(resume_from: str, returns_num_items: bool = False) -> dict[str, Any]:
    """The job continued from the training state ``resume_from``."""
    trainer, dataset = _build(returns_num_items=returns_num_items)
    resume_job.train(trainer, dataset, resume_from=resume_from)
    return _summary(trainer, dataset)


def resume_with_fallback(resume_from: str) -> dict[str, Any]:
    """The job continued from the directory of states ``resume_from``, with the warnings of
    the states skipped as invalid."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = resume(resume_from)
    skipped = [str(w.message) for w in caught if "Skipping the training state" in str(w.message)]
    return {**result, "skipped": skipped}


class SigtermOnLastProcess(TrainerCallback):
    """At the end of ``(epoch, step)`` (epochs counted from 1), the last process sends SIGTERM
    to itself only, and waits until the trainer has seen it."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        self.sent_signal = False

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        accelerator = trainer.accelerator
        is_last_process = accelerator.process_index == accelerator.num_processes - 1
        if is_last_process and (trainer.run_history.current_epoch, step) == (
            self.epoch,
            self.step,
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            self.sent_signal = True
            deadline = time.monotonic() + 30
            while trainer.interrupt_signal is None and time.monotonic() < deadline:
                time.sleep(0.01)


class StopRecorder(TrainerCallback):
    """Records the steps that ended and how the run was stopped."""

    def __init__(self) -> None:
        self.steps_ended: list[list[int]] = []
        self.interrupted_by: list[str] = []
        self.stop_errors: list[str] = []
        self.epochs_ended: list[int] = []

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        self.steps_ended.append([trainer.run_history.current_epoch, step])

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self.epochs_ended.append(trainer.run_history.current_epoch)

    def on_training_interrupted(self, trainer: Trainer, signal_name: str, **kwargs: Any) -> None:
        self.interrupted_by.append(signal_name)

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        self.stop_errors.append(str(error))


def preempted(
    epoch: int, step: int, save_dir: str, vote_interval: int | None = None
) -> dict[str, Any]:
    """The job with a SaveTrainingStateCallback, preempted by a SIGTERM that only the last
    process receives, at the end of ``(epoch, step)``; the processes vote every
    ``vote_interval`` steps (None: the Trainer's default)."""
    sender, recorder = SigtermOnLastProcess(epoch, step), StopRecorder()
    trainer, dataset = _build((sender, recorder, SaveTrainingStateCallback(save_dir)))
    if vote_interval is not None:
        trainer.vote_interval = vote_interval
    resume_job.train(trainer, dataset)
    return {
        "sent_signal": sender.sent_signal,
        "interrupt_signal": trainer.interrupt_signal,
        "interrupted_by": recorder.interrupted_by,
        "stop_errors": recorder.stop_errors,
        "steps_ended": recorder.steps_ended,
        "epochs_ended": recorder.epochs_ended,
        "num_updates": trainer.progress.num_update_steps,
        "saved_states": sorted(path.name for path in Path(save_dir).iterdir()),
    }


def rerun_after_preemption(save_dir: str) -> dict[str, Any]:
    """The preempted job run again as is, with ``resume_from="latest"``."""
    trainer, dataset = _build((SaveTrainingStateCallback(save_dir),))
    resume_job.train(trainer, dataset, resume_from="latest")
    return _summary(trainer, dataset)


#: The scenarios above, by name, for ``worker.py``.
RESUME_SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "uninterrupted": uninterrupted,
    "save_along_the_way": save_along_the_way,
    "resume": resume,
    "resume_with_fallback": resume_with_fallback,
    "preempted": preempted,
    "rerun_after_preemption": rerun_after_preemption,
}
