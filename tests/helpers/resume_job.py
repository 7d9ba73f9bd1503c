"""A small training job for the resume tests, run in-process or as a fresh process.

    python tests/resume_job.py OUTPUT_JSON [--resume-from DIR] [--save-dir DIR]
        [--stop-after EPOCH:STEP] [--wait-for-signal EPOCH:STEP] [--block-in-save]
        [--num-workers N]

It trains 3 epochs of a dropout MLP with gradient accumulation 2 and a scheduler on shuffled
data, and writes the final weights, losses and run history to OUTPUT_JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from trainwright import StopTrainingError, Trainer, TrainerCallback
from trainwright.callbacks import (
    EarlyStoppingCallback,
    SaveBestModelCallback,
    SaveTrainingStateCallback,
)


class CountingDataset(Dataset):
    """22 samples; counts __getitem__ calls (in this process)."""

    def __init__(self, num_samples: int = 22, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(num_samples, 6, generator=generator)
        self.targets = torch.randint(0, 3, (num_samples,), generator=generator)
        self.num_loaded = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        self.num_loaded += 1
        return self.inputs[index], self.targets[index]


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.num_forwards = 0

    def forward(self, inputs):
        self.num_forwards += 1
        return self.layers(inputs)


class UserCounter(TrainerCallback):
    """A user callback with state that must survive a resume."""

    def __init__(self) -> None:
        self.steps_seen = 0

    def on_train_step_end(self, trainer, **kwargs):
        self.steps_seen += 1

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]


class StopAfter(TrainerCallback):
    """Saves a training state at the end of (epoch, step), then stops the run."""

    order = 100

    def __init__(self, epoch: int, step: int, save_dir: Path) -> None:
        self.epoch, self.step, self.save_dir = epoch, step, save_dir

    def on_train_step_end(self, trainer, step, **kwargs):
        if (trainer.run_history.current_epoch, step) == (self.epoch, self.step):
            trainer.save_training_state(self.save_dir / "state")
            raise StopTrainingError("simulated interruption")


class WaitForSignal(TrainerCallback):
    """At the end of (epoch, step), announces itself and waits for the trainer to be
    interrupted by a signal from outside."""

    def __init__(self, epoch: int, step: int, ready_file: Path) -> None:
        self.epoch, self.step, self.ready_file = epoch, step, ready_file

    def on_train_step_end(self, trainer, step, **kwargs):
        if (trainer.run_history.current_epoch, step) == (self.epoch, self.step):
            self.ready_file.write_text("ready")
            deadline = time.monotonic() + 60
            while trainer.interrupt_signal is None and time.monotonic() < deadline:
                time.sleep(0.01)


class BlockInSave(TrainerCallback):
    """Blocks inside its state_dict() during the second save, so a kill lands mid-save."""

    def __init__(self, ready_file: Path) -> None:
        self.ready_file = ready_file
        self.num_saves = 0

    def state_dict(self):
        self.num_saves += 1
        if self.num_saves == 2:
            self.ready_file.write_text("saving")
            time.sleep(60)
        return {}


def build(
    save_dir: Path | None = None,
    extra_callbacks=(),
    best_model_path: Path | None = None,
    save_every_n_steps: int = 2,
    max_checkpoints: int | None = None,
    trainer_class: type[Trainer] = Trainer,
) -> tuple[Trainer, CountingDataset]:
    torch.manual_seed(1234)
    model = CountingModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    best_model_path = best_model_path or Path(tempfile.mkdtemp()) / "best.pt"
    callbacks = [
        UserCounter(),
        EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.0),
        SaveBestModelCallback(best_model_path, load_saved_checkpoint=False),
        *extra_callbacks,
    ]
    if save_dir is not None:
        callbacks.append(
            SaveTrainingStateCallback(
                save_dir, save_every_n_steps=save_every_n_steps, max_checkpoints=max_checkpoints
            )
        )
    trainer = trainer_class(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks)
    return trainer, CountingDataset()


def train(trainer: Trainer, dataset: CountingDataset, resume_from=None, num_workers=None) -> None:
    # N persistent DataLoader workers for both loaders (the default on a machine with
    # enough CPUs); None: the defaults of this machine.
    loader_kwargs = (
        None if num_workers is None else {"num_workers": num_workers, "persistent_workers": True}
    )
    trainer.train(
        dataset,
        num_epochs=3,
        eval_dataset=CountingDataset(8, seed=1),
        per_device_batch_size=4,  # 6 batches per epoch, the last one of 2 samples
        gradient_accumulation_steps=2,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.7
        ),
        resume_from=resume_from,
        train_dataloader_kwargs=loader_kwargs,
        eval_dataloader_kwargs=loader_kwargs,
    )


def summary(trainer: Trainer, dataset: CountingDataset) -> dict:
    history = trainer.run_history
    counter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, UserCounter))
    stopper = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)
    )
    saver = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, SaveBestModelCallback)
    )
    return {
        "best_model": [saver.monitor.best_value, saver.monitor.best_epoch, saver.saved_this_run],
        "weights": {k: v.tolist() for k, v in trainer.get_model().state_dict().items()},
        "history": {name: history.get_metric_values(name) for name in history.get_metric_names()},
        "current_epoch": history.current_epoch,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "steps_seen": counter.steps_seen,
        "best_value": stopper.monitor.best_value,
        "samples_loaded": dataset.num_loaded,
        "forwards": trainer.get_model().num_forwards,
        "interrupt_signal": trainer.interrupt_signal,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--resume-from")
    parser.add_argument("--save-dir")
    parser.add_argument("--wait-for-signal")
    parser.add_argument("--block-in-save", action="store_true")
    parser.add_argument("--num-workers", type=int)
    args = parser.parse_args(argv)
    extra = []
    if args.wait_for_signal:
        epoch, step = map(int, args.wait_for_signal.split(":"))
        extra.append(WaitForSignal(epoch, step, Path(args.output + ".ready")))
    if args.block_in_save:
        extra.append(BlockInSave(Path(args.output + ".ready")))
    trainer, dataset = build(Path(args.save_dir) if args.save_dir else None, extra)
    train(trainer, dataset, resume_from=args.resume_from, num_workers=args.num_workers)
    Path(args.output).write_text(json.dumps(summary(trainer, dataset)))


def assert_same_run(resumed: dict, reference: dict) -> None:
    """Asserts that two ``summary()`` results describe the same run, bit for bit."""
    assert resumed["weights"] == reference["weights"]  # bit for bit, as floats
    assert resumed["history"] == reference["history"]
    assert resumed["current_epoch"] == reference["current_epoch"]
    assert resumed["lr"] == reference["lr"]
    assert resumed["steps_seen"] == reference["steps_seen"]
    assert resumed["best_value"] == reference["best_value"]
    assert resumed["best_model"] == reference["best_model"]


if __name__ == "__main__":
    main(sys.argv[1:])
