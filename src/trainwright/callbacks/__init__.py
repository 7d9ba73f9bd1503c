"""Callbacks: the base class and handler, and every built-in callback."""

from trainwright.callbacks.base import (
    EVENTS,
    CallbackHandler,
    StopTrainingError,
    TrainerCallback,
    TrainingInterrupted,
)
from trainwright.callbacks.ema import ModelEmaCallback
from trainwright.callbacks.evaluation import StepBasedEvaluationCallback
from trainwright.callbacks.monitor import MetricMonitor, MonitorCallback
from trainwright.callbacks.progress import (
    LogMetricsCallback,
    PrintMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
)
from trainwright.callbacks.runtime import (
    BatchLimitsCallback,
    LimitBatchesCallback,
    LimitEvalStepsCallback,
    MoveModulesToDeviceCallback,
)
from trainwright.callbacks.saving import SaveBestModelCallback, SaveTrainingStateCallback
from trainwright.callbacks.stopping import EarlyStoppingCallback, TerminateOnNaNCallback

#: The callbacks a :class:`~trainwright.trainer.Trainer` uses unless told otherwise.
DEFAULT_CALLBACKS = (
    MoveModulesToDeviceCallback,
    TerminateOnNaNCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    PrintMetricsCallback,
)

__all__ = [
    "DEFAULT_CALLBACKS",
    "EVENTS",
    "BatchLimitsCallback",
    "CallbackHandler",
    "EarlyStoppingCallback",
    "LimitBatchesCallback",
    "LimitEvalStepsCallback",
    "LogMetricsCallback",
    "MetricMonitor",
    "ModelEmaCallback",
    "MonitorCallback",
    "MoveModulesToDeviceCallback",
    "PrintMetricsCallback",
    "PrintProgressCallback",
    "ProgressBarCallback",
    "SaveBestModelCallback",
    "SaveTrainingStateCallback",
    "StepBasedEvaluationCallback",
    "StopTrainingError",
    "TerminateOnNaNCallback",
    "TrainerCallback",
    "TrainingInterrupted",
]
