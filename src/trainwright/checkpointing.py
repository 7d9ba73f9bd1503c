"""Portable model checkpoints, written atomically.

A checkpoint is one ``.pt`` file holding plain tensors and Python values, so it loads with
``torch.load(path, weights_only=True)`` anywhere, without trainwright. Files are written to
a temporary file beside the target, flushed to disk and then renamed over it, so an
interrupted save never destroys the previous checkpoint.

Training states live here too, on disk: a directory per state (``state-<updates>``) written
atomically with a SHA-256 manifest, verified before it is read, pruned and cleaned up after a
killed save. What goes into a state and how a run resumes from it is the Trainer's
(``save_training_state``, ``train(resume_from=...)`` in ``trainwright.trainer``); the run plan
that a resumed run must match is in ``trainwright.run_plan``, the loop in
``trainwright.trainer`` and the agreement of processes in ``trainwright.run_control``.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

__all__ = [
    "MODEL_STATE_KEY",
    "OPTIMIZER_STATE_KEY",
    "SCHEDULER_STATE_KEY",
    "InvalidTrainingStateError",
    "atomic_save",
    "verify_training_state",
]

MODEL_STATE_KEY = "model_state_dict"
OPTIMIZER_STATE_KEY = "optimizer_state_dict"
SCHEDULER_STATE_KEY = "scheduler_state_dict"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Saves ``obj`` with `torch.save` so that ``path`` is either the old file or the
    complete new one, never a partial write.

    Args:
        obj: anything `torch.save` accepts.
        path: the destination file; its directory is created if needed.

    Returns:
        The destination as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_files(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except Exception as error:
        Path(temporary).unlink(missing_ok=True)
        _raise_explained(error, path.parent, repr(path.name))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporary_files(path: str | os.PathLike) -> None:
    """Deletes the temporary files that killed `atomic_save` calls for ``path`` left beside
    it (``.<name>.<random>.tmp``); one that cannot be deleted is a warning."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            _warn_leftover(stale, error)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint written by `atomic_save` safely (``weights_only=True``).

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
#: Written last into every training state, by the main process: the size and SHA-256 of every
#: other file of the state, checked before the state is used.
MANIFEST_FILE = "manifest.json"
STAGING_SUFFIX = ".incomplete"
#: An older state of the same name, moved aside while a re-save puts the new one in place.
PREVIOUS_SUFFIX = ".previous"
#: A state being deleted by pruning: renamed first, so no partial state keeps a valid name.
REMOVING_SUFFIX = ".removing"
TRAINING_STATE_FORMAT = 1
#: The names the library gives training states (``SaveTrainingStateCallback``'s
#: ``state-<updates>``, ``WSDCheckpointCallback``'s ``pre-decay-<updates>``).
TRAINING_STATE_NAME = re.compile(r"(?:state|pre-decay)-(\d+)")
#: The names pytorch-accelerated's SaveTrainingStateCallback gives its states.
PYTORCH_ACCELERATED_STATE_NAME = re.compile(r"final|(?:epoch|step)_\d+")
_LEFTOVER_SUFFIXES = (STAGING_SUFFIX, PREVIOUS_SUFFIX, REMOVING_SUFFIX)
# Free space below which a failed write is put down to a full disk: torch reports one as
# "unexpected pos" or "iostream error", without the error number.
_FULL_DISK_BYTES = 1 << 20


class InvalidTrainingStateError(ValueError):
    """A training state that cannot be used: incomplete, damaged or not a trainwright state.
    The message names the file that is wrong."""


