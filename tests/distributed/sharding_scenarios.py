"""FSDP2 on CPU processes: a sharded run, its checkpoints and training states, and resumes.

The run: 24 samples in order, 4 per step over all processes (6 steps an epoch), gradient
accumulation 2 (3 updates an epoch), gradient clipping, AdamW, 2 epochs. Run on one process
without FSDP, it is the reference the sharded run must match. ``worker.py`` runs these
functions under ``torchrun`` / ``accelerate launch``; every one returns plain JSON values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import FullyShardedDataParallelPlugin
from distributed_scenarios import IN_ORDER, make_dataset
from torch import nn
from torch.distributed.tensor import DTensor

from trainwright import Trainer, TrainerCallback

# (epoch counted from 0, step) at whose end a training state is saved: inside an
# accumulation window (gradients accumulated so far), and right after an update.
SAVE_POINTS = {"mid-window": (0, 2), "after an update": (1, 1)}
TRAIN_ARGS = {
    "num_epochs": 2,
    "gradient_accumulation_steps": 2,
    "max_grad_norm": 0.05,
    "train_dataloader_kwargs": IN_ORDER,
}


class SaveAtSteps(TrainerCallback):
    """Saves a training state at the end of each step of ``SAVE_POINTS`` into ``save_dir``,
    once (in the first ``train()``)."""

    order = 100

    def __init__(self, save_dir: str) -> None:
        self.save_dir = Path(save_dir)
        self.saved: set[str] = set()

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        for name, point in SAVE_POINTS.items():
            if (trainer.progress.epoch, step) == point and name not in self.saved:
                trainer.save_training_state(self.save_dir / name)
                self.saved.add(name)


def build(sharded: bool, callbacks: tuple[TrainerCallback, ...] = ()) -> tuple[Trainer, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    accelerator_kwargs = (
        {"fsdp_plugin": FullyShardedDataParallelPlugin(fsdp_version=2)} if sharded else {}
    )
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        callbacks=callbacks,
        accelerator_kwargs=accelerator_kwargs,
    )
    return trainer, model


def _train(trainer: Trainer, **kwargs: Any) -> None:
    per_process = 4 // trainer.accelerator.num_processes
    arguments = {**TRAIN_ARGS, **kwargs}
    trainer.train(make_dataset(24), per_device_batch_size=per_process, **arguments)


def _checkpoint_summary(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, weights_only=True)
    optimizer = checkpoint["optimizer_state_dict"]
    return {
        "weights": {name: value.tolist() for name, value in checkpoint["model_state_dict"].items()},
        "optimizer_params": [group["params"] for group in optimizer["param_groups"]],
        "optimizer_state": {
            str(number): {name: value.tolist() for name, value in state.items()}
            for number, state in optimizer["state"].items()
        },
    }


def _sharding(trainer: Trainer, model: nn.Module) -> dict[str, Any]:
    parameters = list(trainer.get_model().parameters())
    return {
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "get_model_is_the_model": trainer.get_model() is model,
        "sharded": [isinstance(p, DTensor) for p in parameters],
        "local_numel": [
            p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in parameters
        ],
        "numel": [p.numel() for p in parameters],
    }


def fsdp_run(sharded: bool, out_dir: str) -> dict[str, Any]:
    """The run, saving training states at ``SAVE_POINTS`` and a checkpoint at the end; then
    one more epoch, and the checkpoint loaded back and saved again."""
    out = Path(out_dir)
    trainer, model = build(sharded, callbacks=(SaveAtSteps(str(out / "states")),))
    _train(trainer)
    trainer.save_checkpoint(out / "model.pt")
    result = {
        **_sharding(trainer, model),
        "history": trainer.run_history.get_metric_values("train_loss_epoch"),
        "state_files": sorted(path.name for path in (out / "states" / "mid-window").iterdir()),
    }
    _train(trainer, num_epochs=1)  # moves the weights and optimizer state on
    trainer.load_checkpoint(out / "model.pt")
    trainer.save_checkpoint(out / "reloaded.pt")
    if trainer.accelerator.is_main_process:
        result["checkpoint"] = _checkpoint_summary(out / "model.pt")
        result["reloaded"] = _checkpoint_summary(out / "reloaded.pt")
    return result


def fsdp_resume(out_dir: str) -> dict[str, Any]:
    """The sharded run resumed from each saved state, in fresh trainers."""
    results = {}
    for name in SAVE_POINTS:
        trainer, _ = build(sharded=True)
        _train(trainer, resume_from=Path(out_dir) / "states" / name)
        path = Path(out_dir) / f"resumed-{name}.pt"
        trainer.save_checkpoint(path)
        results[name] = {"history": trainer.run_history.get_metric_values("train_loss_epoch")}
        if trainer.accelerator.is_main_process:
            results[name]["checkpoint"] = _checkpoint_summary(path)
    return results


def fsdp_by_launch() -> dict[str, Any]:
    """A short run with no FSDP argument, under ``accelerate launch --use_fsdp``."""
    trainer, model = build(sharded=False)
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    return _sharding(trainer, model)


SHARDING_SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "fsdp_run": fsdp_run,
    "fsdp_resume": fsdp_resume,
    "fsdp_by_launch": fsdp_by_launch,
}
