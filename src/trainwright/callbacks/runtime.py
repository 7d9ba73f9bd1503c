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
    """Replaces the model's BatchNorm layers with `torch.nn.SyncBatchNorm`, so that in a
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

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            ConvertSyncBatchNormCallback(), *DEFAULT_CALLBACKS,
        ])
        ```
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
    limit given anywhere wins), so [`RunConfig`][trainwright.run_config.RunConfig] and the
    scheduler placeholders reflect them and a schedule still ends on the run's last update.
    ``run_config`` states every limit that cuts the data short
    (``max_num_train_batches_per_epoch``, ``max_num_eval_batches``,
    ``max_num_intermediate_eval_batches``).

    Args:
        max_num_train_batches_per_epoch: training batches per epoch, or ``None`` for all.
        max_num_eval_batches: batches per evaluation (the epoch-end evaluation,
            ``evaluate()``, and intermediate evaluations of the run's evaluation data), or
            ``None`` for all.
        max_num_intermediate_eval_batches: batches per intermediate evaluation, one run
            during a training epoch (``StepBasedEvaluationCallback``,
            ``trainer.request_evaluation()``, or ``evaluate_model`` from a step event),
            whatever its data; ``None`` for no limit beyond ``max_num_eval_batches``.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS, BatchLimitsCallback(max_num_train_batches_per_epoch=10),
        ])
        ```
    """

    def __init__(
        self,
        max_num_train_batches_per_epoch: int | None = None,
        max_num_eval_batches: int | None = None,
        max_num_intermediate_eval_batches: int | None = None,
    ) -> None:
        for name, value in (
            ("max_num_train_batches_per_epoch", max_num_train_batches_per_epoch),
            ("max_num_eval_batches", max_num_eval_batches),
            ("max_num_intermediate_eval_batches", max_num_intermediate_eval_batches),
        ):
            check_positive_int(name, value, optional=True)
        self.max_num_train_batches_per_epoch = max_num_train_batches_per_epoch
        self.max_num_eval_batches = max_num_eval_batches
        self.max_num_intermediate_eval_batches = max_num_intermediate_eval_batches


class LimitBatchesCallback(BatchLimitsCallback):
    """Uses only the first ``num_batches`` batches of every training epoch and evaluation
    (pytorch-accelerated's name and signature; see
    [`BatchLimitsCallback`][trainwright.callbacks.runtime.BatchLimitsCallback]).

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[LimitBatchesCallback(2)])
        ```
    """

    def __init__(self, num_batches: int) -> None:
        check_positive_int("num_batches", num_batches)
        super().__init__(num_batches, num_batches)


class LimitEvalStepsCallback(BatchLimitsCallback):
    """Uses only the first ``num_eval_steps`` batches of intermediate evaluations, those run
    during a training epoch (``StepBasedEvaluationCallback``, ``request_evaluation``), as
    pytorch-accelerated's callback of the same name does by default; the evaluation at the
    end of every epoch and ``evaluate()`` use all their data. With
    ``limit_intermediate_only=False``, every evaluation is limited. Training is never
    limited. ``run_config.max_num_intermediate_eval_batches`` (and
    ``max_num_eval_batches``) state the limits; see
    [`BatchLimitsCallback`][trainwright.callbacks.runtime.BatchLimitsCallback].

    ``num_eval_steps`` counts batches of each process's dataloader (pytorch-accelerated
    divides it among the processes).

    Args:
        num_eval_steps: batches per limited evaluation, on each process.
        limit_intermediate_only: limit intermediate evaluations only (the default), or
            every evaluation.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS,
            StepBasedEvaluationCallback(eval_every_n_updates=500),
            LimitEvalStepsCallback(20),  # the step-based evaluations use 20 batches
        ])
        ```
    """

    def __init__(self, num_eval_steps: int, limit_intermediate_only: bool = True) -> None:
        check_positive_int("num_eval_steps", num_eval_steps)
        check_bool("limit_intermediate_only", limit_intermediate_only)
        super().__init__(
            max_num_eval_batches=None if limit_intermediate_only else num_eval_steps,
            max_num_intermediate_eval_batches=num_eval_steps,
        )
        self.num_eval_steps = num_eval_steps
        self.limit_intermediate_only = limit_intermediate_only
