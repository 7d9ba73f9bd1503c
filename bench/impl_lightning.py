"""Lightning's ``Trainer`` (optional: skipped when the package is not installed).

Configured as the lightest fair comparison: no logger, no checkpointing, no progress bar and no
model summary, since none of the other loops write files or draw anything.
"""

from collections.abc import Callable
from typing import Any

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.workloads import Workload


class _LitWrapper(lightning.LightningModule):
    def __init__(self, workload: Workload) -> None:
        super().__init__()
        self.model = workload.model
        self.loss_func = workload.loss_func
        self._optimizer = workload.optimizer

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return self.loss_func(self.model(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._optimizer


def setup(workload: Workload) -> Callable[[], nn.Module]:
    """Build the LightningModule and ``lightning.Trainer`` (untimed); return the timed ``fit``."""
    module = _LitWrapper(workload)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=workload.num_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )

    def run() -> nn.Module:
        train_dataloader = DataLoader(workload.dataset, **workload.dataloader_kwargs())
        trainer.fit(module, train_dataloaders=train_dataloader)
        return module.model

    return run
