"""Portable model checkpoints, written atomically.

A checkpoint is one ``.pt`` file holding plain tensors and Python values, so it loads with
``torch.load(path, weights_only=True)`` anywhere, without trainwright. Files are written to
a temporary file beside the target, flushed to disk and then renamed over it, so an
interrupted save never destroys the previous checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
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


# ------------------------------------------------------------------------------------------------
# Full training states: everything needed to continue a run exactly, as one directory
# ------------------------------------------------------------------------------------------------

#: Written by every process into a training-state directory, last: its loop position, run
#: history, callback states and the rest of what Accelerate's ``save_state`` does not cover.
TRAINER_STATE_FILE = "trainer_state_{process_index}.pt"
STAGING_SUFFIX = ".incomplete"
TRAINING_STATE_FORMAT = 1


def save_training_state(
    accelerator: Any,
    directory: str | os.PathLike,
    collect_trainer_state: Callable[[], dict[str, Any]],
) -> Path:
    """Saves a training state directory atomically: complete, or absent.

    Every process writes into ``<directory>.incomplete``: Accelerate's ``save_state`` (model,
    optimizer, gradient scaler, every RNG; sharded under FSDP / DeepSpeed) and then its own
    ``trainer_state_<rank>.pt`` from ``collect_trainer_state()``. Once all processes are
    done, the main process renames the staging directory to ``directory``, replacing an
    older state of the same name only after the new one is complete. A save killed half-way
    leaves only a staging directory, which loading ignores and the next save removes.

    Must be called on every process.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + STAGING_SUFFIX)
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    state_file = staging / TRAINER_STATE_FILE.format(process_index=accelerator.process_index)
    atomic_save(collect_trainer_state(), state_file)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_directory(staging)
        previous = directory.with_name(directory.name + ".previous")
        if directory.exists():
            os.replace(directory, previous)
        os.replace(staging, directory)
        _fsync_directory(directory.parent)
        if previous.exists():
            shutil.rmtree(previous)
    accelerator.wait_for_everyone()
    return directory


def read_trainer_state(directory: str | os.PathLike, process_index: int) -> dict[str, Any]:
    """Reads this process's ``trainer_state_<rank>.pt`` from a training-state directory,
    checking that the directory is a complete trainwright training state.

    Raises:
        FileNotFoundError: if the directory does not exist.
        ValueError: if it is incomplete, corrupted, or not a trainwright training state.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No training state directory at {str(directory)!r}.")
    if directory.name.endswith(STAGING_SUFFIX):
        raise ValueError(
            f"{str(directory)!r} is an incomplete training state (a save was interrupted); "
            "resume from a complete one, e.g. resume_from='latest'."
        )
    state_file = directory / TRAINER_STATE_FILE.format(process_index=process_index)
    if not state_file.is_file():
        raise ValueError(
            f"{str(directory)!r} is not a complete trainwright training state: "
            f"{state_file.name} is missing. It was saved by fewer processes than this run "
            "has, or it is incomplete."
        )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"The training state in {str(directory)!r} is corrupted: {state_file.name} "
            f"cannot be read ({error})."
        ) from error
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(f"{str(state_file)!r} is not a trainwright training state.")
    return state


def find_latest_training_state(checkpoint_dir: str | os.PathLike) -> Path:
    """The most recently completed training state in ``checkpoint_dir`` (by the number of
    optimizer updates in its name, then by modification time).

    Raises:
        FileNotFoundError: if ``checkpoint_dir`` holds no complete training state.
    """
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [
        path
        for path in (checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else ())
        if path.is_dir()
        and not path.name.endswith((STAGING_SUFFIX, ".previous"))
        and (path / TRAINER_STATE_FILE.format(process_index=0)).is_file()
    ]
    if not candidates:
        raise FileNotFoundError(
            f"No complete training state in {str(checkpoint_dir)!r} to resume from."
        )
    return max(candidates, key=lambda path: (_update_count_in_name(path), path.stat().st_mtime))


def is_training_state(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is itself a (complete) training state."""
    return (Path(directory) / TRAINER_STATE_FILE.format(process_index=0)).is_file()


def _update_count_in_name(path: Path) -> int:
    digits = "".join(character for character in path.name if character.isdigit())
    return int(digits) if digits else -1


def _fsync_directory(directory: Path) -> None:
    # Makes the renames inside ``directory`` durable; not every platform allows it.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
