"""Hand-written Accelerate loop: what a trainer built on Accelerate costs at the very least."""

from collections.abc import Callable

from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from bench.workloads import Workload


def setup(workload: Workload) -> Callable[[], nn.Module]:
    """Create the Accelerator (untimed, like a trainer's constructor) and return the timed run."""
    accelerator = Accelerator()

    def run() -> nn.Module:
        train_dataloader = DataLoader(workload.dataset, **workload.dataloader_kwargs())
        model, optimizer, train_dataloader = accelerator.prepare(
            workload.model, workload.optimizer, train_dataloader
        )
        model.train()
        for _ in range(workload.num_epochs):
            for inputs, targets in train_dataloader:
                loss = workload.loss_func(model(inputs), targets)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        return accelerator.unwrap_model(model)

    return run
