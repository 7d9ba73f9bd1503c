"""Offline stand-ins for the datasets and models pytorch-accelerated's examples download.

The ported scripts import these instead of torchvision's MNIST / Imagenette / Oxford pets,
timm or the Hugging Face hub; everything is generated, small and seeded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def mnist_like(num_samples: int = 96, image_size: int = 28, num_classes: int = 10, seed: int = 0):
    """Images of shape (1, size, size) whose class is encoded in their mean brightness."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    images = torch.rand(num_samples, 1, image_size, image_size, generator=generator)
    images += labels[:, None, None, None] / num_classes
    return TensorDataset(images, labels)


def rgb_images(num_samples: int, image_size: int, num_classes: int = 3, seed: int = 0):
    """RGB images (3, size, size) whose class shifts one colour channel."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    images = torch.rand(num_samples, 3, image_size, image_size, generator=generator)
    images[torch.arange(num_samples), labels % 3] += 0.5
    return TensorDataset(images, labels)


class DictImages(Dataset):
    """Items ``{"image": tensor, "label": int}``, as the pets example's dataset returns."""

    def __init__(self, images: TensorDataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image, label = self.images[index]
        return {"image": image, "label": int(label)}


class TinyResNet(nn.Module):
    """Laid out like a timm ResNet (stem, parameterless activations and pools, stages,
    ``fc``), with ``default_cfg`` and ``get_classifier()``, at a fraction of the size."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.default_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.maxpool(self.act1(self.bn1(self.conv1(images))))
        return self.fc(self.global_pool(self.layer2(self.layer1(features))))


class Accuracy:
    """A small stand-in for ``torchmetrics.Accuracy``: update, compute, reset, to."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.reset()

    def to(self, device: torch.device) -> Accuracy:
        self.device = torch.device(device)
        self.correct = self.correct.to(self.device)
        self.total = self.total.to(self.device)
        return self

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += (predictions == targets).sum()
        self.total += targets.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)

    def reset(self) -> None:
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.total = torch.zeros((), dtype=torch.long, device=self.device)
