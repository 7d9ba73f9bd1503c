"""trainwright's ``Trainer``, once without callbacks (the bare loop) and once with its defaults."""

from collections.abc import Callable, Sequence

from torch import nn

from bench.workloads import DATALOADER_KWARGS, Workload
from trainwright import Trainer
from trainwright.callbacks import DEFAULT_CALLBACKS


def _setup(workload: Workload, callbacks: Sequence) -> Callable[[], nn.Module]:
    trainer = Trainer(workload.model, workload.loss_func, workload.optimizer, callbacks=callbacks)

    def run() -> nn.Module:
        trainer.train(
            train_dataset=workload.dataset,
            num_epochs=workload.num_epochs,
            per_device_batch_size=workload.batch_size,
            train_dataloader_kwargs=dict(DATALOADER_KWARGS),
        )
        return trainer.get_model()

    return run


def setup_no_callbacks(workload: Workload) -> Callable[[], nn.Module]:
    """``Trainer(..., callbacks=())``: the loop itself, nothing hooked in."""
    return _setup(workload, callbacks=())


def setup_default_callbacks(workload: Workload) -> Callable[[], nn.Module]:
    """``Trainer(..., callbacks=DEFAULT_CALLBACKS)``: what a user gets out of the box."""
    return _setup(workload, callbacks=DEFAULT_CALLBACKS)
