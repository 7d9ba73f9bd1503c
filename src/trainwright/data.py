"""Default DataLoader settings.

Worker seeding is PyTorch's own: every DataLoader iterator draws a base seed from torch's
global RNG (or the loader's ``generator``), and each worker seeds Python's ``random``, NumPy
and torch from it. So ``torch.manual_seed`` (or ``accelerate.utils.set_seed``) before
``train()`` fixes the data order and every worker's randomness, with any ``num_workers``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["dataloader_length", "default_dataloader_kwargs"]


def _cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(num_local_processes: int = 1) -> int:
    """Worker processes per dataloader: the CPUs left per local process after the process
    itself, at most 4, and 0 (load in the main process) when fewer than 2 CPUs remain."""
    cpus_per_process = _cpus_available() // max(num_local_processes, 1)
    workers = min(cpus_per_process - 1, 4)
    return workers if workers >= 2 else 0


def default_dataloader_kwargs(
    *, shuffle: bool, device: torch.device, num_local_processes: int = 1
) -> dict[str, Any]:
    """The keyword arguments the trainer gives ``torch.utils.data.DataLoader`` by default.

    - ``shuffle``: ``True`` for training, ``False`` for evaluation.
    - ``num_workers``: from the CPUs available per local process (see
      :func:`default_num_workers`), never every CPU per device.
    - ``pin_memory``: only when training on CUDA.
    - ``persistent_workers``: when workers are used, so they are not restarted every epoch.

    Any of these can be overridden with ``train_dataloader_kwargs`` /
    ``eval_dataloader_kwargs``.
    """
    num_workers = default_num_workers(num_local_processes)
    return {
        "shuffle": shuffle,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": num_workers > 0,
    }


def dataloader_length(dataloader: Any) -> int | None:
    """``len(dataloader)``, or ``None`` when it has no length.

    A ``DataLoader`` over an ``IterableDataset`` without ``__len__`` (and Accelerate's
    prepared loaders over one) has a ``__len__`` method that raises ``TypeError``.
    """
    try:
        return len(dataloader)
    except TypeError:
        return None
