"""pytorch-accelerated's ``Trainer`` (optional: skipped when the package is not installed)."""

from collections.abc import Callable, Sequence

from pytorch_accelerated.trainer import DEFAULT_CALLBACKS, Trainer
from torch import nn

from bench.workloads import DATALOADER_KWARGS, Workload


def _setup(workload: Workload, callbacks: Sequence) -> Callable[[], nn.Module]:
    trainer = Trainer(workload.model, workload.loss_func, workload.optimizer, callbacks=callbacks)

    def run() -> nn.Module:
        trainer.train(
            train_dataset=workload.dataset,
            num_epochs=workload.num_epochs,
            per_device_batch_size=workload.batch_size,
            # pytorch-accelerated defaults to shuffle=True and one worker per CPU; override both.
            train_dataloader_kwargs=dict(DATALOADER_KWARGS),
        )
        return trainer.get_model()

    return run


def setup_no_callbacks(workload: Workload) -> Callable[[], nn.Module]:
    """``Trainer(..., callbacks=())``: the loop itself, nothing hooked in."""
    return _setup(workload, callbacks=())


def setup_default_callbacks(workload: Workload) -> Callable[[], nn.Module]:
    """``Trainer(...)`` with its defaults: progress bar, printed metrics, NaN check."""
    return _setup(workload, callbacks=DEFAULT_CALLBACKS)
