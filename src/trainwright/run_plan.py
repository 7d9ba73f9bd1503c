"""The run plan: everything a ``train()`` call decides before its first step, computed once.

Where the parts of a run live:

- this module: ``train()``'s arguments, checked (`TrainArguments`), and the plan derived from
  them and from the DataLoaders as built (`RunPlan`, made by `plan_run`), without side
  effects: batch limits that actually cut, the epoch length, accumulation windows, how the
  scheduler is stepped, the facts of `RunConfig`;
- ``trainwright.trainer``: the loop (run, epoch, step, evaluation), which only reads the plan,
  and the per-epoch data it iterates (the epoch's loader, padded tail, start state);
- ``trainwright.run_control``: the requests that change a run's course (stop, end-epoch,
  evaluate, save, skip an update), agreed on by every process at the agreement points the
  event registry declares; ``trainwright.distributed``: Accelerate's padded tails and launch
  checks;
- ``trainwright.checkpointing``: training states on disk (atomic writes, manifests, pruning);
  the Trainer's ``save_training_state`` / ``resume_from`` decide what goes into one.

A newcomer's question "what decides whether this micro-step updates the weights?" has its
answer in [`RunPlan.is_update_step`][trainwright.run_plan.RunPlan.is_update_step].
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard, DataLoaderDispatcher
from accelerate.utils import DistributedType
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset

from trainwright.callbacks.runtime import BatchLimitsCallback
from trainwright.data import dataloader_length
from trainwright.run_config import RunConfig
from trainwright.validation import (
    check_bool,
    check_callable,
    check_dataloader_kwargs,
    check_dataset,
    check_number,
    check_path,
    check_positive_int,
    check_type,
)

__all__ = [
    "BatchLimits",
    "RunPlan",
    "SchedulerStepping",
    "TrainArguments",
    "batch_limits",
    "evaluation_run_config",
    "limit_that_cuts",
    "plan_run",
    "scheduler_stepping",
    "smaller_limit",
    "window_items_match_across_processes",
]


@dataclass(frozen=True)
class TrainArguments:
    """The arguments of one ``Trainer.train()`` call, checked when created: a bad value
    raises a ``TypeError`` or ``ValueError`` that names it and says what to pass instead.

    The fields are ``train()``'s parameters, with the same names, defaults and meaning (see
    ``Trainer.train``).
    """

    train_dataset: Dataset
    num_epochs: int
    eval_dataset: Dataset | None = None
    per_device_batch_size: int = 8
    max_num_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_clip_value: float | None = None
    max_grad_norm: float | None = None
    create_scheduler_fn: Callable[..., Any] | None = None
    train_dataloader_kwargs: dict[str, Any] | None = None
    eval_dataloader_kwargs: dict[str, Any] | None = None
    reset_run_history: bool = True
    collate_fn: Callable | None = None
    eval_per_device_batch_size: int | None = None
    max_num_train_batches_per_epoch: int | None = None
    max_num_eval_batches: int | None = None
    scheduler_step_interval: str | None = None
    scheduler_metric: str | None = None
    resume_from: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        self._check_options()
        check_dataloader_kwargs("train_dataloader_kwargs", self.train_dataloader_kwargs)
        check_dataloader_kwargs("eval_dataloader_kwargs", self.eval_dataloader_kwargs)
        check_bool("reset_run_history", self.reset_run_history)
        check_callable(
            "collate_fn", self.collate_fn, "a function of a list of samples", optional=True
        )
        check_positive_int(
            "eval_per_device_batch_size", self.eval_per_device_batch_size, optional=True
        )
        if not (isinstance(self.resume_from, str) and self.resume_from == "latest"):
            check_path("resume_from", self.resume_from, optional=True)
        self._check_data_and_run_length()

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch size of each process."""
        return self.eval_per_device_batch_size or self.per_device_batch_size

    def _check_options(self) -> None:
        for name in ("max_num_train_batches_per_epoch", "max_num_eval_batches"):
            value = getattr(self, name)
            if value is not None:
                check_positive_int(name, value)
        check_type(
            "scheduler_metric", self.scheduler_metric, str, "a metric name (str)", optional=True
        )
        if self.scheduler_step_interval not in (None, "update", "epoch"):
            raise ValueError(
                'scheduler_step_interval must be "update", "epoch" or None; '
                f"got {self.scheduler_step_interval!r}."
            )
        if self.create_scheduler_fn is None and (
            self.scheduler_step_interval is not None or self.scheduler_metric is not None
        ):
            raise ValueError(
                "scheduler_step_interval and scheduler_metric only apply to a scheduler: pass "
                "create_scheduler_fn to train(), or remove them."
            )

    def _check_data_and_run_length(self) -> None:
        check_dataset("train_dataset", self.train_dataset)
        check_not_empty("train_dataset", self.train_dataset)
        if self.eval_dataset is not None:
            check_dataset("eval_dataset", self.eval_dataset)
            check_not_empty("eval_dataset", self.eval_dataset)
        check_positive_int("num_epochs", self.num_epochs)
        check_positive_int("per_device_batch_size", self.per_device_batch_size)
        check_positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if self.max_num_train_steps is not None:
            check_positive_int("max_num_train_steps", self.max_num_train_steps)
        for name in ("gradient_clip_value", "max_grad_norm"):
            value = getattr(self, name)
            check_number(name, value, minimum=0, is_minimum_allowed=False, optional=True)
        scheduler_fn = self.create_scheduler_fn
        if isinstance(scheduler_fn, (LRScheduler, ReduceLROnPlateau)) or (
            scheduler_fn is not None and not callable(scheduler_fn)
        ):
            raise TypeError(
                "create_scheduler_fn must be a function that takes the optimizer and returns a "
                f"scheduler, but got {type(scheduler_fn).__name__} instance. The trainer "
                "creates the scheduler itself, after preparing the optimizer: pass e.g. "
                "functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10)."
            )


