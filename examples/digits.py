"""What the examples share: scikit-learn's 8x8 handwritten digits, an MLP, and the exit
status of an interrupted run.

``load_digits`` ships with scikit-learn, so nothing is downloaded. The 1,797 images are split
into train / validation / test sets (stratified, with a fixed seed), and each of the 64
pixel features is standardized with the mean and spread of the training split only, so no
statistic of the held-out splits leaks into training.
"""

from __future__ import annotations

import signal
import sys
from typing import NamedTuple

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer

NUM_FEATURES = 64
NUM_CLASSES = 10


class DigitsSplits(NamedTuple):
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset


def load_digits_splits(
    validation_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> DigitsSplits:
    """Loads the digits as ``(float32 pixels, int64 label)`` datasets, split three ways.

    Args:
        validation_fraction: share of all images held out for validation.
        test_fraction: share of all images held out for the final test.
        seed: fixes the split, independently of torch's random number generator.
    """
    pixels, labels = load_digits(return_X_y=True)
    train_pixels, rest_pixels, train_labels, rest_labels = train_test_split(
        pixels,
        labels,
        test_size=validation_fraction + test_fraction,
        stratify=labels,
        random_state=seed,
    )
    validation_pixels, test_pixels, validation_labels, test_labels = train_test_split(
        rest_pixels,
        rest_labels,
        test_size=test_fraction / (validation_fraction + test_fraction),
        stratify=rest_labels,
        random_state=seed,
    )
    scaler = StandardScaler().fit(train_pixels)

    def to_dataset(split_pixels, split_labels) -> TensorDataset:
        features = torch.tensor(scaler.transform(split_pixels), dtype=torch.float32)
        return TensorDataset(features, torch.tensor(split_labels, dtype=torch.int64))

    return DigitsSplits(
        train=to_dataset(train_pixels, train_labels),
        validation=to_dataset(validation_pixels, validation_labels),
        test=to_dataset(test_pixels, test_labels),
    )


def make_classifier(hidden_size: int = 128, dropout: float = 0.1) -> nn.Module:
    """A two-layer MLP from the 64 pixel features to the 10 digit logits."""
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, hidden_size),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_size, NUM_CLASSES),
    )


def exit_if_interrupted(trainer: Trainer) -> None:
    """Ends the script when SIGTERM or SIGINT interrupted ``trainer.train()``, with status 128
    + the signal's number (143, 130), as a shell reports a job the signal killed: the run did
    not finish, and a job scheduler or script must not take it for a success. The library
    itself never exits; ``train()`` returns after the current step (and any state saving)."""
    if trainer.interrupt_signal is not None:
        trainer.print(f"Interrupted by {trainer.interrupt_signal}: the run did not finish.")
        sys.exit(128 + signal.Signals[trainer.interrupt_signal])
