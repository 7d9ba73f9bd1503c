"""What the loop needs to behave the same on one process and on many.

- [`padded_tail`][trainwright.distributed.padded_tail] finds the samples Accelerate repeats at the
  end of an epoch so that every process gets the same number of equal batches, so the loss metrics
  can leave them out.
- a pause at the interpreter's exit that lets gloo's threads finish their last collectives
  ([`GLOO_EXIT_PAUSE`][trainwright.distributed.GLOO_EXIT_PAUSE], registered by
  `create_accelerator`).
- the checks that every launched process joined and that they all resume from the same training
  state, and the creation of the trainer's `Accelerator`.

The agreement of the processes on stopping, ending an epoch, evaluating, saving and skipping an
update is run control's: see [`trainwright.run_control`][trainwright.run_control].
"""

from __future__ import annotations

import atexit
import functools
import os
import socket
import time
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from torch.utils.data import IterableDataset

from trainwright.data import dataloader_length
from trainwright.sharding import check_sharding_set_up, prepare_sharding, sharding_request

__all__ = [
    "GLOO_EXIT_PAUSE",
    "PaddedTail",
    "can_forward_alone",
    "check_all_processes_joined",
    "check_same_training_states",
    "create_accelerator",
    "padded_tail",
]


@dataclass(frozen=True)
class PaddedTail:
    """This process's last batch of an epoch, when it holds repeated samples.

    Attributes:
        step: the index of the batch in the epoch.
        num_genuine_samples: how many of its samples (its first ones) are not repeats; 0 when
            the whole batch only evens out the number of batches across processes.
    """

    step: int
    num_genuine_samples: int


def padded_tail(dataloader: Any, accelerator: Accelerator) -> PaddedTail | None:
    """Where this process's share of ``dataloader`` ends in repeated samples, if it does.

    With several processes, Accelerate's prepared dataloaders (``even_batches=True``, the
    default) give every process the same number of full batches by completing the last ones
    with samples from the start of the data. Batch ``i`` of process ``r`` holds the samples
    at positions ``(i * num_processes + r) * b`` onwards of the epoch's order (``b`` the
    per-process batch size), with or without ``split_batches``, so the samples past the end of
    the dataset are the repeats. Repeats can only occur in the last batch.

    An ``IterableDataset`` (with or without ``__len__``) is sharded among the processes by
    Accelerate itself (``IterableDatasetShard``, or batches dispatched from the main process),
    with its own completion of the last batches, so this correction does not apply to it:
    its repeats, if any, count in the loss metrics.

    Returns:
        ``None`` on a single process, when nothing is repeated on this process, or when the
        layout is unknown (an iterable dataset, a dataloader without a length, a custom
        batch sampler); else the tail.
    """
    num_processes = accelerator.num_processes
    dataset = getattr(dataloader, "dataset", None)
    try:
        total_batch_size = getattr(dataloader, "total_batch_size", None)
    except TypeError:  # Accelerate's, for a batch sampler without a batch size (None * P)
        total_batch_size = None
    if num_processes == 1 or not isinstance(dataset, Sized) or not total_batch_size:
        return None
    if isinstance(dataset, IterableDataset):
        return None
    num_batches = dataloader_length(dataloader)
    if not num_batches:  # None: no length; 0: no batches
        return None
    batch_size = total_batch_size // num_processes
    last_step = num_batches - 1
    first_position = (last_step * num_processes + accelerator.process_index) * batch_size
    num_genuine_samples = min(max(len(dataset) - first_position, 0), batch_size)
    if num_genuine_samples == batch_size:
        return None
    return PaddedTail(last_step, num_genuine_samples)


def can_forward_alone(accelerator: Accelerator) -> bool:
    """Whether one process may run the model without the others: not when its weights are
    sharded across processes (FSDP, DeepSpeed, Megatron-LM), where every forward pass is a
    collective operation."""
    sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    return accelerator.distributed_type not in sharded