def save_training_state(
    accelerator: Any,
    directory: str | os.PathLike,
    collect_trainer_state: Callable[[], dict[str, Any]],
) -> Path:
    """Saves a training state directory atomically: complete, or absent.

    Every process writes into ``<directory>.incomplete``: Accelerate's ``save_state`` (model,
    optimizer, gradient scaler, every RNG; sharded under FSDP / DeepSpeed) and then its own
    ``trainer_state_<rank>.pt`` from ``collect_trainer_state()``. Once all processes are
    done, the main process writes ``manifest.json`` (the size and SHA-256 of every file) and
    renames the staging directory to ``directory``. An older state of the same name is
    moved to ``<directory>.previous`` first and deleted only once the new one is in place;
    a save killed between the two renames is recovered from it by the next save or resume
    (see `clean_up_training_states`). A save killed earlier leaves only a staging
    directory, which loading ignores and the next save removes. On a machine whose disk is
    not the main process's (several machines without shared storage), the machine's first
    process then renames the part of the state its processes wrote in the same way.

    Must be called on every process.

    Raises:
        OSError: naming "no space left on device" when the disk is full; the previous state
            is kept and the staging directory removed.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + STAGING_SUFFIX)
    if accelerator.is_main_process:
        directory.parent.mkdir(parents=True, exist_ok=True)
        clean_up_training_states(directory.parent, name=directory.name)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        state_file = staging / TRAINER_STATE_FILE.format(process_index=accelerator.process_index)
        atomic_save(collect_trainer_state(), state_file)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_manifest(staging)
    except Exception as error:
        if accelerator.is_main_process:
            _remove_quietly(staging)
        _raise_explained(error, directory.parent, "the training state")
    if accelerator.is_main_process:
        _publish(staging, directory)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and staging.exists():
        # This machine's disk is not the main process's (no shared storage): its processes'
        # part of the state is still staged here, so it is finished here too.
        _publish(staging, directory)
    return directory


def _publish(staging: Path, directory: Path) -> None:
    """Renames a complete staging directory to its final name, replacing an older state."""
    _fsync_directory(staging)
    previous = directory.with_name(directory.name + PREVIOUS_SUFFIX)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(staging, directory)
    _fsync_directory(directory.parent)
    if previous.exists():
        _remove_quietly(previous)


def _write_manifest(directory: Path) -> None:
    # Every file is flushed to disk as it is hashed, so that a power cut after the rename
    # cannot leave a state whose files are not all there (Accelerate does not fsync them).
    files = {
        path.relative_to(directory).as_posix(): {
            "size": path.stat().st_size,
            "sha256": _sha256(path, flush_to_disk=True),
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    manifest = {"format": TRAINING_STATE_FORMAT, "files": files}
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())


def _sha256(path: Path, flush_to_disk: bool = False) -> str:
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        if flush_to_disk:
            os.fsync(file.fileno())
        return digest


def verify_training_state(directory: str | os.PathLike) -> None:
    """Checks that every file listed in a training state's ``manifest.json`` is there, with
    its saved size and SHA-256; reads every file once.

    Raises:
        InvalidTrainingStateError: naming the file that is missing, of the wrong size or
            damaged, or saying that the manifest itself is missing or unreadable.
    """
    directory = Path(directory)
    if directory.name.endswith(STAGING_SUFFIX):
        raise InvalidTrainingStateError(
            f"{str(directory)!r} is an incomplete training state (a save was interrupted); "
            "resume from a complete one, e.g. resume_from='latest'."
        )
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InvalidTrainingStateError(
            f"{MANIFEST_FILE} is missing from {str(directory)!r}: the save did not finish, "
            "or the state was written by an older trainwright, before states had manifests "
            "(such a state cannot be verified)."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = {
            name: (int(entry["size"]), entry["sha256"]) for name, entry in manifest["files"].items()
        }
    except Exception as error:
        raise InvalidTrainingStateError(
            f"{MANIFEST_FILE} in {str(directory)!r} is damaged ({error!r})."
        ) from error
    if manifest.get("format") != TRAINING_STATE_FORMAT:
        raise InvalidTrainingStateError(
            f"{str(directory)!r} has format {manifest.get('format')!r}; this trainwright reads "
            f"format {TRAINING_STATE_FORMAT}."
        )
    for name, (expected_size, expected_sha256) in files.items():
        path = directory / name
        if not path.is_file():
            raise InvalidTrainingStateError(f"{name} is missing from {str(directory)!r}.")
        size = path.stat().st_size
        if size != expected_size:
            raise InvalidTrainingStateError(
                f"{name} in {str(directory)!r} is damaged: {size} bytes, saved with "
                f"{expected_size}."
            )
        if _sha256(path) != expected_sha256:
            raise InvalidTrainingStateError(
                f"{name} in {str(directory)!r} is damaged: its SHA-256 checksum differs "
                "from the one saved."
            )


def read_trainer_state(directory: str | os.PathLike, process_index: int) -> dict[str, Any]:
    """Reads this process's ``trainer_state_<rank>.pt`` from a training-state directory,
    checking that the directory is a complete trainwright training state. The files'
    checksums are checked separately, by `verify_training_state`.

    Raises:
        FileNotFoundError: if the directory does not exist.
        InvalidTrainingStateError: if it is incomplete, corrupted, or not a trainwright
            training state.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No training state directory at {str(directory)!r}.")
    if directory.name.endswith(STAGING_SUFFIX):
        raise InvalidTrainingStateError(
            f"{str(directory)!r} is an incomplete training state (a save was interrupted); "
            "resume from a complete one, e.g. resume_from='latest'."
        )
    state_file = directory / TRAINER_STATE_FILE.format(process_index=process_index)
    if not state_file.is_file():
        raise InvalidTrainingStateError(
            f"{str(directory)!r} is not a complete trainwright training state: "
            f"{state_file.name} is missing. It was saved by fewer processes than this run "
            "has, or it is incomplete."
        )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InvalidTrainingStateError(
            f"The training state in {str(directory)!r} is corrupted: {state_file.name} "
            f"cannot be read ({error})."
        ) from error
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise InvalidTrainingStateError(f"{str(state_file)!r} is not a trainwright training state.")
    return state


