"""`TorchProfilerCallback`: `torch.profiler` over a few training steps.

The profiler (PyTorch's own, `torch.profiler.profile` with `torch.profiler.schedule`) records
operator timings on the CPU and, when one is used, the GPU. Traces are written with
`torch.profiler.tensorboard_trace_handler` (open them with TensorBoard's profiler plugin, or
the `.pt.trace.json` files at https://ui.perfetto.dev); the key-averages table is printed when
the run ends. Once the schedule's active steps are recorded, the profiler is stopped: the
rest of the run pays one attribute check per step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainwright.callbacks.base import TrainerCallback
from trainwright.validation import check_bool, check_path, check_positive_int, check_type

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["TorchProfilerCallback"]


class TorchProfilerCallback(TrainerCallback):
    """Profiles training steps with `torch.profiler` and writes traces for TensorBoard or
    Perfetto.

    The first `wait` steps of the run are skipped, the next `warmup` steps are profiled but
    discarded (the profiler's own start-up cost), the next `active` steps are recorded; then
    the trace is written to `trace_dir` (on every process, one file each) and the profiler
    stops. At the end of the run, the main process prints the key-averages table (the
    `row_limit` operators with the most `sort_by` time); `key_averages` holds it.

    Args:
        trace_dir: where traces are written (one `<host>_<pid>.<time>.pt.trace.json` per
            process); `None` writes none and only prints the table.
        wait: training steps to skip first.
        warmup: steps profiled and discarded.
        active: steps recorded.
        record_shapes: record the input shapes of operators.
        profile_memory: record tensor memory allocation.
        with_stack: record source locations (larger traces).
        sort_by: the table's sort key, e.g. `"self_cpu_time_total"` or
            `"self_cuda_time_total"`.
        row_limit: rows of the printed table; 0 prints none.

    Example:
        ```python
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        from trainwright import Trainer
        from trainwright.callbacks import TorchProfilerCallback

        model = nn.Linear(4, 2)
        profiler = TorchProfilerCallback(trace_dir="profiles", wait=1, warmup=1, active=2)
        trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1),
                          callbacks=[profiler])
        trainer.train(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))),
                      num_epochs=1, per_device_batch_size=8)
        ```
    """

    def __init__(
        self,
        trace_dir: str | os.PathLike | None = "profiler_traces",
        *,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
        sort_by: str = "self_cpu_time_total",
        row_limit: int = 15,
    ) -> None:
        for name, value in (("wait", wait), ("warmup", warmup), ("row_limit", row_limit)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
        check_positive_int("active", active)
        check_path("trace_dir", trace_dir, optional=True)
        for name, value in (
            ("record_shapes", record_shapes),
            ("profile_memory", profile_memory),
            ("with_stack", with_stack),
        ):
            check_bool(name, value)
        check_type("sort_by", sort_by, str, "the name of a profiler column")
        self.trace_dir = None if trace_dir is None else Path(trace_dir)
        self.wait, self.warmup, self.active = wait, warmup, active
        self.record_shapes, self.profile_memory, self.with_stack = (
            record_shapes,
            profile_memory,
            with_stack,
        )
        self.sort_by, self.row_limit = sort_by, row_limit
        #: The profiled steps' key averages (`torch.autograd.profiler_util.EventList`),
        #: once recorded.
        self.key_averages: Any = None
        self._profiler: torch.profiler.profile | None = None

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.key_averages = None
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=self.wait, warmup=self.warmup, active=self.active, repeat=1
            ),
            on_trace_ready=self._trace_ready,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self._profiler.start()

    def _trace_ready(self, profiler: torch.profiler.profile) -> None:
        if self.trace_dir is not None:
            torch.profiler.tensorboard_trace_handler(str(self.trace_dir))(profiler)
        self.key_averages = profiler.key_averages()

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self._profiler is None:  # done: the rest of the run pays only this check
            return
        self._profiler.step()
        if self.key_averages is not None:
            self._stop()

    def _stop(self) -> None:
        profiler, self._profiler = self._profiler, None
        if profiler is not None:
            profiler.stop()

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._stop()
        if self.key_averages is not None and self.row_limit:
            trainer.print_once(
                self.key_averages.table(sort_by=self.sort_by, row_limit=self.row_limit)
            )

    def on_exception(self, trainer: Trainer, exception: BaseException, **kwargs: Any) -> None:
        self._stop()