@dataclass(frozen=True)
class BatchLimits:
    """The batch limits of a run: ``train()``'s, lowered by those of every
    `BatchLimitsCallback` (the smallest applies); ``None`` means no limit.

    Attributes:
        max_num_train_batches_per_epoch: training batches per epoch.
        max_num_eval_batches: batches of each epoch-end evaluation (and ``evaluate()``).
        max_num_intermediate_eval_batches: batches of each evaluation run during a training
            epoch's steps (set by callbacks only, e.g. ``LimitEvalStepsCallback``).
    """

    max_num_train_batches_per_epoch: int | None = None
    max_num_eval_batches: int | None = None
    max_num_intermediate_eval_batches: int | None = None


def batch_limits(
    callbacks: Iterable[Any],
    max_num_train_batches_per_epoch: int | None = None,
    max_num_eval_batches: int | None = None,
) -> BatchLimits:
    """The given limits, lowered by those of any `BatchLimitsCallback` in ``callbacks``."""
    limits = BatchLimits(max_num_train_batches_per_epoch, max_num_eval_batches)
    for callback in callbacks:
        if isinstance(callback, BatchLimitsCallback):
            limits = BatchLimits(
                *(
                    smaller_limit(getattr(limits, field.name), getattr(callback, field.name))
                    for field in dataclasses.fields(BatchLimits)
                )
            )
    return limits


@dataclass(frozen=True)
class SchedulerStepping:
    """How the run's scheduler is stepped, decided once from its type and ``train()``'s
    ``scheduler_step_interval`` / ``scheduler_metric`` (see `scheduler_stepping`).

    Attributes:
        per_update: ``scheduler_step()`` after every optimizer update that is not skipped.
        per_epoch: ``scheduler_epoch_step()`` after each epoch, once its metrics are recorded.
        is_timm: a timm-style scheduler (one with ``step_update``): ``step_update(num_updates)``
            per update and ``step(epoch)`` per epoch.
        metric: the run-history metric given to ``ReduceLROnPlateau`` / a timm-style scheduler
            at each epoch end, or ``None``.
    """

    per_update: bool = False
    per_epoch: bool = False
    is_timm: bool = False
    metric: str | None = None