def training_states(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The training states in ``checkpoint_dir``, newest first: the directories with one of
    the library's names (``state-<updates>``, ``pre-decay-<updates>``), ordered by the
    number of optimizer updates in the name, then by modification time; or with one of
    pytorch-accelerated's (``final``, then ``epoch_<N>`` and ``step_<N>`` by modification
    time, as their numbers count different things). Other names, and leftovers of
    interrupted saves (``.incomplete``, ``.previous``, ``.removing``), are not states.
    Nothing is verified here (see `verify_training_state`)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    named = []
    for path in checkpoint_dir.iterdir():
        if not path.is_dir():
            continue
        if match := TRAINING_STATE_NAME.fullmatch(path.name):
            named.append(((False, int(match.group(1))), path))
        elif PYTORCH_ACCELERATED_STATE_NAME.fullmatch(path.name):
            named.append(((path.name == "final", -1), path))
    named.sort(key=lambda item: (*item[0], item[1].stat().st_mtime), reverse=True)
    return [path for _, path in named]


def find_latest_training_state(checkpoint_dir: str | os.PathLike) -> Path:
    """The newest training state in ``checkpoint_dir`` (see `training_states`), unverified.

    Raises:
        FileNotFoundError: if ``checkpoint_dir`` holds no training state.
    """
    states = training_states(checkpoint_dir)
    if not states:
        raise FileNotFoundError(
            f"No complete training state in {str(checkpoint_dir)!r} to resume from (states "
            "are directories named state-<updates>)."
        )
    return states[0]


def is_training_state(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is itself a training state (complete or not), rather than a
    directory of states: it holds a manifest, a trainer state or an RNG file."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    return any(
        any(directory.glob(pattern))
        for pattern in (MANIFEST_FILE, "trainer_state_*.pt", "random_states_*.pkl")
    )


def missing_state_parts(directory: str | os.PathLike, num_processes: int) -> list[str]:
    """The ``trainer_state_<rank>.pt`` files of the ``num_processes`` processes that this
    process does not see in ``directory`` (e.g. written on another machine's disk)."""
    names = (TRAINER_STATE_FILE.format(process_index=rank) for rank in range(num_processes))
    return [name for name in names if not (Path(directory) / name).is_file()]


def clean_up_training_states(checkpoint_dir: str | os.PathLike, name: str | None = None) -> None:
    """Removes what interrupted saves and prunes left in ``checkpoint_dir`` (only those of the
    state called ``name``, when given), on the main process, before a save or a resume:

    - ``<state>.incomplete``: a save killed before it finished; deleted;
    - ``<state>.previous``: an older state moved aside by a re-save of the same name. Put
      back as ``<state>`` when the save was killed before the new state was in place;
      deleted otherwise;
    - ``<state>.removing``: a state pruning had started to delete; deleted.

    A leftover that cannot be removed (e.g. a read-only one) is a warning, never an error.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return
    for leftover in sorted(checkpoint_dir.iterdir()):
        base, suffix = _split_leftover(leftover.name)
        if suffix is None or (name is not None and base != name) or not leftover.is_dir():
            continue
        state = leftover.with_name(base)
        if suffix == PREVIOUS_SUFFIX and not state.exists():
            try:
                os.replace(leftover, state)  # the re-save was killed between its renames
            except OSError as error:
                _warn_leftover(leftover, error)
            continue
        _remove_quietly(leftover)


def remove_state(state: Path) -> None:
    """Deletes a training state: renamed aside first (so no partial directory keeps a state's
    name), then removed. A failure is a warning naming the state, never an error."""
    aside = state.with_name(state.name + REMOVING_SUFFIX)
    try:
        os.replace(state, aside)
    except OSError as error:
        _warn_leftover(state, error)
        return
    _remove_quietly(aside)


def _split_leftover(name: str) -> tuple[str, str | None]:
    for suffix in _LEFTOVER_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def _remove_quietly(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        _warn_leftover(path, error)


def _warn_leftover(path: Path, error: OSError) -> None:
    warnings.warn(
        f"Could not remove {str(path)!r} ({error}); it is left in place and ignored. Delete it "
        "by hand to free its space.",
        RuntimeWarning,
        stacklevel=3,
    )


def check_writable_directory(directory: str | os.PathLike, owner: str) -> None:
    """Creates ``directory`` if needed and checks that a file can be written in it, so an
    unusable save location is found before training, not at the first save.

    Args:
        directory: the directory to check.
        owner: who will write there, for the error message (e.g. ``"SaveTrainingStateCallback
            save_dir"``).

    Raises:
        OSError: naming ``owner`` and the directory, when it cannot be created or written.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise type(error)(
            error.errno,
            f"The {owner} {str(directory)!r} cannot be written ({error.strerror or error}). "
            "Choose a writable directory; nothing was trained.",
        ) from error


def _raise_explained(error: Exception, directory: Path, what: str) -> NoReturn:
    """Re-raises ``error`` from a failed save, naming a full disk, which torch reports only
    as "unexpected pos" or "iostream error"."""
    if not _is_out_of_space(error, directory):
        raise error
    raise OSError(
        errno.ENOSPC,
        f"No space left on device while saving {what} in {str(directory)!r} ({error}). The "
        "previous state is kept; free some space or save elsewhere.",
    ) from error


def _is_out_of_space(error: BaseException, directory: Path) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(directory).free < _FULL_DISK_BYTES
    except OSError:
        return False


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
