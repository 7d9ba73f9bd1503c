"""Runs on several machines that each save to their own disk (simulated: one ``torchrun
--nnodes 2`` per machine on 127.0.0.1, each with a save directory of its own).

``worker.py`` runs these functions on every machine; every one returns plain JSON values.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from distributed_scenarios import IN_ORDER, make_dataset, make_trainer

from trainwright import Trainer
from trainwright.callbacks import SaveTrainingStateCallback

NUM_EPOCHS = 4  # of 2 updates each (8 samples, 2 per process per batch, 2 processes)


def _trainer(save_dir: Path) -> Trainer:
    saver = SaveTrainingStateCallback(save_dir, save_every_n_epochs=1, max_checkpoints=2)
    return make_trainer(lr=0.2, callbacks=(saver,))


def _train(trainer: Trainer, resume_from: str | Path | None = None) -> list[float]:
    trainer.train(
        make_dataset(8),
        num_epochs=NUM_EPOCHS,
        per_device_batch_size=2,
        train_dataloader_kwargs=IN_ORDER,
        resume_from=resume_from,
    )
    return torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()]).tolist()


def _resume_error(save_dir: Path, resume_from: str | Path) -> str | None:
    try:
        _train(_trainer(save_dir), resume_from=resume_from)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def per_machine_disks(save_dir: str, other_save_dir: str, latest_save_dir: str) -> dict[str, Any]:
    """Trains saving a state every epoch (keeping 2) into this machine's ``save_dir``; then
    resumes from "latest" in ``latest_save_dir`` (``save_dir``, or an empty directory, as on
    a machine that was replaced), and from the older state by name, which this machine
    holds only its own part of; then, once each machine has copied the other's part of the
    older state (from ``other_save_dir``) into its own, resumes from it."""
    save_dir = Path(save_dir)
    trainer = _trainer(save_dir)
    weights = _train(trainer)
    states = sorted(path.name for path in save_dir.iterdir())
    result: dict[str, Any] = {
        "states": states,
        "weights": weights,
        "latest": _resume_error(Path(latest_save_dir), "latest"),
        "by_name": _resume_error(save_dir, save_dir / states[0]),
    }
    trainer.wait_for_everyone()  # both machines' saves and resumes are over
    own, other = save_dir / states[0], Path(other_save_dir) / states[0]
    for entry in other.iterdir():
        if not (own / entry.name).exists():
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, own / entry.name)
    trainer.wait_for_everyone()
    result["resumed_weights"] = _train(_trainer(save_dir), resume_from=own)
    return result


MULTINODE_SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "per_machine_disks": per_machine_disks,
}
