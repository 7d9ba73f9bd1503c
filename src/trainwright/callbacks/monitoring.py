"""Callbacks that watch the run itself: learning rates, speed, model size, GPU memory.

Which library does what: timings use `time.perf_counter` (standard library), learning
rates are read from the optimizer's ``param_groups``, parameter counts from
`torch.nn.Module.parameters`, and memory statistics from `torch.cuda`. None adds a
host-device sync on the per-step path: they count on the host and record their metrics at
epoch boundaries, where the trainer reads the epoch's loss from the device anyway.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainwright.callbacks.base import TrainerCallback
from trainwright.callbacks.filters import due_check, every
from trainwright.validation import check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = [
    "CudaMemoryCallback",
    "LearningRateMonitorCallback",
    "ModelSummaryCallback",
    "ModuleSummary",
    "TimingCallback",
    "format_model_summary",
    "learning_rates",
    "summarize_model",
]


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float | torch.Tensor]:
    """The optimizer's current learning rates: ``{"learning_rate": lr}`` for one parameter
    group, ``{"learning_rate_group_0": ..., "learning_rate_group_1": ...}`` for several.
    Values are as the optimizer holds them (usually floats; a tensor for a tensor ``lr``).

    Example:
        ```python
        learning_rates(torch.optim.SGD(model.parameters(), lr=0.1))  # {"learning_rate": 0.1}
        ```
    """
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"learning_rate": groups[0]["lr"]}
    return {f"learning_rate_group_{index}": group["lr"] for index, group in enumerate(groups)}


class LearningRateMonitorCallback(TrainerCallback):
    """Records the learning rate of every parameter group.

    Per epoch, the learning rate each epoch starts with (the one its first update uses) is
    recorded in the run history at the epoch's end as ``learning_rate`` (one parameter
    group) or ``learning_rate_group_<i>``; it therefore appears with the epoch's other
    metrics in printers, trackers and CSV files. With ``log_every_n_updates``, the learning
    rates after every that-many optimizer updates are also kept in `update_history`
    as ``(updates so far, {name: lr})`` (for per-update curves in trackers, see
    [`ExperimentTrackerCallback`][trainwright.callbacks.loggers.ExperimentTrackerCallback], which
    logs them itself).

    Args:
        log_every_n_updates: also keep the rates every this many updates; ``None``: per
            epoch only.

    Example:
        ```python
        monitor = LearningRateMonitorCallback(log_every_n_updates=10)
        trainer = Trainer(model, loss_func, optimizer, callbacks=[monitor])
        trainer.train(dataset, num_epochs=3,
                      create_scheduler_fn=partial(StepLR, step_size=1, gamma=0.5))
        trainer.run_history.get_metric_values("learning_rate")  # [0.1, 0.05, 0.025]
        ```
    """

    writes_metrics = ("learning_rate",)

    def __init__(self, log_every_n_updates: int | None = None) -> None:
        check_positive_int("log_every_n_updates", log_every_n_updates, optional=True)
        #: ``(optimizer updates so far, {name: learning rate})`` every N updates.
        self.update_history: list[tuple[int, dict[str, float]]] = []
        self._epoch_start_rates: dict[str, float] = {}
        self._update_logging = None
        if log_every_n_updates is not None:
            self._update_logging = due_check(self, every(n_updates=log_every_n_updates))

    @property
    def log_every_n_updates(self) -> int | None:
        """The interval given to the constructor (read-only: build a new callback to change
        it)."""
        return None if self._update_logging is None else self._update_logging.event_filter.n_updates

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.update_history = []

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._epoch_start_rates = _as_floats(learning_rates(trainer.optimizer))

    def on_after_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        if self._update_logging is not None and self._update_logging.is_due(trainer):
            rates = _as_floats(learning_rates(trainer.optimizer))
            self.update_history.append((trainer.progress.num_update_steps, rates))

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        for name, value in self._epoch_start_rates.items():
            trainer.run_history.update_metric(name, value)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_start_rates": dict(self._epoch_start_rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch_start_rates = dict(state["epoch_start_rates"])


def _as_floats(values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}


class TimingCallback(TrainerCallback):
    """Records how fast the run goes, as run-history metrics at the end of every epoch:

    - ``train_epoch_time_s``: seconds spent in the epoch's training part;
    - ``epoch_time_s``: seconds for the whole epoch, evaluation included;
    - ``samples_per_s``: training samples per second over all processes (this process's
      samples times the number of processes);
    - ``updates_per_s``: optimizer updates per second in the training part;
    - ``eta_s``: estimated seconds until the run ends: the updates still to do, at the
      epoch's pace (evaluation included); for training data without a length and no
      ``max_num_train_steps``, the epochs still to do at the epoch's pace.

    Time is measured with `time.perf_counter` between events. Nothing waits for the
    device on the per-step path: steps only add the batch size (a Python int) to a count.
    The epoch's end is measured after the trainer has read the epoch's loss from the
    device, so queued GPU work is included in the times.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[TimingCallback()])
        trainer.train(dataset, num_epochs=2)
        trainer.run_history.get_latest_metric("samples_per_s")
        ```
    """

    writes_metrics = (
        "train_epoch_time_s",
        "epoch_time_s",
        "samples_per_s",
        "updates_per_s",
        "eta_s",
    )
    order = -5  # recorded before callbacks of the default order act on the epoch's metrics

    def __init__(self) -> None:
        self._epoch_start = 0.0
        self._train_time = 0.0
        self._num_samples: int | torch.Tensor = 0
        self._updates_at_epoch_start = 0

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._epoch_start = time.perf_counter()
        self._num_samples = 0
        self._updates_at_epoch_start = trainer.progress.num_update_steps

    def on_train_step_end(self, trainer: Trainer, batch_output: dict, **kwargs: Any) -> None:
        self._num_samples += batch_output["batch_size"]

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._train_time = time.perf_counter() - self._epoch_start

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        epoch_time = time.perf_counter() - self._epoch_start
        train_time = max(self._train_time, 1e-9)
        num_updates = trainer.progress.num_update_steps - self._updates_at_epoch_start
        num_samples = float(self._num_samples) * trainer.accelerator.num_processes
        history = trainer.run_history
        history.update_metric("train_epoch_time_s", self._train_time)
        history.update_metric("epoch_time_s", epoch_time)
        history.update_metric("samples_per_s", num_samples / train_time)
        history.update_metric("updates_per_s", num_updates / train_time)
        history.update_metric("eta_s", _eta_s(trainer, epoch_time, num_updates))


def _eta_s(trainer: Trainer, epoch_time: float, num_epoch_updates: int) -> float:
    config = trainer.run_config
    if config.num_update_steps is None:  # data without a length: count the epochs left
        return (config.num_epochs - trainer.progress.epoch - 1) * epoch_time
    remaining_updates = config.num_update_steps - trainer.progress.num_update_steps
    return remaining_updates * epoch_time / num_epoch_updates if num_epoch_updates else 0.0


@dataclass(frozen=True)
class ModuleSummary:
    """One row of `summarize_model`: a submodule and its parameter counts.

    Attributes:
        name: the submodule's qualified name (`"encoder.layer.0"`), or `"(own)"` for the
            parameters registered on the model itself.
        type_name: the submodule's class name.
        num_trainable_parameters: parameters with `requires_grad`, its submodules' included.
        num_parameters: all its parameters, its submodules' included.
        depth: 1 for the model's direct children, 2 for theirs, and so on.
    """

    name: str
    type_name: str
    num_trainable_parameters: int
    num_parameters: int
    depth: int = 1


def _count(parameters: Any, seen: set[int]) -> tuple[int, int]:
    trainable = total = 0
    for parameter in parameters:
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def summarize_model(model: nn.Module, max_depth: int = 1) -> list[ModuleSummary]:
    """Trainable and total parameter counts per submodule of ``model``, down to
    ``max_depth`` levels (1: its direct children, as Lightning's `ModelSummary(max_depth=1)`),
    each row followed by the rows of its own children; plus a ``"(own)"`` row for parameters
    registered on ``model`` itself. Shared parameters are counted once among the rows of one
    depth, under the first module that holds them, so the depth-1 rows add up to the
    model's total.

    Example:
        ```python
        from torch import nn
        from trainwright.callbacks.monitoring import summarize_model

        rows = summarize_model(nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 2))), 2)
        assert [(row.name, row.num_parameters) for row in rows] == [
            ("0", 40), ("1", 18), ("1.0", 18)
        ]
        ```
    """
    check_positive_int("max_depth", max_depth)
    seen_by_depth: dict[int, set[int]] = {}
    rows: list[ModuleSummary] = []

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            trainable, total = _count(child.parameters(), seen_by_depth.setdefault(depth, set()))
            rows.append(ModuleSummary(qualified, type(child).__name__, trainable, total, depth))
            if depth < max_depth:
                visit(child, f"{qualified}.", depth + 1)

    visit(model, "", 1)
    trainable, total = _count(model.parameters(recurse=False), seen_by_depth.setdefault(1, set()))
    if total or not rows:
        rows.append(ModuleSummary("(own)", type(model).__name__, trainable, total))
    return rows


class ModelSummaryCallback(TrainerCallback):
    """Prints, when training starts, the trainable and total parameters of each submodule of
    the (unwrapped) model down to ``max_depth`` levels, with totals; the rows are kept in
    `summary`.

    Args:
        max_depth: how many levels of submodules to list (1: the model's direct children).

    Example:
        ```py title="not run"
        trainer = Trainer(model, loss_func, optimizer, callbacks=[ModelSummaryCallback(2)])
        trainer.train(dataset, num_epochs=1)
        # module  type    trainable  total
        # 0       Linear         40     40
        # ...
        ```
    """

    def __init__(self, max_depth: int = 1) -> None:
        check_positive_int("max_depth", max_depth)
        self.max_depth = max_depth
        #: The rows printed at the last training start.
        self.summary: list[ModuleSummary] = []

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.summary = summarize_model(trainer.get_model(), self.max_depth)
        trainer.print(format_model_summary(self.summary))


def format_model_summary(rows: list[ModuleSummary]) -> str:
    """The rows of `summarize_model` as an aligned text table (deeper rows indented) with a
    total line (the sum of the depth-1 rows, which count every parameter once)."""
    top = [row for row in rows if row.depth == 1]
    table = [("module", "type", "trainable", "total")]
    table += [
        (
            "  " * (row.depth - 1) + row.name,
            row.type_name,
            f"{row.num_trainable_parameters:,}",
            f"{row.num_parameters:,}",
        )
        for row in rows
    ]
    table.append(
        (
            "total",
            "",
            f"{sum(row.num_trainable_parameters for row in top):,}",
            f"{sum(row.num_parameters for row in top):,}",
        )
    )
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    return "\n".join(
        f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  "
        f"{line[2]:>{widths[2]}}  {line[3]:>{widths[3]}}"
        for line in table
    )


class CudaMemoryCallback(TrainerCallback):
    """Records the CUDA memory peak of every training epoch, in MiB:
    ``cuda_max_memory_allocated_mib`` and ``cuda_max_memory_reserved_mib`` (this process's
    device). On any other device it records nothing and costs nothing.

    The peak counters are reset at each epoch start (`torch.cuda.reset_peak_memory_stats`)
    and read at its end; neither waits for the device.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[CudaMemoryCallback()])
        ```
    """

    writes_metrics = ("cuda_max_memory_allocated_mib", "cuda_max_memory_reserved_mib")

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if trainer.device.type != "cuda":
            return
        mebibyte, device, history = 2**20, trainer.device, trainer.run_history
        allocated = torch.cuda.max_memory_allocated(device) / mebibyte
        reserved = torch.cuda.max_memory_reserved(device) / mebibyte
        history.update_metric("cuda_max_memory_allocated_mib", allocated)
        history.update_metric("cuda_max_memory_reserved_mib", reserved)
