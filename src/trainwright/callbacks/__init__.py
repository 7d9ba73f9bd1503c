"""Callbacks: the base class and handler, and every built-in callback."""

from trainwright.callbacks.base import (
    AGREED_AT,
    ALL_METRICS,
    EVENTS,
    EVENTS_OUTSIDE_AGREEMENT,
    CallbackHandler,
    CallbackLike,
    CallbackOrderError,
    CallbackSetupError,
    StopTrainingError,
    TrainerCallback,
    TrainingInterrupted,
)
from trainwright.callbacks.ema import ModelEmaCallback
from trainwright.callbacks.evaluation import StepBasedEvaluationCallback
from trainwright.callbacks.filters import DueCheck, EventFilter, due_check, every, filtered, once
from trainwright.callbacks.gradients import GradientNormMonitorCallback
from trainwright.callbacks.loggers import (
    CSVLoggerCallback,
    ExperimentTrackerCallback,
    LoggerCallback,
)
from trainwright.callbacks.monitor import MetricMonitor, MonitorCallback
from trainwright.callbacks.monitoring import (
    CudaMemoryCallback,
    LearningRateMonitorCallback,
    ModelSummaryCallback,
    TimingCallback,
)
from trainwright.callbacks.plotting import SavePlotCallback
from trainwright.callbacks.profiling import CallbackProfiler
from trainwright.callbacks.progress import (
    LogMetricsCallback,
    PrintMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    RichProgressBarCallback,
)
from trainwright.callbacks.runtime import (
    BatchLimitsCallback,
    ConvertSyncBatchNormCallback,
    LimitBatchesCallback,
    LimitEvalStepsCallback,
    MoveModulesToDeviceCallback,
)
from trainwright.callbacks.saving import (
    SaveBestModelCallback,
    SaveTrainingStateCallback,
    WSDCheckpointCallback,
)
from trainwright.callbacks.stopping import (
    EarlyStoppingCallback,
    NonFiniteLossError,
    TerminateOnNaNCallback,
)
from trainwright.callbacks.torch_profiler import TorchProfilerCallback

#: The callbacks a `Trainer` uses unless told otherwise.
DEFAULT_CALLBACKS = (
    MoveModulesToDeviceCallback,
    TerminateOnNaNCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    PrintMetricsCallback,
)


def get_default_callbacks(progress_bar: bool = True) -> tuple[CallbackLike, ...]:
    """`DEFAULT_CALLBACKS`, without `ProgressBarCallback` when ``progress_bar`` is False.

    Example:
        >>> ProgressBarCallback in get_default_callbacks(progress_bar=False)
        False
    """
    if progress_bar:
        return DEFAULT_CALLBACKS
    return tuple(callback for callback in DEFAULT_CALLBACKS if callback is not ProgressBarCallback)


__all__ = [
    "AGREED_AT",
    "ALL_METRICS",
    "DEFAULT_CALLBACKS",
    "EVENTS",
    "EVENTS_OUTSIDE_AGREEMENT",
    "BatchLimitsCallback",
    "CSVLoggerCallback",
    "CallbackHandler",
    "CallbackOrderError",
    "CallbackProfiler",
    "CallbackSetupError",
    "ConvertSyncBatchNormCallback",
    "CudaMemoryCallback",
    "DueCheck",
    "EarlyStoppingCallback",
    "EventFilter",
    "ExperimentTrackerCallback",
    "GradientNormMonitorCallback",
    "LearningRateMonitorCallback",
    "LimitBatchesCallback",
    "LimitEvalStepsCallback",
    "LogMetricsCallback",
    "LoggerCallback",
    "MetricMonitor",
    "ModelEmaCallback",
    "ModelSummaryCallback",
    "MonitorCallback",
    "MoveModulesToDeviceCallback",
    "NonFiniteLossError",
    "PrintMetricsCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "RichProgressBarCallback",
    "SaveBestModelCallback",
    "SavePlotCallback",
    "SaveTrainingStateCallback",
    "StepBasedEvaluationCallback",
    "StopTrainingError",
    "TerminateOnNaNCallback",
    "TimingCallback",
    "TorchProfilerCallback",
    "TrainerCallback",
    "TrainingInterrupted",
    "WSDCheckpointCallback",
    "due_check",
    "every",
    "filtered",
    "get_default_callbacks",
    "once",
]
