"""What the loop needs to behave the same on one process and on many.

- [`padded_tail`][trainwright.distributed.padded_tail] finds the samples Accelerate repeats at the
  end of an epoch so that every process gets the same number of equal batches, so the loss metrics
  can leave them out.
- [`StopVote`][trainwright.distributed.StopVote] lets every process stop at the same step when any
  one of them raises [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError], end an
  epoch at the same step when any one asks to, and agree on skipping an optimizer update.
"""

from __future__ import annotations

import functools
import operator
import os
import socket
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from torch.utils.data import IterableDataset

from trainwright.callbacks.base import CallbackHandler, StopTrainingError
from trainwright.data import dataloader_length
from trainwright.sharding import check_sharding_set_up, prepare_sharding, sharding_request

__all__ = [
    "END_EPOCH",
    "EVALUATE",
    "SAVE",
    "PaddedTail",
    "StopVote",
    "can_forward_alone",
    "check_all_processes_joined",
    "check_same_training_states",
    "create_accelerator",
    "padded_tail",
]


#: Requests for the end of a training step, combined across processes by `StopVote`
#: (plain ints, so that checking for them costs nothing on the per-step path).
END_EPOCH = 1
EVALUATE = 2
SAVE = 4
STEP_END_REQUESTS = (END_EPOCH, EVALUATE, SAVE)


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
    total_batch_size = getattr(dataloader, "total_batch_size", None)
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


class StopVote:
    """Agrees across processes on stopping, so that every process stops at the same step.

    A process that raises [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] on its
    own cannot simply leave the loop: the others would wait for it forever in the next gradient
    all-reduce. So in a run with several processes, a stop request is recorded instead of ending the
    run (the callback handler defers the ones raised by callbacks, the loop catches those raised by
    hooks), the
    process carries on in step with the others, and the requests are combined:

    - after every training step, by an all-reduce started without waiting and read at the end
      of the next step, so the per-step path never blocks; every process reads the same
      result at the same step, one step after the request (after the epoch's last step,
      blocking, so that a request made in it stops the run before the epoch's end is
      recorded);
    - at the end of every epoch-level event (a blocking all-reduce, a few per epoch).

    Once any process asked, [`end_of_step`][trainwright.distributed.StopVote.end_of_step] /
    [`agree`][trainwright.distributed.StopVote.agree] raise ``StopTrainingError`` on every process:
    the requesting process's own error, and on the others an error quoting it. With one process
    nothing is deferred or exchanged, and a raised request ends the run at once (one made with
    [`request`][trainwright.distributed.StopVote.request], e.g. by ``Trainer.request_stop``, at the
    end of the step or epoch-level event).

    Requests for the end of a step
    ([`request_at_step_end`][trainwright.distributed.StopVote.request_at_step_end]: end the epoch,
    evaluate, save) travel in the same all-reduce:
    [`end_of_step`][trainwright.distributed.StopVote.end_of_step] returns them on every process at
    the same step, one step after the request (at once with one process). A request to end the epoch
    made outside a training epoch's steps and its start is dropped at the next epoch-level
    agreement; the others wait for the next step's end. Skipping an update needs an answer before
    the optimizer step, so [`agree_on_skip`][trainwright.distributed.StopVote.agree_on_skip] is a
    blocking all-reduce, which the trainer only runs when a callback declares ``may_skip_updates``.

    Not covered: a ``StopTrainingError`` raised on one process only by a trainer hook (an
    overridden Trainer method) outside a training step, e.g. in ``train_epoch_end()``; it
    ends that process's run at once. Raise it from a callback, or on every process. Any other
    exception on one process ends that process; the launcher (``torchrun``, ``accelerate
    launch``) then stops the others and reports the error.

    Args:
        accelerator: the trainer's accelerator.
        callback_handler: the handler whose deferred stop requests are collected.

    Attributes:
        is_active: whether stop requests are being deferred and combined (during a
            multi-process ``train()``).
    """

    def __init__(self, accelerator: Accelerator, callback_handler: CallbackHandler) -> None:
        self._accelerator = accelerator
        self._callback_handler = callback_handler
        self.is_active = False
        self._request: StopTrainingError | None = None
        self._requested_flags = 0  # this process's step-end requests, not yet sent
        self._agreed_flags = 0  # agreed by every process, for the next step's end
        self._in_flight: _Ballot | None = None

    def start(self) -> None:
        """Starts deferring stop requests, if more than one process takes part."""
        self.is_active = self._accelerator.num_processes > 1
        self._callback_handler.defer_stop_requests = self.is_active
        self._request, self._in_flight = None, None
        self._requested_flags = self._agreed_flags = 0

    def finish(self) -> None:
        """Stops deferring: from now on a ``StopTrainingError`` propagates at once."""
        self.is_active = False
        self._callback_handler.defer_stop_requests = False
        self._request, self._in_flight = None, None
        self._requested_flags = self._agreed_flags = 0

    def request(self, error: StopTrainingError) -> None:
        """Records a stop request raised on this process (the first one is kept)."""
        if self._request is None:
            self._request = error

    def request_at_step_end(self, flag: int) -> None:
        """Records a request from this process for the end of a step: `END_EPOCH`,
        `EVALUATE` or `SAVE`."""
        self._requested_flags |= flag

    def end_of_step(self) -> int:
        """Reads the vote started at the previous step, then starts this step's vote.

        Returns:
            The step-end requests (`END_EPOCH` | `EVALUATE` | `SAVE`) to
            act on now, the same on every process; 0 (nearly always) for none.

        Raises:
            StopTrainingError: on every process, if any asked to stop by the previous step.
        """
        if not self.is_active:  # one process: requests apply at once
            if self._request is not None:
                self._raise_own_request()
            flags, self._requested_flags = self._requested_flags, 0
            return flags
        flags, self._agreed_flags = self._agreed_flags, 0
        if self._in_flight is not None:
            requesting_rank, agreed_flags = self._read_in_flight()
            self._raise_if_requested(requesting_rank)
            flags |= agreed_flags
        self._in_flight = self._start_vote(sends_flags=True)
        return flags

    def agree(self) -> None:
        """Combines every stop request made so far, waiting for every process; drops requests
        to end an epoch (this runs between epochs' steps) and keeps the other step-end
        requests for the next step's end.

        Raises:
            StopTrainingError: on every process, if any asked to stop.
        """
        if not self.is_active:
            self._requested_flags &= ~END_EPOCH
            if self._request is not None:
                self._raise_own_request()
            return
        requesting_rank = 0
        if self._in_flight is not None:
            requesting_rank, agreed_flags = self._read_in_flight()
            self._agreed_flags |= agreed_flags & ~END_EPOCH
        if not requesting_rank:
            self._in_flight = self._start_vote(sends_flags=False)
            requesting_rank, _ = self._read_in_flight()
        self._requested_flags &= ~END_EPOCH
        self._raise_if_requested(requesting_rank)

    def agree_on_skip(self, is_skip_requested: bool) -> bool:
        """Whether any process asks to skip the current optimizer update (a blocking
        all-reduce; on one process, ``is_skip_requested`` itself)."""
        if not self.is_active:
            return is_skip_requested
        return bool(_Ballot([int(is_skip_requested)], self._accelerator.device).read()[0])

    def _raise_own_request(self) -> None:
        request, self._request = self._request, None
        raise request

    def _own_request(self) -> StopTrainingError | None:
        if self._request is None:
            self._request = self._callback_handler.pop_stop_request()
        return self._request

    def _start_vote(self, sends_flags: bool) -> _Ballot:
        # Each process votes its rank + 1 if it asked to stop, else 0; the maximum names one
        # process that asked (0: none). Then one entry per step-end request: its flag if this
        # process asked, else 0, so that the maxima combine the requests of every process.
        stop_vote = 0 if self._own_request() is None else self._accelerator.process_index + 1
        flags = 0
        if sends_flags:
            flags, self._requested_flags = self._requested_flags, 0
        votes = [stop_vote, *(flags & flag for flag in STEP_END_REQUESTS)]
        return _Ballot(votes, self._accelerator.device)

    def _read_in_flight(self) -> tuple[int, int]:
        assert self._in_flight is not None
        ballot, self._in_flight = self._in_flight, None
        requesting_rank, *flags = ballot.read()
        return requesting_rank, functools.reduce(operator.or_, flags, 0)

    def _raise_if_requested(self, requesting_rank: int) -> None:
        if not requesting_rank:
            return
        # The error travels from the process that asked, so every process stops for the same
        # reason (and the same kind of stop, e.g. an interruption); this collective runs once
        # per run, only when stopping.
        own = self._request
        payload = [own]
        dist.broadcast_object_list(payload, src=requesting_rank - 1)
        if own is not None:
            raise own
        error = payload[0]
        error.args = (f"process {requesting_rank - 1} asked to stop: {error}",)
        raise error