def scheduler_stepping(
    scheduler: Any, step_interval: str | None, metric_name: str | None
) -> SchedulerStepping:
    """How ``scheduler`` (``None``: no scheduler) is stepped; a ``ValueError`` for a
    combination that cannot work (``ReduceLROnPlateau`` without a metric or per update, a
    metric for a scheduler that takes none)."""
    if scheduler is None:
        return SchedulerStepping(metric=metric_name)
    is_plateau = isinstance(scheduler, ReduceLROnPlateau)
    is_timm = callable(getattr(scheduler, "step_update", None))
    if is_plateau and (step_interval == "update" or metric_name is None):
        raise ValueError(
            "ReduceLROnPlateau is stepped once per epoch with a metric: pass "
            'scheduler_metric="eval_loss_epoch" (or another recorded metric) to train(), '
            'and leave scheduler_step_interval as None or "epoch".'
        )
    if metric_name is not None and not (is_plateau or is_timm):
        raise ValueError(
            f"scheduler_metric={metric_name!r} is only used by ReduceLROnPlateau and "
            f"timm-style schedulers, but the scheduler is a {type(scheduler).__name__}. "
            "Remove scheduler_metric."
        )
    if is_plateau:
        per_update, per_epoch = False, True
    elif is_timm:
        per_update, per_epoch = step_interval != "epoch", step_interval != "update"
    else:
        per_update, per_epoch = step_interval != "epoch", step_interval == "epoch"
    return SchedulerStepping(per_update, per_epoch, is_timm, metric_name)


@dataclass(frozen=True)
class RunPlan:
    """What a ``train()`` run will do, decided once before its first step from its
    arguments and the DataLoaders as built; the loop only reads it.

    | Field | Meaning |
    | --- | --- |
    | ``run_config`` | the facts callbacks read as ``trainer.run_config`` (`RunConfig`) |
    | ``num_train_batches`` | training batches per epoch on each process, after the batch limit; ``None`` for data without a length, whose epochs end when the data does |
    | ``limits`` | the batch limits that cut an epoch short (`BatchLimits`); a limit at or above the data's length is dropped, so that such epochs run their loader to its end |
    | ``gradient_accumulation_steps`` | micro-batches per optimizer update |
    | ``max_num_update_steps`` | the updates after which the run ends (``math.inf``: the epochs decide) |
    | ``nominal_window_items`` | samples a window of full batches holds on one process: the scale of the item-weighted accumulation (``trainwright.accumulation``) |
    | ``batch_size_of_every_process`` | the samples every training batch holds on every process, when that is guaranteed (`window_items_match_across_processes`), else ``None``; a window whose micro-batches are weighed by their batch size then holds as many items on every process, and its item count is not all-reduced (``trainwright.accumulation``) |
    | ``defers_gradient_sync`` | whether micro-steps inside a window skip the gradient all-reduce (``no_sync``); not under FSDP, whose unsynchronised gradients a training state could not hold |
    | ``may_skip_updates`` | whether updates may be skipped on some processes only (the Trainer or a callback declares ``may_skip_updates``) in a run of several processes: every update is then agreed on (``trainwright.run_control``) |
    | ``scheduler`` | how the scheduler is stepped (`SchedulerStepping`) |
    """  # noqa: E501

    run_config: RunConfig
    num_train_batches: int | None
    limits: BatchLimits
    gradient_accumulation_steps: int
    max_num_update_steps: float
    nominal_window_items: Any
    batch_size_of_every_process: int | None
    defers_gradient_sync: bool
    may_skip_updates: bool = False
    scheduler: SchedulerStepping = SchedulerStepping()

    def is_update_step(self, step: int, num_batches_in_epoch: int | None) -> bool:
        """Whether micro-step ``step`` (from 0) ends an accumulation window, and so updates:
        after every ``gradient_accumulation_steps`` micro-batches, and after the epoch's last
        batch (``num_batches_in_epoch``: the plan's ``num_train_batches``, or for data
        without a length ``None`` until the last batch comes), whose window is shorter."""
        return (
            step + 1
        ) % self.gradient_accumulation_steps == 0 or step + 1 == num_batches_in_epoch

    def with_scheduler(self, stepping: SchedulerStepping) -> RunPlan:
        """The same plan, with the scheduler stepped as ``stepping`` says."""
        return dataclasses.replace(self, scheduler=stepping)

    def is_epoch_cut_after(self, step: int) -> bool:
        """Whether the batch limit ends the epoch after micro-step ``step``."""
        return step + 1 == self.limits.max_num_train_batches_per_epoch


