"""trainwright: a lightweight, transparent training loop for PyTorch.

Importing it has no side effects: no seeding, no logging configuration.
"""

import warnings as _warnings

from tqdm.std import TqdmWarning as _TqdmWarning

with _warnings.catch_warnings():
    # Accelerate imports tqdm.auto, which warns (TqdmWarning) in a Jupyter notebook without
    # ipywidgets and then picks tqdm's text bar, which draws fine there. Import it first,
    # quietly (`pip install "trainwright[notebook]"` gives widget bars).
    _warnings.simplefilter("ignore", _TqdmWarning)
    from tqdm import autonotebook as _tqdm_autonotebook  # noqa: F401
from accelerate import notebook_launcher

from trainwright.callbacks import StopTrainingError, TrainerCallback
from trainwright.run_config import RunConfig, TrainerRunConfig
from trainwright.tracking import InMemoryRunHistory, RunHistory
from trainwright.trainer import Trainer, TrainerPlaceholderValues, TrainerWithTimmScheduler

__all__ = [
    "InMemoryRunHistory",
    "RunConfig",
    "RunHistory",
    "StopTrainingError",
    "Trainer",
    "TrainerCallback",
    "TrainerPlaceholderValues",
    "TrainerRunConfig",
    "TrainerWithTimmScheduler",
    "notebook_launcher",
]

__version__ = "0.1.0"
