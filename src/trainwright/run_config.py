"""RunConfig: the facts of the current training run, fixed when ``train()`` starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RunConfig", "TrainerRunConfig"]


@dataclass(frozen=True)
class RunConfig(Mapping):
    """The configuration of a training run, built by ``Trainer.train()`` before
    ``on_training_run_start`` (and by ``Trainer.evaluate()`` for its evaluation).

    It is a frozen dataclass that can also be read like a mapping, so both
    ``trainer.run_config.num_epochs`` and ``trainer.run_config["num_epochs"]`` work, and
    ``dict(trainer.run_config)`` gives every field (e.g. to log as hyperparameters).

    Update steps are optimizer updates: with ``gradient_accumulation_steps=k`` and ``N``
    batches per process per epoch, an epoch performs ``ceil(N / k)`` of them, and every
    process performs the same number.

    Training data without a length (an ``IterableDataset`` without ``__len__``): each epoch
    runs until the data is exhausted, so ``train_dataloader_len`` and
    ``num_update_steps_per_epoch`` are ``None``; ``num_update_steps`` is
    ``max_num_train_steps`` (``None`` without it); ``num_epochs`` is as given to ``train()``,
    or ``None`` with ``max_num_train_steps``, meaning epochs repeat until that many updates.

    Every fact is read from the DataLoaders actually built, so a ``batch_size`` in
    ``train_dataloader_kwargs`` (or a ``batch_sampler``, or an overridden
    ``create_train_dataloader``) is what the batch sizes say.

    While ``Trainer.evaluate()`` runs, ``run_config`` describes that evaluation: the
    ``eval_*`` fields, processes and device are set, and every training field
    (``num_epochs`` to ``max_grad_norm``, ``train_dl_kwargs``) is ``None``.

    Attributes:
        num_epochs: epochs that will run (fewer than asked when ``max_num_train_steps`` ends
            the run earlier); ``None``: until ``max_num_train_steps`` (data without a length).
        num_update_steps_per_epoch: optimizer updates in a full epoch, on every process;
            ``None`` for data without a length.
        num_update_steps: optimizer updates the whole run will perform; ``None`` for data
            without a length and no ``max_num_train_steps``.
        max_num_train_steps: the limit given to ``train()``, or ``None``.
        train_per_device_batch_size: batch size of each process's training batches (``None``
            when the batches have no fixed size, e.g. a ``batch_sampler`` without a
            ``batch_size``).
        train_total_batch_size: samples per optimizer update over all processes and
            accumulated micro-steps (``None`` when the batches have no fixed size).
        train_dataloader_len: training batches per epoch on each process; ``None`` for data
            without a length.
        eval_per_device_batch_size: batch size of each process's evaluation batches
            (``None`` without evaluation data, or when the batches have no fixed size).
        eval_dataloader_len: evaluation batches per epoch on each process (``None`` without
            evaluation data, or for evaluation data without a length).
        gradient_accumulation_steps: micro-steps per optimizer update.
        gradient_clip_value: clip gradients to this absolute value, or ``None``.
        max_grad_norm: clip the gradient norm to this value, or ``None``.
        num_processes: processes in the run (the world size).
        process_index: this process's global rank.
        local_process_index: this process's rank on its machine.
        is_world_process_zero: whether this is the main process of the whole run.
        is_local_process_zero: whether this is the main process of its machine.
        is_distributed: whether more than one process takes part.
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``.
        device: the device this process trains on, as a string.
        train_dl_kwargs: settings of the training dataloader as built (``batch_size``,
            ``num_workers``, ``pin_memory``, ``drop_last``, ``persistent_workers``).
        eval_dl_kwargs: the same for the evaluation dataloader (``None`` without one).
        max_num_train_batches_per_epoch: the batch limit that cuts every training epoch
            short (``train()``'s argument or a `BatchLimitsCallback`), or ``None`` when
            every epoch runs over all the training data.
        max_num_eval_batches: the batch limit that cuts every evaluation epoch short, or
            ``None`` when evaluations run over all the evaluation data.
        max_num_intermediate_eval_batches: the batch limit of evaluations run during a
            training epoch (``StepBasedEvaluationCallback``, ``request_evaluation``), set by
            ``LimitEvalStepsCallback``; ``None`` when only ``max_num_eval_batches`` applies.

    pytorch-accelerated's field names also read, as properties and as keys:
    ``num_local_update_steps_per_epoch`` (``num_update_steps_per_epoch``, which is per
    process here) and ``eval_total_batch_size``.
    """

    num_epochs: int | None
    num_update_steps_per_epoch: int | None
    num_update_steps: int | None
    max_num_train_steps: int | None
    train_per_device_batch_size: int | None
    train_total_batch_size: int | None
    train_dataloader_len: int | None
    eval_per_device_batch_size: int | None
    eval_dataloader_len: int | None
    gradient_accumulation_steps: int | None
    gradient_clip_value: float | None
    max_grad_norm: float | None
    num_processes: int
    process_index: int
    local_process_index: int
    is_world_process_zero: bool
    is_local_process_zero: bool
    is_distributed: bool
    mixed_precision: str
    device: str
    train_dl_kwargs: dict[str, Any] | None
    eval_dl_kwargs: dict[str, Any] | None
    max_num_train_batches_per_epoch: int | None = None
    max_num_eval_batches: int | None = None
    max_num_intermediate_eval_batches: int | None = None

    @property
    def num_local_update_steps_per_epoch(self) -> int | None:
        """pytorch-accelerated's name of `num_update_steps_per_epoch` (per process)."""
        return self.num_update_steps_per_epoch

    @property
    def eval_total_batch_size(self) -> int | None:
        """Evaluation samples per step over all processes (pytorch-accelerated's field)."""
        if self.eval_per_device_batch_size is None:
            return None
        return self.eval_per_device_batch_size * self.num_processes

    def __getitem__(self, key: str) -> Any:
        if key in _PYTORCH_ACCELERATED_NAMES:
            return getattr(self, key)
        if key not in self._field_names():
            raise KeyError(
                f"RunConfig has no field {key!r}. Fields: {', '.join(self._field_names())}."
            )
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dictionary."""
        return dataclasses.asdict(self)


_PYTORCH_ACCELERATED_NAMES = ("num_local_update_steps_per_epoch", "eval_total_batch_size")

#: pytorch-accelerated's name of `RunConfig`.
TrainerRunConfig = RunConfig
