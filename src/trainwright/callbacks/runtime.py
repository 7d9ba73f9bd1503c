"""Callbacks that set up the run's environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainwright.callbacks.base import TrainerCallback
from trainwright.validation import check_bool, check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "BatchLimitsCallback",
    "ConvertSyncBatchNormCallback",
    "LimitBatchesCallback",
    "LimitEvalStepsCallback",
    "MoveModulesToDeviceCallback",
]


class MoveModulesToDeviceCallback(TrainerCallback):
    """Moves every public ``nn.Module`` attribute of the trainer other than the model (the
    loss function, or modules a subclass adds) to the trainer's device when a training or
    evaluation run starts. The model itself is placed by Accelerate. It runs before other
    callbacks (``order = -10``), so they find the modules on the device."""

    order = -10

    def _move_modules(self, trainer: Trainer) -> None:
        for name, value in vars(trainer).items():
            if (
                not name.startswith("_")
                and isinstance(value, nn.Module)
                and value is not trainer.model
            ):
                value.to(trainer.device)

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_modules(trainer)

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._move_modules(trainer)


class ConvertSyncBatchNormCallback(TrainerCallback):
    """Replaces the model's BatchNorm layers with :class:`torch.nn.SyncBatchNorm`, so that in a
    multi-process run the batch statistics are computed over the whole global batch instead
    of each process's share.

    It acts in ``on_init_end``, before Accelerate wraps the model (when ``train()`` or
    ``evaluate()`` first prepares it), so pass it to the ``Trainer`` constructor; added later,
    it does nothing. The converted layers keep the original parameters and running
    statistics, so the optimizer needs no change. It runs before other callbacks
    (``order = -20``), so they see the converted model.

    With one process there is nothing to synchronise and the model is left as it is, unless
    ``convert_on_one_process=True`` (then ``SyncBatchNorm`` computes like ``BatchNorm``; e.g.
    to keep the module types, and so checkpoints, the same whatever the process count).

    PyTorch's ``SyncBatchNorm`` trains on CUDA, XPU, HPU and PrivateUse1 devices only: in a
    multi-process run on the CPU (or MPS) this callback raises a ``ValueError`` when the
    trainer is constructed, instead of the run failing at its first forward pass.

    Args:
        process_group: the group to synchronise over; ``None`` for all processes.
        convert_on_one_process: convert even when the run has a single process.

    Example::

        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            ConvertSyncBatchNormCallback(), *DEFAULT_CALLBACKS,
        ])
    """

    order = -20
    #: Devices on which ``torch.nn.SyncBatchNorm`` can train with several processes.
    SUPPORTED_DEVICE_TYPES = ("cuda", "xpu", "hpu")

    def __init__(
        self,
        process_group: torch.distributed.ProcessGroup | None = None,
        convert_on_one_process: bool = False,
    ) -> None:
        check_bool("convert_on_one_process", convert_on_one_process)
        self.process_group = process_group
        self.convert_on_one_process = convert_on_one_process

    def on_init_end(self, trainer: Trainer, **kwargs: Any) -> None:
        num_processes = trainer.accelerator.num_processes
        if num_processes == 1 and not self.convert_on_one_process:
            return
        device_type = trainer.device.type
        supported = (*self.SUPPORTED_DEVICE_TYPES, torch._C._get_privateuse1_backend_name())
        if num_processes > 1 and device_type not in supported:
            raise ValueError(
                f"ConvertSyncBatchNormCallback: torch.nn.SyncBatchNorm cannot train on "
                f"{device_type!r} devices, and this run has {num_processes} processes on "
                f"{device_type!r}. Remove the callback (each process then normalises with its "
                "own batch statistics), or train on GPUs."
            )
        trainer.model = nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model, self.process_group)


class BatchLimitsCallback(TrainerCallback):
    """Limits the batches each training epoch and each evaluation uses (e.g. for a quick
    trial run of a script), without changing the data.

    The trainer reads the limits when ``train()`` (or ``evaluate()``) starts, exactly like its
    ``max_num_train_batches_per_epoch`` and ``max_num_eval_batches`` arguments (the smallest
    limit given anywhere wins), so :class:`~trainwright.run_config.RunConfig` and the
    scheduler placeholders reflect them and a schedule still ends on the run's last update.

    Args:
        max_num_train_batches_per_epoch: training batches per epoch, or ``None`` for all.
        max_num_eval_batches: batches per evaluation, or ``None`` for all.

    Example::

        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS, BatchLimitsCallback(max_num_train_batches_per_epoch=10),
        ])
    """

    def __init__(
        self,
        max_num_train_batches_per_epoch: int | None = None,
        max_num_eval_batches: int | None = None,
    ) -> None:
        for name, value in (
            ("max_num_train_batches_per_epoch", max_num_train_batches_per_epoch),
            ("max_num_eval_batches", max_num_eval_batches),
        ):
            check_positive_int(name, value, optional=True)
        self.max_num_train_batches_per_epoch = max_num_train_batches_per_epoch
        self.max_num_eval_batches = max_num_eval_batches


class LimitBatchesCallback(BatchLimitsCallback):
    """Uses only the first ``num_batches`` batches of every training epoch and evaluation
    (pytorch-accelerated's name and signature; see :class:`BatchLimitsCallback`).

    Example::

        trainer = Trainer(model, loss_func, optimizer, callbacks=[LimitBatchesCallback(2)])
    """

    def __init__(self, num_batches: int) -> None:
        check_positive_int("num_batches", num_batches)
        super().__init__(num_batches, num_batches)


class LimitEvalStepsCallback(BatchLimitsCallback):
    """Uses only the first ``num_eval_steps`` batches of every evaluation; training is not
    limited (see :class:`BatchLimitsCallback`).

    Example::

        trainer = Trainer(model, loss_func, optimizer, callbacks=[LimitEvalStepsCallback(20)])
    """

    def __init__(self, num_eval_steps: int) -> None:
        check_positive_int("num_eval_steps", num_eval_steps)
        super().__init__(max_num_eval_batches=num_eval_steps)
