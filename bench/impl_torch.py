"""Hand-written PyTorch loop: the reference, and the limit any library can approach.

It does nothing but train: no loss tracking, no host syncs, no device placement (CPU only).
"""

from collections.abc import Callable

from torch import nn
from torch.utils.data import DataLoader

from bench.workloads import Workload


def setup(workload: Workload) -> Callable[[], nn.Module]:
    """Return the timed training run; the loop is built inside it, like a trainer's ``train``."""
    model, optimizer, loss_func = workload.model, workload.optimizer, workload.loss_func

    def run() -> nn.Module:
        train_dataloader = DataLoader(workload.dataset, **workload.dataloader_kwargs())
        model.train()
        for _ in range(workload.num_epochs):
            for inputs, targets in train_dataloader:
                loss = loss_func(model(inputs), targets)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        return model

    return run
