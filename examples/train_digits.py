"""Train a digit classifier with trainwright, end to end, in a few seconds on a CPU.

The model is a small MLP over the 64 standardized pixels of scikit-learn's 8x8 digits
(bundled with scikit-learn: nothing to download). Training uses the default callbacks
(progress, a progress bar, the metrics of each epoch) plus three more: an accuracy metric
computed with TorchMetrics, best-model saving and early stopping, both watching the
validation loss. The best weights are reloaded when training ends and scored on the test
split.

Run it with::

    python examples/train_digits.py --num-epochs 30 --output-dir runs/digits
    accelerate launch examples/train_digits.py --mixed-precision bf16

Interrupted by Ctrl-C or SIGTERM, it stops after the current step and exits with status 130
or 143 (128 + the signal's number, as a shell reports a job the signal killed), so that a
job scheduler or a script sees that the run did not finish.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from digits import NUM_CLASSES, exit_if_interrupted, load_digits_splits, make_classifier
from metrics import AccuracyCallback
from torch import nn

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    EarlyStoppingCallback,
    SaveBestModelCallback,
    SavePlotCallback,
)
from trainwright.tracking import format_metric_value

SEED = 42
CHECKPOINT_NAME = "best_model.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-epochs", type=int, default=30, help="most epochs to train for")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to save the best model (default: trainwright_digits in the temp directory)",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16", "fp8"],
        default=None,
        help="passed to Trainer; by default taken from `accelerate launch` (else 'no')",
    )
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, extra_callbacks: Sequence[TrainerCallback] = ()
) -> dict[str, Any]:
    """Trains, tests, prints a summary and returns it as a dictionary.

    Exits (``SystemExit``) with status 128 + the signal's number when SIGTERM or SIGINT
    interrupted the training. ``extra_callbacks`` are added to the trainer's callbacks.
    """
    args = parse_args(argv)
    # Seed before building the model: it fixes the initial weights, dropout and data order.
    set_seed(SEED)
    # One fixed default path, so that every process of a multi-process run shares it.
    output_dir = args.output_dir or Path(tempfile.gettempdir()) / "trainwright_digits"
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    plot_path = output_dir / "metrics.png"

    splits = load_digits_splits(seed=SEED)
    model = make_classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optimizer,
        callbacks=[
            *DEFAULT_CALLBACKS,
            AccuracyCallback(NUM_CLASSES),
            SaveBestModelCallback(checkpoint_path),
            EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=1e-3),
            SavePlotCallback(plot_path),  # every metric per epoch, as a PNG (matplotlib)
            *extra_callbacks,
        ],
        mixed_precision=args.mixed_precision,
    )
    history = trainer.train(
        splits.train,
        num_epochs=args.num_epochs,
        eval_dataset=splits.validation,
        per_device_batch_size=32,
        eval_per_device_batch_size=256,
    )
    exit_if_interrupted(trainer)
    eval_losses = history.get_metric_values("eval_loss_epoch")
    best_epoch = min(range(len(eval_losses)), key=eval_losses.__getitem__) + 1

    # SaveBestModelCallback has reloaded the best weights. The prefix keeps the test metrics
    # apart from the validation ones: they are recorded as test_accuracy, test_evaluation_loss.
    with history.metric_name_prefix_as("test_"):
        trainer.evaluate(splits.test, per_device_batch_size=256)

    summary = {
        "epochs_run": len(history.get_metric_values("train_loss_epoch")),
        "best_epoch": best_epoch,
        "best_eval_loss": eval_losses[best_epoch - 1],
        "test_loss": history.get_latest_metric("test_evaluation_loss"),
        "test_accuracy": history.get_latest_metric("test_accuracy"),
        "checkpoint_path": str(checkpoint_path),
        "plot_path": str(plot_path),
    }
    trainer.print("\nSummary")
    for name, value in summary.items():
        shown = format_metric_value(value) if isinstance(value, float) else value
        trainer.print(f"  {name}: {shown}")
    return summary


if __name__ == "__main__":
    main()