class _Ballot:
    """One all-reduce (elementwise maximum) of a few integers over every process, read later.

    The value lives on the device, as NCCL needs, and filling it is a kernel launch, not a
    host-device sync. On a GPU the result is copied to pinned host memory behind the
    all-reduce without blocking, and reading it waits only for that copy; with gloo (CPU)
    reading waits for the all-reduce itself.
    """

    def __init__(self, values: list[int], device: torch.device) -> None:
        # Zeros, then a fill per non-zero entry (rare): kernel launches, no host-device copy.
        self._value = torch.zeros(len(values), dtype=torch.int32, device=device)
        for index, value in enumerate(values):
            if value:
                self._value[index] = value
        self._work = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, async_op=True)
        self._event: torch.cuda.Event | None = None
        if self._value.device.type == "cuda":
            self._work.wait()  # orders later work on the current stream; does not block the host
            host = torch.empty(len(values), dtype=torch.int32, pin_memory=True)
            host.copy_(self._value, non_blocking=True)
            self._value, self._event = host, torch.cuda.Event()
            self._event.record()

    def read(self) -> list[int]:
        """The maximum over every process of each value, waiting for it if needed."""
        if self._event is not None:
            self._event.synchronize()
        else:
            self._work.wait()
        return self._value.tolist()


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
    check_all_processes_joined(accelerator)
    if request is not None:
        check_sharding_set_up(request, accelerator)
    return accelerator


def _has_accelerator_device() -> bool:
    """Whether this machine has a GPU or other accelerator that torch can use."""
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return accelerator_api.is_available()
    return torch.cuda.is_available()
