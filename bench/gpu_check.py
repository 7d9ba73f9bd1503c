"""One-shot GPU check: mixed precision, torch.compile, zero host syncs, and throughput.

Run on a machine with one CUDA GPU (about 2-4 minutes)::

    python bench/gpu_check.py

It prints one line per check and a final summary, and exits non-zero if a check fails. On a
machine without CUDA it says so and exits 0 without running anything.

Checks:
  1. fp32, fp16 (with a gradient scaler) and bf16 train a small CNN on scikit-learn's digits
     to within 2 accuracy points of each other.
     An fp16 update that overflows (a loss blown up once) is skipped by the gradient
     scaler, counted in ``progress.num_scaler_skipped_updates`` and does not step the
     scheduler.
  2. A ``torch.compile``-d model trains through the Trainer.
  3. No host-device sync happens during training steps with ``DEFAULT_CALLBACKS``
     (``torch.cuda.set_sync_debug_mode("error")`` turns any sync into an error). The one
     deliberate wait, ``TerminateOnNaNCallback``'s read every ``check_every_n_steps`` steps
     and at the epoch's last step, waits on a CUDA event after a non-blocking copy, which
     that mode does not count.
  4. Throughput of the Trainer against a hand-written loop on the same model and data.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time

import torch
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import DEFAULT_CALLBACKS


def digits_datasets() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    images, labels = images[order], labels[order]
    return TensorDataset(images[:1400], labels[:1400]), TensorDataset(images[1400:], labels[1400:])


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def fresh_accelerate_state() -> None:
    # Each Trainer here uses another precision; Accelerate keeps one per process otherwise.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class Accuracy(TrainerCallback):
    writes_metrics = ("accuracy",)

    def on_eval_epoch_start(self, trainer, **kwargs):
        self.correct = torch.zeros((), device=trainer.device)
        self.total = 0

    def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
        predictions = batch_output["model_outputs"].argmax(dim=-1)
        self.correct += (predictions == batch[1]).sum()
        self.total += batch[1].numel()

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", self.correct.item() / self.total)


class ForbidSyncsDuringSteps(TrainerCallback):
    """Turns host syncs into errors from the first step's start to the last step's end."""

    order = 1000  # last, so every other callback's step events run under the check

    def on_train_step_start(self, trainer, step, **kwargs):
        if step == 0:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_step_end(self, trainer, step, **kwargs):
        if step == trainer.run_config.train_dataloader_len - 1:
            torch.cuda.set_sync_debug_mode("default")


def train_digits(mixed_precision: str, compile_model: bool = False, callbacks=()) -> float:
    fresh_accelerate_state()
    torch.manual_seed(0)
    train_dataset, eval_dataset = digits_datasets()
    model = make_cnn()
    if compile_model:
        model = torch.compile(model)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.AdamW(model.parameters(), 1e-3),
        callbacks=[Accuracy(), *callbacks],
        mixed_precision=mixed_precision,
    )
    trainer.train(
        train_dataset,
        num_epochs=8,
        eval_dataset=eval_dataset,
        per_device_batch_size=64,
        train_dataloader_kwargs={"num_workers": 0},
    )
    return trainer.run_history.get_latest_metric("accuracy")


class OverflowOnceTrainer(Trainer):
    """Blows up the loss of one step so that its scaled fp16 gradients overflow."""

    OVERFLOW_STEP = 3

    def backward_step(self, loss):
        if (self.progress.epoch, self.progress.step) == (0, self.OVERFLOW_STEP):
            loss = loss * 1e38  # finite in float32; times the scaler's 2**16: inf
        super().backward_step(loss)


class RecordSkips(TrainerCallback):
    def __init__(self):
        self.skipped_steps = []

    def on_after_optimizer_step(self, trainer, step, **kwargs):
        if trainer.accelerator.optimizer_step_was_skipped:
            self.skipped_steps.append(step)


def fp16_overflow() -> tuple[list[int], int, int, int]:
    """One fp16 epoch with one forced overflow: (steps skipped, skips counted, updates,
    scheduler steps)."""
    fresh_accelerate_state()
    torch.manual_seed(0)
    train_dataset, _ = digits_datasets()
    model = make_cnn()
    recorder = RecordSkips()
    trainer = OverflowOnceTrainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), 0.01),
        callbacks=[recorder],
        mixed_precision="fp16",
    )
    trainer.train(
        train_dataset,
        num_epochs=1,
        per_device_batch_size=64,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
        train_dataloader_kwargs={"num_workers": 0},
    )
    progress = trainer.progress
    return (
        recorder.skipped_steps,
        progress.num_scaler_skipped_updates,
        progress.num_update_steps,
        trainer.scheduler.last_epoch,
    )


def throughput(num_rounds: int = 5) -> tuple[float, float]:
    """Median seconds per epoch for a hand-written loop and the Trainer, interleaved."""
    train_dataset, _ = digits_datasets()
    hand_written, trainwright_times = [], []
    for _ in range(num_rounds):
        torch.manual_seed(0)
        model = make_cnn().cuda()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for inputs, targets in loader:
            inputs, targets = inputs.cuda(), targets.cuda()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        torch.cuda.synchronize()
        hand_written.append(time.perf_counter() - start)

        fresh_accelerate_state()
        torch.manual_seed(0)
        model = make_cnn()
        trainer = Trainer(
            model, nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters(), 1e-3), callbacks=()
        )
        start = time.perf_counter()
        trainer.train(
            train_dataset,
            num_epochs=1,
            per_device_batch_size=64,
            train_dataloader_kwargs={"num_workers": 0},
        )
        torch.cuda.synchronize()
        trainwright_times.append(time.perf_counter() - start)
    return statistics.median(hand_written), statistics.median(trainwright_times)


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: GPU checks skipped.")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    failures = []

    accuracies = {precision: train_digits(precision) for precision in ("no", "fp16", "bf16")}
    for precision, accuracy in accuracies.items():
        print(f"[precision] {precision:>4}: eval accuracy {accuracy:.4f}")
    for precision in ("fp16", "bf16"):
        if abs(accuracies[precision] - accuracies["no"]) > 0.02:
            failures.append(f"{precision} accuracy differs from fp32 by more than 2 points")

    skipped_steps, num_counted, num_updates, num_scheduler_steps = fp16_overflow()
    print(
        f"[fp16 overflow] skipped at steps {skipped_steps}, counted {num_counted}; "
        f"{num_updates} updates, {num_scheduler_steps} scheduler steps"
    )
    if OverflowOnceTrainer.OVERFLOW_STEP not in skipped_steps:
        failures.append("fp16: the forced overflow did not skip its update")
    if num_counted != len(skipped_steps):
        failures.append("fp16: progress.num_scaler_skipped_updates misses skipped updates")
    if num_scheduler_steps != num_updates - len(skipped_steps):
        failures.append("fp16: the scheduler stepped for an update the scaler skipped")

    compiled = train_digits("no", compile_model=True)
    print(f"[compile] torch.compile model: eval accuracy {compiled:.4f}")
    if abs(compiled - accuracies["no"]) > 0.02:
        failures.append("torch.compile accuracy differs from eager by more than 2 points")

    try:
        train_digits("no", callbacks=[*DEFAULT_CALLBACKS, ForbidSyncsDuringSteps()])
        print("[syncs] no host-device sync during training steps with DEFAULT_CALLBACKS")
    except RuntimeError as error:
        torch.cuda.set_sync_debug_mode("default")
        failures.append(f"host sync during training steps: {error}")
        print(f"[syncs] FAILED: {error}")

    hand_written, trainwright_time = throughput()
    print(
        f"[throughput] hand-written {hand_written:.3f}s/epoch, trainwright "
        f"{trainwright_time:.3f}s/epoch (includes dataloader setup): "
        f"ratio {trainwright_time / hand_written:.3f}"
    )

    print("\nAll GPU checks passed." if not failures else "\nFailures:\n- " + "\n- ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
