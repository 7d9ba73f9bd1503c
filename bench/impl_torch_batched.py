"""The careful hand-written PyTorch loop: each batch read with one indexing call.

Same sampler and order as the plain loop (the ``DataLoader``'s own batch sampler), but the
batch is ``dataset[indices]`` (``tensor[indices]`` for every tensor of the ``TensorDataset``)
instead of one ``dataset[i]`` per sample stacked by ``default_collate``: the same values bit
for bit, without the per-sample work. What a user who knows their data is in memory writes.
"""

from collections.abc import Callable

from torch import nn
from torch.utils.data import DataLoader

from bench.workloads import Workload


def setup(workload: Workload) -> Callable[[], nn.Module]:
    """Return the timed training run; the loop is built inside it, like a trainer's ``train``."""
    model, optimizer, loss_func = workload.model, workload.optimizer, workload.loss_func
    dataset = workload.dataset

    def run() -> nn.Module:
        batch_sampler = DataLoader(dataset, **workload.dataloader_kwargs()).batch_sampler
        model.train()
        for _ in range(workload.num_epochs):
            for indices in batch_sampler:
                inputs, targets = dataset[indices]  # tensor[indices] for each tensor
                loss = loss_func(model(inputs), targets)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        return model

    return run