def plan_run(
    arguments: TrainArguments,
    callbacks: Iterable[Any],
    accelerator: Accelerator,
    train_dataloader: DataLoader,
    eval_dataloader: DataLoader | None,
    dataloader_settings: dict[str, dict[str, Any]],
    may_skip_updates: bool = False,
) -> RunPlan:
    """The plan of a ``train()`` run, from its checked arguments, the trainer's callbacks
    (for their batch limits and ``may_skip_updates`` declarations), the accelerator
    (processes, device) and the prepared DataLoaders, whose settings as built are
    ``dataloader_settings[role]``; ``may_skip_updates`` is the Trainer (subclass)'s own
    declaration.

    The scheduler is created from the plan's ``run_config`` (its placeholders), so its
    stepping is added afterwards: ``plan.with_scheduler(scheduler_stepping(...))``. Nothing is
    changed: the same inputs give the same plan.
    """
    given = batch_limits(
        callbacks, arguments.max_num_train_batches_per_epoch, arguments.max_num_eval_batches
    )
    limits = dataclasses.replace(
        given,
        max_num_train_batches_per_epoch=limit_that_cuts(
            given.max_num_train_batches_per_epoch, train_dataloader
        ),
        max_num_eval_batches=limit_that_cuts(given.max_num_eval_batches, eval_dataloader),
    )
    accumulation_steps = arguments.gradient_accumulation_steps
    train_len = dataloader_length(train_dataloader)
    num_train_batches = _limit_or_none(train_len, limits.max_num_train_batches_per_epoch)
    num_update_steps_per_epoch = (
        None if num_train_batches is None else math.ceil(num_train_batches / accumulation_steps)
    )
    num_epochs, max_num_train_steps = arguments.num_epochs, arguments.max_num_train_steps
    if max_num_train_steps is not None:
        num_update_steps = max_num_train_steps
        # Without a length, epochs repeat until max_num_train_steps (num_epochs None).
        num_epochs = (
            None
            if num_update_steps_per_epoch is None
            else math.ceil(max_num_train_steps / num_update_steps_per_epoch)
        )
    elif num_update_steps_per_epoch is not None:
        num_update_steps = num_update_steps_per_epoch * num_epochs
    else:
        num_update_steps = None
    train_batch_size = per_device_batch_size(accelerator, dataloader_settings["train"])
    run_config = RunConfig(
        num_epochs=num_epochs,
        num_update_steps_per_epoch=num_update_steps_per_epoch,
        num_update_steps=num_update_steps,
        max_num_train_steps=max_num_train_steps,
        train_per_device_batch_size=train_batch_size,
        train_total_batch_size=(
            None
            if train_batch_size is None
            else train_batch_size * accelerator.num_processes * accumulation_steps
        ),
        train_dataloader_len=num_train_batches,
        gradient_accumulation_steps=accumulation_steps,
        gradient_clip_value=arguments.gradient_clip_value,
        max_grad_norm=arguments.max_grad_norm,
        train_dl_kwargs=dataloader_settings["train"],
        max_num_train_batches_per_epoch=limits.max_num_train_batches_per_epoch,
        max_num_eval_batches=limits.max_num_eval_batches,
        max_num_intermediate_eval_batches=limits.max_num_intermediate_eval_batches,
        **_eval_and_process_facts(
            accelerator, eval_dataloader, dataloader_settings, limits.max_num_eval_batches
        ),
    )
    return RunPlan(
        run_config=run_config,
        num_train_batches=num_train_batches,
        limits=limits,
        gradient_accumulation_steps=accumulation_steps,
        max_num_update_steps=num_update_steps or math.inf,
        # Batches of no fixed size: a window of k batches is scaled as k items per batch (the
        # scale only conditions the sums; a window's gradients are its exact mean either way).
        nominal_window_items=(train_batch_size or 1) * accumulation_steps,
        batch_size_of_every_process=(
            train_batch_size
            if window_items_match_across_processes(accelerator, train_dataloader)
            else None
        ),
        defers_gradient_sync=accelerator.distributed_type != DistributedType.FSDP,
        may_skip_updates=accelerator.num_processes > 1
        and (may_skip_updates or any(callback.may_skip_updates for callback in callbacks)),
    )


