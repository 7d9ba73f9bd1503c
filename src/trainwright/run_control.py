"""Run control: the requests that change a run's course, agreed on by every process.

What lives here: [`RunControl`][trainwright.run_control.RunControl], the one object that records
what callbacks and hooks ask of a training run (stop, end the epoch, evaluate, save, skip an
update: the Trainer's ``request_*`` methods delegate to it, and the callback handler hands it the
``StopTrainingError`` raised by callbacks) and makes every process act on them at the same
point, at the agreement points that the event registry declares
([`AGREED_AT`][trainwright.callbacks.base.AGREED_AT] in `trainwright.callbacks.base`).

Where the rest of a run lives: the loop (run, epoch, step, evaluation) and the calls to the
agreement points are in `trainwright.trainer`; the run plan (what is derived once from the
arguments and the DataLoaders) in `trainwright.run_plan`; the training states saved and restored
for an exact resume in `trainwright.checkpointing`; SIGTERM / SIGINT become a stop request in the
Trainer (``TrainingInterrupted``), agreed here like any other.
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.distributed as dist
from accelerate import Accelerator

from trainwright.callbacks.base import AGREED_AT, CallbackHandler, StopTrainingError
from trainwright.callbacks.saving import SaveTrainingStateCallback

__all__ = [
    "DEFAULT_VOTE_INTERVAL",
    "END_EPOCH",
    "EVALUATE",
    "GLOO_VOTE_INTERVAL",
    "SAVE",
    "RunControl",
    "default_vote_interval",
]

#: How many training steps apart the processes of a run combine their requests by default
#: (``Trainer.vote_interval``): one small all-reduce every 16 steps beside the gradients' own.
DEFAULT_VOTE_INTERVAL = 16

#: The default interval on gloo (CPU processes), where a collective costs about as much as a
#: small model's whole step: voting every 16 steps made 2 CPU processes 12% slower than
#: without votes on bench/'s mlp (an A/B of 5 launches); every 64 steps votes a quarter as often.
GLOO_VOTE_INTERVAL = 64


def default_vote_interval() -> int:
    """The vote interval of a ``Trainer`` whose ``vote_interval`` is ``None``: `GLOO_VOTE_INTERVAL`
    when the default process group uses gloo, else `DEFAULT_VOTE_INTERVAL` (NCCL's small
    all-reduce costs microseconds next to a GPU step; one process never votes)."""
    is_gloo = dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"
    return GLOO_VOTE_INTERVAL if is_gloo else DEFAULT_VOTE_INTERVAL


#: Requests for the end of a training step, combined across processes by `RunControl`
#: (plain ints, so that checking for them costs nothing on the per-step path).
END_EPOCH = 1
EVALUATE = 2
SAVE = 4
STEP_END_REQUESTS = (END_EPOCH, EVALUATE, SAVE)


class RunControl:
    """Records the run-control requests of a training run and agrees on them across processes,
    so that every process stops, ends an epoch, evaluates, saves or skips an update at the
    same step.

    A process that raises [`StopTrainingError`][trainwright.callbacks.base.StopTrainingError] on
    its own cannot simply leave the loop: the others would wait for it forever in the next
    gradient all-reduce. So in a run with several processes, a stop request is recorded instead
    of ending the run (the callback handler hands the ones raised by callbacks to
    [`request_stop`][trainwright.run_control.RunControl.request_stop], see
    ``CallbackHandler.defer_stop_requests_to``; the loop does so for those raised by hooks), the
    process carries on in step with the others, and the requests are combined at the agreement
    points, which the event registry declares
    ([`AGREED_AT`][trainwright.callbacks.base.AGREED_AT]):

    - every ``vote_interval`` training steps (`default_vote_interval` unless the Trainer says
      otherwise: 16, or 64 on gloo), by an all-reduce started without waiting at the end of
      each step whose index
      ``v`` in the epoch has ``(v + 1) % vote_interval == 0``, and read at the end of the next
      step, so the per-step path never blocks and the other steps exchange nothing; every
      process reads the same result at the same step. So a request made during step ``k`` (or
      in ``on_train_epoch_start`` before it) takes effect at the end of step
      ``vote_interval * (k // vote_interval + 1)``, the first step after ``k`` whose index is a
      multiple of ``vote_interval``, on every process (``k + 1`` with ``vote_interval=1``);
      or, if the epoch's steps end first, after its last step
      ([`end_of_epoch_steps`][trainwright.run_control.RunControl.end_of_epoch_steps], blocking,
      so that a request made in the epoch's last steps stops the run before the epoch's end is
      recorded, and an evaluation or save asked for is done there);
    - after every epoch-level agreement event (``on_training_run_start``, ``on_train_epoch_end``,
      ``on_eval_epoch_end``, ``on_training_run_epoch_end``): a blocking all-reduce, a few per
      epoch.

    Once any process asked, [`end_of_step`][trainwright.run_control.RunControl.end_of_step],
    [`end_of_epoch_steps`][trainwright.run_control.RunControl.end_of_epoch_steps] and
    [`agree`][trainwright.run_control.RunControl.agree] raise ``StopTrainingError`` on every
    process: the requesting process's own error, and on the others an error quoting it. With
    one process nothing is deferred or exchanged, and a raised request ends the run at once (one
    made with [`request_stop`][trainwright.run_control.RunControl.request_stop], e.g. by
    ``Trainer.request_stop``, at the end of the step or epoch-level event).

    Requests for the end of a step
    ([`request_at_step_end`][trainwright.run_control.RunControl.request_at_step_end]: end the
    epoch, evaluate, save) travel in the same all-reduce:
    [`end_of_step`][trainwright.run_control.RunControl.end_of_step] returns them on every process
    at the same step, the step given above (at once with one process). A request to end the
    epoch made outside a training epoch's steps and its start is dropped at the next epoch-level
    agreement; the others wait for the next vote. Skipping an update needs an answer before
    the optimizer step, so
    [`skipped_update_reason`][trainwright.run_control.RunControl.skipped_update_reason] runs a
    blocking all-reduce, only when a callback (or the Trainer subclass) declares
    ``may_skip_updates``.

    Why an interval rather than a vote every step: with DDP, a step already has its gradient
    all-reduce, and a second, tiny collective per step costs about as much again in latency on
    a small model (``python -m bench.ddp`` counted 1.09 collectives per step before). Carrying
    the ballot inside DDP's gradient all-reduce (a communication hook) would cost nothing, but
    only under plain DDP, never within a ``no_sync`` accumulation window, and not with FSDP,
    DeepSpeed or a model without a DDP wrapper: too fragile for a guarantee that every process
    stops at the same step. A bounded delay of at most ``vote_interval`` steps for a stop,
    end-of-epoch, evaluation or save request is the price.

    Not covered: a ``StopTrainingError`` raised on one process only by a trainer hook (an
    overridden Trainer method) outside a training step, e.g. in ``train_epoch_end()``; it
    ends that process's run at once. Raise it from a callback, or on every process. Any other
    exception on one process ends that process; the launcher (``torchrun``, ``accelerate
    launch``) then stops the others and reports the error.

    Args:
        accelerator: the trainer's accelerator.
        callback_handler: the trainer's callback handler: the source of the callbacks'
            ``may_skip_updates`` declarations and of the state saver for ``request_save``; while
            the requests are combined, it hands this object the stop requests of callbacks.

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
        # The last ballot read, kept until the next one is (see _read_in_flight).
        self._last_read: _Ballot | None = None
        self._skip_reason: str | None = None
        self._is_skip_vote_needed = False
        self._vote_interval = DEFAULT_VOTE_INTERVAL

    # ----------------------------------------------------------------------------------------
    # A training run

    def start(
        self, may_skip_updates: bool = False, vote_interval: int = DEFAULT_VOTE_INTERVAL
    ) -> None:
        """Starts a training run: from now on, with more than one process, stop requests are
        deferred and combined.

        Args:
            may_skip_updates: whether every update is agreed on (see
                `skipped_update_reason`): the run plan's ``may_skip_updates`` (several
                processes, and the Trainer or a callback declares ``may_skip_updates``).
            vote_interval: how many training steps apart the processes combine their requests.
        """
        self._reset()
        self._vote_interval = vote_interval
        self.is_active = self._accelerator.num_processes > 1
        self._is_skip_vote_needed = self.is_active and may_skip_updates
        if self.is_active:
            self._callback_handler.defer_stop_requests_to(self.request_stop)

    def finish(self) -> None:
        """Ends the run: from now on a ``StopTrainingError`` propagates at once."""
        self._reset()
        self.is_active = False
        self._is_skip_vote_needed = False
        self._callback_handler.defer_stop_requests_to(None)

    def _reset(self) -> None:
        self._request, self._in_flight, self._skip_reason = None, None, None
        self._requested_flags = self._agreed_flags = 0

    # ----------------------------------------------------------------------------------------
    # Requests

    def request_stop(self, error: StopTrainingError) -> None:
        """Records a stop request made on this process (the first one is kept)."""
        if self._request is None:
            self._request = error

    def request_at_step_end(self, flag: int) -> None:
        """Records a request from this process for the end of a step: `END_EPOCH`,
        `EVALUATE` or `SAVE`."""
        self._requested_flags |= flag

    def request_save(self) -> None:
        """Records a request to save a training state at the end of a step, with the trainer's
        state saver.

        Raises:
            ValueError: if the trainer has no ``SaveTrainingStateCallback`` (on the process
                that asks, now, rather than later).
        """
        self.state_saver()
        self.request_at_step_end(SAVE)

    def state_saver(self) -> SaveTrainingStateCallback:
        """The trainer's ``SaveTrainingStateCallback``, which saves the states asked for with
        `request_save`.

        Raises:
            ValueError: if the trainer has none.
        """
        for callback in self._callback_handler.callbacks:
            if isinstance(callback, SaveTrainingStateCallback):
                return callback
        raise ValueError(
            "request_save() saves with the trainer's SaveTrainingStateCallback: add one, e.g. "
            'SaveTrainingStateCallback("checkpoints"), or call save_training_state(path).'
        )

    def request_skip_update(self, reason: str) -> None:
        """Records a request to skip the current accumulation window's optimizer update.

        Raises:
            RuntimeError: with several processes, if nothing declared ``may_skip_updates``
                (the processes would not agree on the update).
        """
        if self._accelerator.num_processes > 1 and not self._is_skip_vote_needed:
            raise RuntimeError(
                "request_skip_update() in a multi-process run needs the processes to agree on "
                "every update: declare may_skip_updates = True on the callback (or Trainer "
                "subclass) that asks."
            )
        self._skip_reason = reason

    def skipped_update_reason(self) -> str | None:
        """Whether to skip the update about to be made, the same on every process: the reason
        asked for (``"asked by another process"`` on the processes that did not ask), or
        ``None`` to update. Forgets the request. With several processes and a
        ``may_skip_updates`` declaration this is a small blocking all-reduce; otherwise it
        costs nothing."""
        reason, self._skip_reason = self._skip_reason, None
        if not self._is_skip_vote_needed:
            return reason
        is_skipped = _Ballot([int(reason is not None)], self._accelerator.device).read()[0]
        if not is_skipped:
            return None
        return reason or "asked by another process"

    # ----------------------------------------------------------------------------------------
    # Agreement points

    def end_of_step(self, step: int) -> int:
        """The agreement point after ``on_train_step_end``: with several processes, reads the
        vote started at the previous step, if any, then starts a vote if ``step`` is a vote
        step (its index ``v`` in the epoch has ``(v + 1) % vote_interval == 0``). The other
        steps exchange nothing.

        Args:
            step: the index of the step in the epoch (the same on every process).

        Returns:
            The step-end requests (`END_EPOCH` | `EVALUATE` | `SAVE`) to
            act on now, the same on every process; 0 (nearly always) for none.

        Raises:
            StopTrainingError: on every process, if any asked to stop by the last vote.
        """
        if not self.is_active:  # one process: requests apply at once
            if self._request is not None:
                self._raise_own_request()
            flags, self._requested_flags = self._requested_flags, 0
            return flags
        is_vote_step = (step + 1) % self._vote_interval == 0
        if self._in_flight is None and not self._agreed_flags and not is_vote_step:
            return 0  # the steady state: nothing to read, nothing to send
        flags, self._agreed_flags = self._agreed_flags, 0
        if self._in_flight is not None:
            requesting_rank, agreed_flags = self._read_in_flight()
            self._raise_if_requested(requesting_rank)
            flags |= agreed_flags
        if is_vote_step:
            self._in_flight = self._start_vote(sends_flags=True)
        return flags

    def end_of_epoch_steps(self) -> int:
        """The blocking agreement point after an epoch's last step (its ``on_train_step_end``
        and the step's vote): combines every request made so far, waiting for every process,
        so that a stop asked in the epoch's last steps takes effect before the epoch's end is
        recorded, and an evaluation or save asked since the last vote is not put off to the
        next epoch.

        Returns:
            The evaluation and save requests (`EVALUATE` | `SAVE`) to act on now, the same
            on every process; requests to end the epoch are dropped (its steps are over).

        Raises:
            StopTrainingError: on every process, if any asked to stop.
        """
        flags, self._agreed_flags = self._agreed_flags, 0
        if not self.is_active:
            if self._request is not None:
                self._raise_own_request()
            flags, self._requested_flags = flags | self._requested_flags, 0
            return flags & ~END_EPOCH
        requesting_rank = 0
        if self._in_flight is not None:
            requesting_rank, agreed_flags = self._read_in_flight()
            flags |= agreed_flags
        if not requesting_rank:
            self._in_flight = self._start_vote(sends_flags=True)
            requesting_rank, agreed_flags = self._read_in_flight()
            flags |= agreed_flags
        self._raise_if_requested(requesting_rank)
        return flags & ~END_EPOCH

    def agree(self, after: str) -> None:
        """The blocking agreement point after the event ``after``: combines every stop request
        made so far, waiting for every process; drops requests to end an epoch (this runs
        between epochs' steps) and keeps the other step-end requests for the next step's end.

        Args:
            after: the event just fired, which [`AGREED_AT`][trainwright.callbacks.base.AGREED_AT]
                must declare an agreement point (``"on_train_step_end"`` after an epoch's last
                step).

        Raises:
            StopTrainingError: on every process, if any asked to stop.
            ValueError: if ``after`` is not declared an agreement point.
        """
        if AGREED_AT.get(after) != after:
            raise ValueError(
                f"{after!r} is not an agreement point: declare it in AGREED_AT "
                "(trainwright.callbacks.base) before agreeing after it."
            )
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

    def _raise_own_request(self) -> None:
        request, self._request = self._request, None
        raise request

    def _start_vote(self, sends_flags: bool) -> _Ballot:
        # Each process votes its rank + 1 if it asked to stop, else 0; the maximum names one
        # process that asked (0: none). Then one entry per step-end request: its flag if this
        # process asked, else 0, so that the maxima combine the requests of every process.
        stop_vote = 0 if self._request is None else self._accelerator.process_index + 1
        flags = 0
        if sends_flags:
            flags, self._requested_flags = self._requested_flags, 0
        votes = [stop_vote, *(flags & flag for flag in STEP_END_REQUESTS)]
        return _Ballot(votes, self._accelerator.device)

    def _read_in_flight(self) -> tuple[int, int]:
        assert self._in_flight is not None
        ballot, self._in_flight = self._in_flight, None
        requesting_rank, *flags = ballot.read()
        # Kept alive: gloo's thread may still hold the finished all-reduce and its tensor for
        # a moment after the wait. If it dropped the tensor's last reference, it would need
        # the GIL to free the tensor's Python object, and a destroy_process_group() made right
        # after train() (holding the GIL while it joins gloo's threads) could then hang or
        # abort at exit ("terminate called without an active exception"). Holding the last
        # ballot here makes this thread the one that frees it, later.
        self._last_read = ballot
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
