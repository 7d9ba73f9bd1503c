"""The benchmark workloads: data, model, loss and optimizer, built the same way for every loop.

Every implementation receives an identical :class:`Workload`: the same initial weights (built
under a fixed seed), the same dataset and the same DataLoader settings. The data order is fixed
by shuffling each dataset *once*, with its own seeded generator, when it is built; every
DataLoader then reads it in order (``shuffle=False``). That sidesteps sampler seeding entirely,
which matters because Accelerate and Lightning each wrap or re-create samplers in their own way.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

SEED = 2024

# DataLoader settings shared by every implementation; the batch size is passed separately because
# the trainers take it as ``per_device_batch_size``.
DATALOADER_KWARGS: dict[str, Any] = {
    "shuffle": False,
    "num_workers": 0,
    "drop_last": False,
    "pin_memory": False,
    # Explicit, because a trainer may default to persistent workers on machines with many CPUs,
    # which a DataLoader with num_workers=0 rejects.
    "persistent_workers": False,
}


@dataclass
class Workload:
    """Everything a training loop needs, freshly built in the worker process."""

    name: str
    model: nn.Module
    loss_func: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: TensorDataset
    num_epochs: int
    batch_size: int

    @property
    def num_steps_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    @property
    def num_steps(self) -> int:
        return self.num_epochs * self.num_steps_per_epoch

    def dataloader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a plain ``torch.utils.data.DataLoader``, batch size included."""
        return {"batch_size": self.batch_size, **DATALOADER_KWARGS}


def shuffled_once(inputs: torch.Tensor, targets: torch.Tensor, seed: int) -> TensorDataset:
    """Return the samples as a dataset permuted once with its own seeded generator."""
    permutation = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(inputs[permutation].contiguous(), targets[permutation].contiguous())


def build_mlp_workload(quick: bool) -> Workload:
    """Overhead-bound: a 32-64-10 MLP on synthetic data, where each step costs only microseconds.

    The labels come from a fixed random linear "teacher", so there is something to learn.
    """
    num_samples = 3_200 if quick else 32_000
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(num_samples, 32, generator=generator)
    teacher = torch.randn(32, 10, generator=generator)
    targets = (inputs @ teacher).argmax(dim=1)
    dataset = shuffled_once(inputs, targets, SEED + 1)

    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return Workload("mlp", model, nn.CrossEntropyLoss(), optimizer, dataset, 3, 32)


def build_cnn_workload(quick: bool) -> Workload:
    """Compute-bound: a small CNN on scikit-learn's 8x8 digits (1,797 images, no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.int64)
    dataset = shuffled_once(inputs, targets, SEED + 1)

    torch.manual_seed(SEED)
    model = nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    num_epochs = 1 if quick else 8
    return Workload("cnn", model, nn.CrossEntropyLoss(), optimizer, dataset, num_epochs, 32)


WORKLOAD_BUILDERS = {"mlp": build_mlp_workload, "cnn": build_cnn_workload}

WORKLOAD_DESCRIPTIONS = {
    "mlp": "overhead-bound: MLP 32-64-10, synthetic data, batch 32, 3 epochs, SGD",
    "cnn": "compute-bound: 2-conv CNN on sklearn digits (8x8), batch 32, SGD with momentum",
}