def window_items_match_across_processes(
    accelerator: Accelerator, train_dataloader: DataLoader
) -> bool:
    """Whether every training batch of every process holds as many samples, so that
    accumulation windows weighed by batch size hold as many items on every process, known
    without communication. When in doubt, ``False`` (the item counts are all-reduced).

    It holds with several processes, not under DeepSpeed (which folds the item counts into
    the losses), when the prepared loader shards torch's own ``BatchSampler`` (exactly that
    type: a batch sampler of the user's may give the processes batches of different sizes) of
    a fixed batch size over a map-style dataset with a length, with Accelerate's
    ``even_batches`` on (its default): every process then gets as many batches, each full,
    the last ones completed with samples from the start. With ``split_batches`` each batch is
    split evenly among the processes, the last one completed to full size first. Batches
    dispatched from the main process (``dispatch_batches``) are left out.
    """
    if accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return False
    shard = getattr(train_dataloader, "batch_sampler", None)
    if isinstance(train_dataloader, DataLoaderDispatcher):
        return False
    if not isinstance(shard, BatchSamplerShard) or not shard.even_batches:
        return False
    batches = shard.batch_sampler
    return (
        type(batches) is BatchSampler
        and isinstance(batches.batch_size, int)
        and not isinstance(train_dataloader.dataset, IterableDataset)
        and dataloader_length(train_dataloader) is not None
    )


def evaluation_run_config(
    accelerator: Accelerator,
    eval_dataloader: DataLoader,
    dataloader_settings: dict[str, dict[str, Any]],
    max_num_batches: int | None,
) -> RunConfig:
    """The run config of an ``evaluate()``: its evaluation facts, no training ones."""
    return RunConfig(
        num_epochs=None,
        num_update_steps_per_epoch=None,
        num_update_steps=None,
        max_num_train_steps=None,
        train_per_device_batch_size=None,
        train_total_batch_size=None,
        train_dataloader_len=None,
        gradient_accumulation_steps=None,
        gradient_clip_value=None,
        max_grad_norm=None,
        train_dl_kwargs=None,
        max_num_eval_batches=max_num_batches,
        **_eval_and_process_facts(
            accelerator, eval_dataloader, dataloader_settings, max_num_batches
        ),
    )


def _eval_and_process_facts(
    accelerator: Accelerator,
    eval_dataloader: DataLoader | None,
    dataloader_settings: dict[str, dict[str, Any]],
    max_num_eval_batches: int | None,
) -> dict[str, Any]:
    """The run config's facts about the evaluation dataloader, processes and device."""
    has_eval = eval_dataloader is not None  # not bool(): that calls len()
    return {
        "eval_per_device_batch_size": (
            per_device_batch_size(accelerator, dataloader_settings["eval"]) if has_eval else None
        ),
        "eval_dataloader_len": (
            _limit_or_none(dataloader_length(eval_dataloader), max_num_eval_batches)
            if has_eval
            else None
        ),
        "eval_dl_kwargs": dataloader_settings["eval"] if has_eval else None,
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "local_process_index": accelerator.local_process_index,
        "is_world_process_zero": accelerator.is_main_process,
        "is_local_process_zero": accelerator.is_local_main_process,
        "is_distributed": accelerator.num_processes > 1,
        "mixed_precision": str(accelerator.mixed_precision),
        "device": str(accelerator.device),
    }


def per_device_batch_size(accelerator: Accelerator, settings: dict[str, Any]) -> int | None:
    """The batch size of each process, from a dataloader's settings as built."""
    batch_size = settings["batch_size"]
    if batch_size is not None and accelerator.split_batches:
        batch_size //= accelerator.num_processes  # split among the processes
    return batch_size


def limit_that_cuts(max_num_batches: int | None, dataloader: DataLoader | None) -> int | None:
    """``max_num_batches`` if it cuts ``dataloader``'s epochs short, else ``None``.

    A limit that does not cut is dropped, so that such epochs run the dataloader to its end
    (Accelerate's dataloaders advance their epoch count only then). Without a length,
    whether it cuts is unknown: it is kept.
    """
    if max_num_batches is None or dataloader is None:
        return None
    length = dataloader_length(dataloader)
    if length is not None and max_num_batches >= length:
        return None
    return max_num_batches


def check_not_empty(name: str, dataset: Any) -> None:
    """A ``ValueError`` if ``dataset`` has a length of 0."""
    if isinstance(dataset, Sized) and len(dataset) == 0:
        raise ValueError(f"{name} is empty (0 samples); pass a dataset with samples.")


def smaller_limit(limit: int | None, other: int | None) -> int | None:
    """The smaller of two batch limits, where ``None`` means no limit."""
    limits = [value for value in (limit, other) if value is not None]
    return min(limits) if limits else None


def _limit_or_none(num_batches: int | None, max_num_batches: int | None) -> int | None:
    if num_batches is None or max_num_batches is None:
        return num_batches
    return min(num_batches, max_num_batches)