def check_all_processes_joined(accelerator: Accelerator) -> None:
    """Fails fast when a launcher started several processes but Accelerate set up only one.

    On a machine without a GPU, Accelerate joins the processes of ``torchrun --nproc_per_node
    N`` only when told to use the CPU (the Trainer tells it, unless ``accelerator_kwargs``
    says ``cpu=False``); otherwise each process would silently train on its own, on the whole
    dataset.

    Raises:
        RuntimeError: if ``WORLD_SIZE`` names more processes than Accelerate joined.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"This process was launched as one of WORLD_SIZE={world_size} processes, but "
            "Accelerate set up a single process, so each would train alone. Without a GPU, "
            'pass accelerator_kwargs={"cpu": True} to the Trainer (or leave "cpu" out of '
            "them), or set ACCELERATE_USE_CPU=1 for the launch."
        )


def check_same_training_states(
    accelerator: Accelerator,
    resume_from: str | os.PathLike,
    candidates: list[Path],
    error: Exception | None,
) -> None:
    """Makes sure that every process is about to try the same training states to resume from.

    Each process finds the states to resume from (newest first) on its own file system. On
    machines that each save to their own disk (no shared storage), they can find different
    states, or none: one would resume while another starts afresh, and the run would abort
    in collective operations that do not match, or hang. So the processes share what each
    found (one gather of a few strings, once per ``train()``, before any state is verified
    or read), and every process raises the same error when they differ or when one of them
    could not look.

    Args:
        accelerator: the trainer's accelerator.
        resume_from: what ``train()`` was given, for the messages.
        candidates: the states this process found, newest first.
        error: what this process raised while looking, if anything.

    Raises:
        RuntimeError: on every process, naming what each process found; a process whose
            own search failed raises its own error.
    """
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    view = {
        "states": [str(path) for path in candidates],
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "host": socket.gethostname(),
    }
    views = gather_object([view])
    failures = [(rank, v) for rank, v in enumerate(views) if v["error"] is not None]
    if failures:
        if error is not None:
            raise error
        rank, failed = failures[0]
        raise RuntimeError(
            f"Cannot resume (resume_from={str(resume_from)!r}): process {rank} (host "
            f"{failed['host']}) could not look for its training state: {failed['error']}"
        )
    # The same state has the same name on every machine (its path may differ, e.g. under
    # another mount point).
    if len({tuple(Path(state).name for state in v["states"]) for v in views}) > 1:
        found = "; ".join(
            f"process {rank} (host {v['host']}): {', '.join(v['states']) or 'none'}"
            for rank, v in enumerate(views)
        )
        raise RuntimeError(
            f"The processes found different training states to resume from (resume_from="
            f"{str(resume_from)!r}): {found}. Each process looks on its own file system; "
            "with a save directory on each machine's own disk, the machines see different "
            "saves, and one would resume while another started afresh. Save to storage "
            "every machine shares, or copy the whole state directory onto every machine, "
            "and rerun."
        )


def create_accelerator(
    mixed_precision: str | None, accelerator_kwargs: dict[str, Any]
) -> Accelerator:
    """The trainer's `Accelerator`, set up for what the launch and the arguments ask.

    Processes started by a launcher (``torchrun``, ``accelerate launch``) on a machine without
    a GPU or other accelerator are joined on the CPU (gloo): Accelerate does so only when told
    to use the CPU, so the Trainer tells it, unless ``accelerator_kwargs`` says ``cpu=False``.
    With several processes, the interpreter's exit then waits a moment for gloo's threads
    (`GLOO_EXIT_PAUSE`).
    FSDP and DeepSpeed, asked for by ``accelerator_kwargs`` or the launch, run as asked or are
    refused (see `trainwright.sharding`): never silently replaced by plain DDP.

    Args:
        mixed_precision: the Trainer's ``mixed_precision``.
        accelerator_kwargs: further keyword arguments for `accelerate.Accelerator`.

    Raises:
        RuntimeError: if the launched processes were not joined, or the sharding asked for
            cannot run here.
    """
    accelerator_kwargs = dict(accelerator_kwargs)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not _has_accelerator_device():
        accelerator_kwargs.setdefault("cpu", True)
    request = sharding_request(accelerator_kwargs)
    if request is not None:
        prepare_sharding(request, accelerator_kwargs, world_size)
    accelerator = Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs)
    if world_size > 1:
        _pause_for_gloo_at_exit()
    check_all_processes_joined(accelerator)
    if request is not None:
        check_sharding_set_up(request, accelerator)
    return accelerator


GLOO_EXIT_PAUSE = 0.02
"""Seconds the interpreter's exit waits, without holding the GIL, while a gloo process group
is still up, so that gloo's threads can finish releasing their last collectives.

Why: when a blocking collective returns, gloo's thread (torch 2.13) often frees its work
itself, which releases the tensors' Python objects and so needs the GIL. The thread may wait
up to Python's switch interval (5 ms) for it. If the interpreter starts shutting down in that
window (a script ending right after ``train()``, ``evaluate()`` or its own collective),
Python makes the waiting thread exit, and the process aborts with *terminate called without
an active exception*. The pause, from an ``atexit`` handler (which runs before the shutdown
starts), hands those threads the GIL. Measured on 2 CPU processes with a 2-step FSDP2 run
ending at once: 4 of 21 launches aborted without the pause, none of 40 with it.
"""


@functools.cache  # registered once per process
def _pause_for_gloo_at_exit() -> None:
    atexit.register(_let_gloo_threads_finish)


def _let_gloo_threads_finish() -> None:
    if dist.is_available() and dist.is_initialized() and "gloo" in str(dist.get_backend()):
        time.sleep(GLOO_EXIT_PAUSE)


def _has_accelerator_device() -> bool:
    """Whether this machine has a GPU or other accelerator that torch can use."""
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return accelerator_api.is_available()
    return torch.cuda.is_available()
