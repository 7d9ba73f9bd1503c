"""trainwright: a lightweight, transparent training loop for PyTorch.

Importing it has no side effects: no seeding, no logging configuration.
"""

from trainwright.callbacks import StopTrainingError, TrainerCallback
from trainwright.run_config import RunConfig
from trainwright.tracking import InMemoryRunHistory, RunHistory
from trainwright.trainer import Trainer, TrainerPlaceholderValues

__all__ = [
    "InMemoryRunHistory",
    "RunConfig",
    "RunHistory",
    "StopTrainingError",
    "Trainer",
    "TrainerCallback",
    "TrainerPlaceholderValues",
]

__version__ = "0.1.0"
