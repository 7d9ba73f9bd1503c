"""Portable model checkpoints, written atomically.

A checkpoint is one ``.pt`` file holding plain tensors and Python values, so it loads with
``torch.load(path, weights_only=True)`` anywhere, without trainwright. Files are written to
a temporary file beside the target, flushed to disk and then renamed over it, so an
interrupted save never destroys the previous checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["MODEL_STATE_KEY", "OPTIMIZER_STATE_KEY", "SCHEDULER_STATE_KEY", "atomic_save"]

MODEL_STATE_KEY = "model_state_dict"
OPTIMIZER_STATE_KEY = "optimizer_state_dict"
SCHEDULER_STATE_KEY = "scheduler_state_dict"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Saves ``obj`` with :func:`torch.save` so that ``path`` is either the old file or the
    complete new one, never a partial write.

    Args:
        obj: anything :func:`torch.save` accepts.
        path: the destination file; its directory is created if needed.

    Returns:
        The destination as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`atomic_save` safely (``weights_only=True``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a trainwright model checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {str(path)!r}.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or MODEL_STATE_KEY not in checkpoint:
        raise ValueError(
            f"{str(path)!r} is not a trainwright checkpoint: expected a dictionary with a "
            f"{MODEL_STATE_KEY!r} entry, as written by Trainer.save_checkpoint()."
        )
    return checkpoint
