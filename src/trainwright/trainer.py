"""The Trainer: the whole training loop, as small overridable hooks.

Read top to bottom, in the order a run happens: the constructor; ``train()``, which reads as its
steps (check the arguments, find the resume state, prepare, build the loaders, plan, create the
scheduler, restore, run); the run's epochs; one training epoch and one training step; one
evaluation epoch, ``evaluate()``, ``evaluate_model()``, ``predict()`` and the learning-rate
finder; setting up a run; the hooks a subclass may override; the ``request_*`` methods that
callbacks and hooks use to change the run's course; checkpoints and training states; and last
the pass-throughs to Accelerate. Every callback event is one literal ``call_event`` line at the
place it fires (``grep call_event trainer.py`` lists them all).

Where the rest lives: the run plan, everything decided before the first step (epoch length,
accumulation windows, batch limits, scheduler stepping), in ``trainwright.run_plan``; the
requests that change a run's course and their agreement across processes in
``trainwright.run_control``; training states on disk (atomic, verified) in
``trainwright.checkpointing``; item-weighted accumulation in ``trainwright.accumulation``; the
loop's position in ``TrainingProgress`` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import logging
import math
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    gather_object,
    is_compiled_module,
    send_to_device,
    slice_tensors,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trainwright.accumulation import ItemWeighting, returned_num_items
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    CallbackHandler,
    SaveTrainingStateCallback,
    StopTrainingError,
    TrainerCallback,
    TrainingInterrupted,
    get_default_callbacks,
)
from trainwright.callbacks.base import CallbackLike
from trainwright.callbacks.monitor import check_metric_will_be_recorded, read_watched_metric
from trainwright.checkpointing import (
    MODEL_STATE_KEY,
    OPTIMIZER_STATE_KEY,
    SCHEDULER_STATE_KEY,
    STAGING_SUFFIX,
    TRAINING_STATE_FORMAT,
    InvalidTrainingStateError,
    atomic_save,
    clean_up_training_states,
    is_training_state,
    load_checkpoint_file,
    missing_state_parts,
    read_trainer_state,
    training_states,
    verify_training_state,
)
from trainwright.checkpointing import save_training_state as _save_training_state_directory
from trainwright.data import (
    create_dataloader,
    dataloader_batch_size,
    dataloader_length,
    default_dataloader_kwargs,
    draw_data_seed,
    inexact_resume_reason,
    is_batched_fetch_exact,
    merge_dataloader_kwargs,
    rngs_seeded,
    seeded_dataloader,
    seeded_epoch,
)
from trainwright.distributed import (
    PaddedTail,
    can_forward_alone,
    check_same_training_states,
    create_accelerator,
    padded_tail,
)
from trainwright.lr_finder import (
    LearningRateFinderResult,
    TrainerSnapshot,
    learning_rate_schedule,
    steepest,
    suggest,
)
from trainwright.placeholders import TrainerPlaceholderValues, resolve_placeholders
from trainwright.prediction import concatenate_outputs, predict_inputs
from trainwright.run_config import RunConfig
from trainwright.run_control import (
    END_EPOCH,
    EVALUATE,
    SAVE,
    RunControl,
    default_vote_interval,
)
from trainwright.run_plan import (
    BatchLimits,
    RunPlan,
    SchedulerStepping,
    TrainArguments,
    batch_limits,
    check_not_empty,
    evaluation_run_config,
    limit_that_cuts,
    plan_run,
    scheduler_stepping,
    smaller_limit,
)
from trainwright.sharding import (
    full_optimizer_state_dict,
    is_sharded,
    load_full_model_state_dict,
    load_full_optimizer_state_dict,
    local_gradients,
    restore_local_gradients,
)
from trainwright.tracking import InMemoryRunHistory, RunHistory
from trainwright.validation import (
    check_bool,
    check_callable,
    check_dataloader_kwargs,
    check_dataset,
    check_mapping,
    check_number,
    check_positive_int,
    check_type,
)

__all__ = [
    "DEFAULT_CALLBACKS",
    "Trainer",
    "TrainerPlaceholderValues",
    "TrainerWithTimmScheduler",
    "TrainingProgress",
    "get_default_callbacks",
]

_logger = logging.getLogger(__name__)


@dataclass
class TrainingProgress:
    """Where the current ``train()`` run is; read it from callbacks, never write it.

    It is saved with every training state and restored on resume, so the counts continue
    across a resume.

    Attributes:
        epoch: index of the current epoch within this ``train()`` call, from 0. The epoch
            *number* that messages, loggers and saved file names show is the run history's
            ``current_epoch``, from 1: ``progress.epoch + 1`` in a fresh run, and counting on
            across ``train()`` calls made with ``reset_run_history=False``. Positions inside a
            run (is this the last epoch? every N-th epoch?) use ``progress.epoch``.
        step: index of the current batch within the epoch, from 0.
        num_update_steps: optimizer updates performed so far in this ``train()`` call,
            including those skipped with ``Trainer.request_skip_update`` (so that
            ``max_num_train_steps`` and update-based schedules keep their meaning).
        num_batches_done: batches of the current epoch whose step is complete (set before
            ``on_train_step_end``).
        is_epoch_finished: whether the current epoch's training and evaluation are done
            (set before ``on_training_run_epoch_end``).
        num_skipped_updates: optimizer updates skipped so far in this ``train()`` call with
            ``Trainer.request_skip_update``.
        num_scaler_skipped_updates: optimizer updates skipped so far in this ``train()`` call
            by the fp16 gradient scaler because the gradients held inf or NaN (the scaler
            then lowers its scale). Like requested skips they count in ``num_update_steps``
            and do not step the scheduler; unlike them, ``on_after_optimizer_step`` still
            fires. Always 0 without a gradient scaler (bf16, fp32).
    """

    epoch: int = 0
    step: int = 0
    num_update_steps: int = 0
    num_batches_done: int = 0
    is_epoch_finished: bool = False
    num_skipped_updates: int = 0
    num_scaler_skipped_updates: int = 0


class Trainer:
    """Trains a PyTorch model: ``Trainer(model, loss_func, optimizer).train(dataset, 3)``.

    The loop is made of small hook methods that a subclass may override (listed in the
    [`TrainerCallback`][trainwright.callbacks.base.TrainerCallback] docstring with the events they
    precede), and callbacks receive an event at every moment of it. Device placement, mixed
    precision and multi-process training are delegated to Hugging Face Accelerate, so the same
    script runs on one CPU, one GPU or many machines (``torchrun`` / ``accelerate launch``).

    Constructing a trainer never touches random number generators: seed with
    ``torch.manual_seed`` (or ``accelerate.utils.set_seed``) before ``train()`` to fix
    initialisation, data order and worker seeds.

    Args:
        model: the model to train; ``self.model`` is the prepared (possibly wrapped) model
            once training starts, [`get_model`][trainwright.trainer.Trainer.get_model] the unwrapped
            one.
        loss_func: called as ``loss_func(model_outputs, targets)``; an ``nn.Module`` loss is
            moved to the device by
            `MoveModulesToDeviceCallback`.
        optimizer: an optimizer over the model's parameters.
        callbacks: callback instances or classes; default
            [`DEFAULT_CALLBACKS`][trainwright.callbacks.DEFAULT_CALLBACKS].
        run_history: where metrics are recorded; default a new
            [`InMemoryRunHistory`][trainwright.tracking.InMemoryRunHistory].
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``; ``None`` takes the
            value from ``accelerate launch`` / the environment (``"no"`` when unset).
        accelerator_kwargs: further keyword arguments for `accelerate.Accelerator`.
        reorder_metric_readers: place callbacks that read a metric after the callbacks that
            write it, instead of raising (see
            [`CallbackHandler`][trainwright.callbacks.base.CallbackHandler]).
        profile_callbacks: time every callback and event and the training steps, and print
            the table at the end of every ``train()`` (see
            [`CallbackProfiler`][trainwright.callbacks.profiling.CallbackProfiler]).

    Attributes:
        may_skip_updates: set it on a subclass whose hooks call
            [`request_skip_update`][trainwright.trainer.Trainer.request_skip_update] on some
            processes only (as callbacks declare ``may_skip_updates``).
        writes_metrics: set it on a subclass whose hooks record metrics, e.g.
            ``writes_metrics = ("accuracy",)`` (as callbacks declare ``writes_metrics``).

    Example:
        ```python
        trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters()))
        trainer.train(train_dataset, num_epochs=5, eval_dataset=eval_dataset)
        trainer.run_history.get_metric_values("eval_loss_epoch")
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        loss_func: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        callbacks: Iterable[CallbackLike] = DEFAULT_CALLBACKS,
        run_history: RunHistory | None = None,
        *,
        mixed_precision: str | None = None,
        accelerator_kwargs: dict[str, Any] | None = None,
        reorder_metric_readers: bool = False,
        profile_callbacks: bool = False,
    ) -> None:
        if isinstance(callbacks, Iterator):  # checked, then used
            callbacks = list(callbacks)
        _check_trainer_arguments(
            model,
            loss_func,
            optimizer,
            callbacks,
            run_history,
            mixed_precision,
            accelerator_kwargs,
            reorder_metric_readers,
            profile_callbacks,
        )
        self.model = model
        self.loss_func = loss_func
        self.optimizer = optimizer
        self.callback_handler = CallbackHandler(
            callbacks, reorder_metric_readers=reorder_metric_readers, profile=profile_callbacks
        )
        self.run_history = run_history if run_history is not None else InMemoryRunHistory()
        accelerator_kwargs = dict(accelerator_kwargs or {})
        _check_accelerator_kwargs(accelerator_kwargs)
        self.accelerator = create_accelerator(mixed_precision, accelerator_kwargs)
        self.scheduler: Any = None
        #: The scheduler factory of the current ``train()``, placeholders resolved.
        self.create_scheduler_fn: Callable[[torch.optim.Optimizer], Any] | None = None
        self.run_config: RunConfig | None = None
        self.progress = TrainingProgress()
        self.train_dataset: Dataset | None = None
        self.eval_dataset: Dataset | None = None
        self.collate_fn: Callable | None = None
        self.train_dataloader: DataLoader | None = None
        self.eval_dataloader: DataLoader | None = None
        # The Trainer's private state, each written by the methods named:
        # - _is_prepared, _plain_optimizer: Accelerate prepared the model and optimizer
        #   (_prepare_model_and_optimizer); the optimizer inside its wrapper when that adds
        #   nothing (see _plain_optimizer()).
        # - _dataloader_settings: each dataloader's settings as built (_prepare_dataloader).
        # - _plan: the current train() run's RunPlan (train()); the loop only reads it.
        # - _epoch: the training epoch in progress or the last one (_run_train_epoch).
        # - _resume_position: the saved position inside the epoch a resumed run continues
        #   with, until that epoch starts (_restore_training_state).
        # - _train_loss, _item_weighting: the epoch's loss sums and the accumulation window's
        #   item weighting, saved with training states.
        # - _run_control: what callbacks and hooks ask of the run (request_*), agreed on by
        #   every process (trainwright.run_control).
        self._is_prepared = False
        self._plain_optimizer: torch.optim.Optimizer | None = None
        self._dataloader_settings: dict[str, dict[str, Any]] = {}
        self._plan: RunPlan | None = None
        self._epoch: _TrainEpoch | None = None
        self._resume_position: dict[str, Any] | None = None
        self._train_loss = _EpochLoss(self.accelerator)
        self._item_weighting = ItemWeighting(self.accelerator)
        # What callbacks and hooks ask of the run (request_*), agreed on by every process.
        self._run_control = RunControl(self.accelerator, self.callback_handler)
        #: The signal (``"SIGTERM"``, ``"SIGINT"``) that interrupted the last ``train()``.
        self.interrupt_signal: str | None = None
        #: With ``max_grad_norm``: the total gradient norm of the latest update before
        #: clipping, as computed by the clipping (a device tensor; ``None`` otherwise).
        self.gradient_norm: torch.Tensor | None = None
        #: Values of the latest training step that callbacks publish for per-step logging
        #: (e.g. ``{"gradient_norm": tensor}``): experiment trackers log them with the
        #: step's loss and progress bars show them, reading tensors without host syncs.
        #: The loop itself never reads it.
        self.step_metrics: dict[str, Any] = {}
        self.callback_handler.call_event("on_init_end", self)

    def train(
        self,
        train_dataset: Dataset,
        num_epochs: int,
        eval_dataset: Dataset | None = None,
        per_device_batch_size: int = 8,
        max_num_train_steps: int | None = None,
        gradient_accumulation_steps: int = 1,
        gradient_clip_value: float | None = None,
        max_grad_norm: float | None = None,
        create_scheduler_fn: Callable[[torch.optim.Optimizer], Any] | None = None,
        train_dataloader_kwargs: dict[str, Any] | None = None,
        eval_dataloader_kwargs: dict[str, Any] | None = None,
        reset_run_history: bool = True,
        collate_fn: Callable | None = None,
        eval_per_device_batch_size: int | None = None,
        max_num_train_batches_per_epoch: int | None = None,
        max_num_eval_batches: int | None = None,
        scheduler_step_interval: str | None = None,
        scheduler_metric: str | None = None,
        resume_from: str | os.PathLike | None = None,
    ) -> RunHistory:
        """Trains the model for ``num_epochs`` epochs, evaluating after each one if
        ``eval_dataset`` is given.

        Each optimizer update is a step on the mean loss over all items of its accumulation
        window on all processes; with several processes each trains on its share of every
        batch, and the run matches one process with the total batch size. How losses are
        combined across processes, and how data without a length (an ``IterableDataset``
        stream) is trained on, are in the docs: "The Trainer and its hooks", sections
        "Losses over several processes" and "Data without a length". The plan of the run
        (epoch length, accumulation windows, limits, scheduler stepping) is computed once,
        before the first step, as a `RunPlan` (``trainwright.run_plan``).

        Args:
            train_dataset: the training data; by default each item is ``(inputs, targets)``.
            num_epochs: epochs to train for (overridden by ``max_num_train_steps``, also for
                data without a length).
            eval_dataset: evaluated after every epoch, recording ``eval_loss_epoch``.
            per_device_batch_size: batch size of each process; with Accelerate's
                ``DataLoaderConfiguration(split_batches=True)`` (``accelerator_kwargs``),
                of all processes together, split among them (it must then be a multiple of
                the number of processes; ``run_config`` gives the per-process size).
            max_num_train_steps: if set, train for exactly this many optimizer updates,
                however many epochs that takes (with data without a length too).
            gradient_accumulation_steps: micro-batches per optimizer update. An update also
                happens at the end of every epoch, over the micro-batches left. Each update
                is on the mean over every item (sample, or ``num_items``) of its window.
            gradient_clip_value: clip each gradient element to ``[-v, v]`` before updates.
            max_grad_norm: clip the total gradient norm to this value before updates.
            create_scheduler_fn: a function of the optimizer that returns a scheduler, e.g.
                ``functools.partial(OneCycleLR, max_lr=0.1,
                total_steps=TrainerPlaceholderValues.NUM_UPDATE_STEPS)``; stepped after
                every optimizer update unless ``scheduler_step_interval`` says otherwise.
            train_dataloader_kwargs: overrides for the training ``DataLoader``.
            eval_dataloader_kwargs: overrides for the evaluation ``DataLoader``.
            reset_run_history: start a fresh history; ``False`` continues counting epochs.
            collate_fn: the dataloaders' ``collate_fn``.
            eval_per_device_batch_size: evaluation batch size; default
                ``per_device_batch_size``.
            max_num_train_batches_per_epoch: use only the first this-many training batches
                of each epoch (e.g. for a quick trial run). ``run_config`` (its
                ``train_dataloader_len`` and update counts) and the placeholders reflect the
                limit, so a schedule sized with them still ends on the last update. A
                [`BatchLimitsCallback`][trainwright.callbacks.runtime.BatchLimitsCallback] (e.g.
                ``LimitBatchesCallback``) sets the same limits; the smallest one applies.
            max_num_eval_batches: evaluate on only the first this-many batches of the
                evaluation data after each epoch (``run_config.eval_dataloader_len`` reflects it).
            scheduler_step_interval: when the scheduler is stepped: ``"update"`` (after every
                optimizer update) or ``"epoch"`` (after each epoch, once the epoch's metrics
                are recorded). ``None`` means ``"update"``, except that
                ``ReduceLROnPlateau`` steps per epoch and a timm-style scheduler (one with a
                ``step_update`` method) gets both ``step_update(num_updates)`` after every
                update and ``step(epoch)`` after each epoch, where ``num_updates`` and
                ``epoch`` are the updates and epochs completed so far (so ``step(epoch)``
                sets the learning rate of the epoch about to start, as in timm's own loop).
            scheduler_metric: the run-history metric passed to ``ReduceLROnPlateau`` (or a
                timm-style scheduler) at each epoch end, e.g. ``"eval_loss_epoch"``;
                required for ``ReduceLROnPlateau``.
            resume_from: continue exactly from a training state (see
                `save_training_state`): a state directory, a directory of states (the
                newest valid ``state-<updates>`` in it is used), or ``"latest"`` for the newest
                valid state in the ``save_dir`` of the trainer's
                `SaveTrainingStateCallback` (starting afresh
                when it holds none yet, so the same command serves the first run and every
                rerun). Every state is verified against its manifest (file sizes and SHA-256)
                first: from a directory of states, a damaged one is skipped with a warning
                naming the file, for the next older one; when none is valid, or a state
                named directly is damaged, an ``InvalidTrainingStateError`` names the file.
                With several processes, all must find the same states and see all of the
                one used: they agree before anything is read, or all raise the same error
                naming what each found (e.g. machines saving to their own disks).
                Pass the same datasets and settings as the saved run; a different model,
                optimizer type, batch size, accumulation, number of processes, dataset length
                or run length (epochs, updates) is an error, raised before anything is
                loaded. The run continues at the saved step, mid-epoch and mid accumulation
                window included, without loading the batches already done; the weights,
                metrics and callback states then match an uninterrupted run bit for bit.

        Returns:
            The run history.

        Example:
            ```python
            trainer.train(
                train_dataset,
                num_epochs=20,
                eval_dataset=eval_dataset,
                create_scheduler_fn=functools.partial(ReduceLROnPlateau, patience=2),
                scheduler_metric="eval_loss_epoch",
            )
            ```
        """
        # train()'s arguments, checked: a bad one raises here, before anything changes.
        arguments = TrainArguments(**{name: v for name, v in locals().items() if name != "self"})
        if self.vote_interval is not None:  # a class attribute, settable
            check_positive_int("vote_interval", self.vote_interval)
        resume_dir, resume_state = self._find_resume_state(arguments.resume_from)
        if reset_run_history:
            self.run_history.reset()
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.collate_fn = collate_fn
        self._prepare_model_and_optimizer()
        self._build_dataloaders(arguments)
        self._plan = plan_run(
            arguments,
            self.callback_handler.callbacks,
            self.accelerator,
            self.train_dataloader,
            self.eval_dataloader,
            self._dataloader_settings,
            may_skip_updates=self.may_skip_updates,
        )
        self.run_config = self._plan.run_config
        self._create_run_scheduler(arguments)
        self._check_first_eval_batch()
        self.progress = TrainingProgress()
        self._item_weighting.start_run(
            self._plan.nominal_window_items,
            self._plan.batch_size_of_every_process,
            self.run_config.gradient_accumulation_steps,
        )
        if resume_state is not None:
            self._resume(resume_dir, resume_state)
        try:
            self._run_training(resume_state)
        except BaseException as exception:  # KeyboardInterrupt included: cleanup, then raise
            self._report_exception(exception)
            raise
        return self.run_history

    def _run_training(self, resume_state: dict[str, Any] | None = None) -> None:
        if resume_state is None:
            self.optimizer.zero_grad()  # start from clean gradients whatever ran before
        # With several processes, requests are combined across them at every agreement point
        # (_run_control.agree / end_of_step), so that all processes act at the same step.
        vote_interval = self.vote_interval
        if vote_interval is None:
            vote_interval = default_vote_interval()
        self._run_control.start(self._plan.may_skip_updates, vote_interval)
        self.callback_handler.reset_event_filters(self)  # count from the (resumed) position
        self.interrupt_signal = None
        try:
            with self._interruptible():
                self.training_run_start()
                self.callback_handler.call_event("on_training_run_start", self)
                if resume_state is not None:  # after the callbacks set themselves up
                    self.callback_handler.load_state_dict(resume_state["callbacks"])
                self._run_control.agree(after="on_training_run_start")
                self._run_epochs()
        except TrainingInterrupted as interruption:
            self._run_control.finish()
            self.interrupt_signal = interruption.signal_name
            self.callback_handler.call_event(
                "on_training_interrupted", self, signal_name=interruption.signal_name
            )
        except StopTrainingError as error:
            self._run_control.finish()
            self.callback_handler.call_event("on_stop_training_error", self, error=error)
        finally:
            self._run_control.finish()
            if self._epoch is not None:
                self._epoch.is_in_steps = False  # also when a stop left the steps
        if self.progress.is_epoch_finished:
            # Stopped during the epoch's last events (early stopping): the epoch was completed,
            # so it counts, as a state saved at the stop counts it when resumed.
            self._finish_epoch()
        self.training_run_end()
        self.callback_handler.call_event("on_training_run_end", self)

    def _run_epochs(self) -> None:
        # A resumed run starts at the saved epoch (progress is restored by then). Data without
        # a length and max_num_train_steps: epochs repeat until that many updates.
        num_epochs = self.run_config.num_epochs
        epochs = (
            itertools.count(self.progress.epoch)
            if num_epochs is None
            else range(self.progress.epoch, num_epochs)
        )
        for epoch in epochs:
            if num_epochs is None and self._is_max_num_train_steps_reached():
                break
            self.progress.epoch = epoch
            self._run_train_epoch()
            if self.eval_dataloader is not None:
                self._run_eval_epoch(
                    self.eval_dataloader, "eval_loss_epoch", self._plan.limits.max_num_eval_batches
                )
            self.training_run_epoch_end()
            self.progress.is_epoch_finished = True
            self.callback_handler.call_event("on_training_run_epoch_end", self)
            self._run_control.agree(after="on_training_run_epoch_end")
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        if self._scheduler_stepping.per_epoch:  # after every epoch-end metric
            self.scheduler_epoch_step()
        self.run_history.increment_epoch()
        self.progress.epoch += 1
        self.progress.num_batches_done = 0
        self.progress.is_epoch_finished = False

    @property
    def _scheduler_stepping(self) -> SchedulerStepping:
        """How the scheduler is stepped: as the latest run planned, or not at all before any
        ``train()`` (``load_training_state`` alone)."""
        return self._plan.scheduler if self._plan is not None else SchedulerStepping()

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Turns SIGTERM and SIGINT into a request to stop after the current step (see
        [`TrainingInterrupted`][trainwright.callbacks.base.TrainingInterrupted]); a second SIGINT
        interrupts at once. Signal handlers can only be set from the main thread: elsewhere, nothing
        changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signal_number: int, frame: Any) -> None:
            if self.interrupt_signal is not None and signal_number == signal.SIGINT:
                raise KeyboardInterrupt
            self.interrupt_signal = signal.Signals(signal_number).name

        previous = {
            number: signal.signal(number, request_stop)
            for number in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    # ----------------------------------------------------------------------------------------
    # One training epoch, one training step
    # ----------------------------------------------------------------------------------------

    def _run_train_epoch(self) -> None:
        self.train_epoch_start()
        self.callback_handler.call_event("on_train_epoch_start", self)
        epoch = self._epoch = self._start_train_epoch()
        plan = self._plan
        num_scaler_skips_before = self.progress.num_scaler_skipped_updates
        batches = enumerate(
            seeded_epoch(epoch.dataloader, epoch.start_state["data_seed"]), epoch.first_step
        )
        if epoch.num_batches is None:  # no length: decided per epoch, known lengths pay nothing
            batches = self._marking_last_batch(batches, epoch)
        epoch.is_in_steps = True  # evaluations from here on are intermediate
        for step, batch in batches:
            self.progress.step = step
            try:
                self._run_train_step(step, batch)
                if self.interrupt_signal is not None:  # SIGTERM / SIGINT: stop after the step
                    raise TrainingInterrupted(self.interrupt_signal)
            except StopTrainingError as error:  # raised by a hook (callbacks' are deferred)
                if not self._run_control.is_active:
                    raise
                self._run_control.request_stop(error)
            requests = self._run_control.end_of_step(step)  # the same on every process
            if requests and self._act_on_step_end_requests(requests, step):
                break  # request_end_epoch()
            if self.progress.num_update_steps >= plan.max_num_update_steps:
                break  # max_num_train_steps reached: the run ends after this epoch
            if plan.is_epoch_cut_after(step):
                break  # the batch limit cuts the epoch short
        # What was asked since the last vote is agreed here (blocking), before the epoch's end
        # is recorded, as on one process: a state saved on stopping then resumes with it.
        requests = self._run_control.end_of_epoch_steps()  # the same on every process
        if requests:
            self._act_on_step_end_requests(requests, self.progress.step)
        epoch.is_in_steps = False
        if plan.num_train_batches is None and self.progress.num_batches_done == 0:
            raise ValueError(
                "The training data yielded no batches in epoch "
                f"{self.run_history.current_epoch} on this process. An iterable dataset must "
                "yield samples in every epoch (iterating it again must start over); check its "
                "__iter__."
            )
        self._report_scaler_skips(num_scaler_skips_before)
        self.train_epoch_end()
        self.run_history.update_metric("train_loss_epoch", self._train_loss.compute())
        self.callback_handler.call_event("on_train_epoch_end", self)
        self._run_control.agree(after="on_train_epoch_end")

    def _start_train_epoch(self) -> _TrainEpoch:
        """The epoch about to run; in an epoch resumed mid-way, the batches not yet done,
        skipped at the sampler so that they are never loaded."""
        self.progress.is_epoch_finished = False
        self._train_loss.reset()
        resumed, self._resume_position = self._resume_position, None
        if resumed is None:
            self.progress.num_batches_done = 0
            start_state = {
                "data_seed": draw_data_seed(),
                "sampler": _generator_state(self.train_dataloader),
            }
            dataloader = self.train_dataloader
        else:
            self._train_loss.load_state_dict(resumed["train_loss"])
            start_state = resumed["epoch_start"]
            # Replay the epoch as the saved run saw it: its data seed gives the same batch
            # order and the same random augmentations (see trainwright.data), and the
            # sampler's generator (Accelerate's, with several processes) starts where it did.
            # The global RNG is not touched: it continues from where the saved step left it.
            _set_generator_state(self.train_dataloader, start_state["sampler"])
            # For an IterableDataset, Accelerate skips by iterating: those batches are loaded.
            dataloader = self.accelerator.skip_first_batches(
                self.train_dataloader, self.progress.num_batches_done
            )
        return _TrainEpoch(
            start_state=start_state,
            dataloader=dataloader,
            first_step=self.progress.num_batches_done,
            num_batches=self._plan.num_train_batches,
            padded_tail=padded_tail(self.train_dataloader, self.accelerator),
        )

    def _marking_last_batch(
        self, batches: Iterable[tuple[int, Any]], epoch: _TrainEpoch
    ) -> Iterator[tuple[int, Any]]:
        """The epoch's batches of data without a length, setting ``epoch.num_batches`` as its
        last batch comes (or the batch limit's), so that it ends an accumulation window.

        Accelerate's prepared loader reads one batch ahead and sets ``end_of_dataloader``
        before it yields the last one.
        """
        max_num_batches = self._plan.limits.max_num_train_batches_per_epoch
        for step, batch in batches:
            if epoch.dataloader.end_of_dataloader or step + 1 == max_num_batches:
                epoch.num_batches = step + 1
            yield step, batch

    def _data_seed(self) -> int:
        """The data seed of the training epoch in progress (or last run): it also seeds the
        evaluation data, so evaluating draws nothing from the global RNG."""
        return self._epoch.start_state["data_seed"] if self._epoch is not None else 0

    def _run_train_step(self, step: int, batch: Any) -> None:
        # The step's events are fired only when a callback listens (read at each event, as
        # a callback may add another): on a small model, every call counts.
        handler = self.callback_handler
        if "on_train_step_start" in handler.listened_events:
            handler.call_event("on_train_step_start", self, batch=batch, step=step)
        batch_output = self.calculate_train_batch_loss(batch)
        loss, batch_size = _loss_and_batch_size(batch_output, "calculate_train_batch_loss")
        num_items = returned_num_items(batch_output, "calculate_train_batch_loss")
        is_batch_size = num_items is None
        if is_batch_size:
            num_items = metric_weight = batch_size
            tail = self._epoch.padded_tail
            if tail is not None and step == tail.step:
                # Accelerate completed this batch with repeated samples: count only the others
                # in the metric (their loss is not separable from the repeats'; see train()).
                metric_weight = tail.num_genuine_samples
        else:
            metric_weight = num_items
        self._train_loss.update(loss, metric_weight)
        if "on_before_backward" in handler.listened_events:
            handler.call_event(
                "on_before_backward", self, batch=batch, batch_output=batch_output, step=step
            )
        # Each micro-batch's mean loss is weighed by its items; the window's gradients are
        # scaled to the mean over all of its items on all processes before the update.
        is_update_step = self._plan.is_update_step(step, self._epoch.num_batches)
        scaled_loss = self._item_weighting.weigh(
            loss, num_items, is_window_end=is_update_step, is_batch_size=is_batch_size
        )
        if is_update_step or not self._plan.defers_gradient_sync:
            self.backward_step(scaled_loss)
        else:  # no gradient all-reduce between processes until the window is complete
            with self.accelerator.no_sync(self.model):
                self.backward_step(scaled_loss)
        if is_update_step and self._item_weighting.rescales_gradients:
            # From here on (on_after_backward too), the gradients are the window's mean.
            self._item_weighting.scale_gradients(self.model.parameters())
        if "on_after_backward" in handler.listened_events:
            handler.call_event(
                "on_after_backward", self, batch=batch, batch_output=batch_output, step=step
            )
        if is_update_step:
            self._update_parameters(step)
        self.progress.num_batches_done = step + 1
        if "on_train_step_end" in handler.listened_events:
            handler.call_event(
                "on_train_step_end", self, batch=batch, batch_output=batch_output, step=step
            )

    def _update_parameters(self, step: int) -> None:
        """The end of an accumulation window: clip, update, step the scheduler, clear."""
        handler = self.callback_handler
        self._clip_gradients()
        if "on_before_optimizer_step" in handler.listened_events:
            handler.call_event("on_before_optimizer_step", self, step=step)
        if self._is_update_skipped():
            self.progress.num_update_steps += 1  # request_skip_update(): nothing steps
        else:
            self.optimizer_step()
            self.progress.num_update_steps += 1
            # A step skipped by the fp16 gradient scaler (overflow) must not advance the LR.
            # The flag is a plain attribute that the scaler's step (a host sync of its own)
            # has set; without a scaler there is nothing to read.
            if self.accelerator.scaler is not None and self.accelerator.optimizer_step_was_skipped:
                self.progress.num_scaler_skipped_updates += 1
            elif self._plan.scheduler.per_update:
                self.scheduler_step()
            if "on_after_optimizer_step" in handler.listened_events:
                handler.call_event("on_after_optimizer_step", self, step=step)
        self.optimizer_zero_grad()

    def _clip_gradients(self) -> None:
        # Accelerate unscales fp16 gradients (once per update) before clipping.
        if self.run_config.gradient_clip_value is not None:
            self.accelerator.clip_grad_value_(
                self.model.parameters(), self.run_config.gradient_clip_value
            )
        if self.run_config.max_grad_norm is not None:
            # The total norm before clipping, kept for GradientNormMonitorCallback.
            self.gradient_norm = self.accelerator.clip_grad_norm_(
                self.model.parameters(), self.run_config.max_grad_norm
            )

    def _is_max_num_train_steps_reached(self) -> bool:
        max_num_train_steps = self.run_config.max_num_train_steps
        return max_num_train_steps is not None and (
            self.progress.num_update_steps >= max_num_train_steps
        )

    def _report_scaler_skips(self, num_skips_before_epoch: int) -> None:
        num_skips = self.progress.num_scaler_skipped_updates - num_skips_before_epoch
        if num_skips and self.accelerator.is_main_process:  # the same on every process
            _logger.info(
                "The fp16 gradient scaler skipped %d optimizer update(s) in epoch %d (inf or "
                "NaN gradients; the scheduler was not stepped for them), %d in this run; the "
                "loss scale is now %g.",
                num_skips,
                self.run_history.current_epoch,
                self.progress.num_scaler_skipped_updates,
                self.accelerator.scaler.get_scale(),
            )

    # ----------------------------------------------------------------------------------------
    # One evaluation epoch; evaluate(), evaluate_model(), predict(), find_learning_rate()
    # ----------------------------------------------------------------------------------------

    def _run_eval_epoch(
        self, dataloader: DataLoader, metric_name: str, max_num_batches: int | None = None
    ) -> None:
        self.eval_epoch_start()
        self.callback_handler.call_event("on_eval_epoch_start", self)
        with torch.no_grad():
            epoch_loss = self._eval_batches(dataloader, max_num_batches, fires_events=True)
        self.eval_epoch_end()
        self.run_history.update_metric(metric_name, epoch_loss.compute())
        self.callback_handler.call_event("on_eval_epoch_end", self)
        self._run_control.agree(after="on_eval_epoch_end")

    def _eval_batches(
        self, dataloader: DataLoader, max_num_batches: int | None, fires_events: bool
    ) -> _EpochLoss:
        """The evaluation batch loop, of evaluation epochs and of `evaluate_model` (which
        fires no events): the sample-weighted loss over the first ``max_num_batches`` batches
        (``None``: all)."""
        handler = self.callback_handler
        epoch_loss = _EpochLoss(self.accelerator)
        tail = padded_tail(dataloader, self.accelerator)
        for step, batch in enumerate(seeded_epoch(dataloader, self._data_seed())):
            if fires_events:
                handler.call_event("on_eval_step_start", self, batch=batch, step=step)
            batch_output = self.calculate_eval_batch_loss(batch)
            epoch_loss.update(*self._eval_loss_and_weight(batch, batch_output, step, tail))
            if fires_events:
                handler.call_event(
                    "on_eval_step_end", self, batch=batch, batch_output=batch_output, step=step
                )
            if step + 1 == max_num_batches:
                break
        return epoch_loss

    def _eval_loss_and_weight(
        self, batch: Any, batch_output: Any, step: int, tail: PaddedTail | None
    ) -> tuple[torch.Tensor, Any]:
        """An evaluation batch's loss and its weight in the epoch's mean: its ``num_items``
        when returned, else its samples; for a last batch completed with repeated samples,
        those of its genuine samples."""
        loss, batch_size = _loss_and_batch_size(batch_output, "calculate_eval_batch_loss")
        num_items = returned_num_items(batch_output, "calculate_eval_batch_loss")
        if tail is not None and step == tail.step:
            return self._loss_without_repeats(batch, loss, batch_size, num_items, tail)
        return loss, batch_size if num_items is None else num_items

    def _loss_without_repeats(
        self, batch: Any, loss: torch.Tensor, batch_size: Any, num_items: Any, tail: PaddedTail
    ) -> tuple[torch.Tensor, Any]:
        # This last batch was completed with repeated samples, so its loss is not the loss
        # of its genuine samples alone: compute that with one more forward pass over them (no
        # gradients, no collective with DDP). Callbacks still get the whole batch, which
        # gather_for_metrics trims. A model sharded over the processes (FSDP, DeepSpeed)
        # cannot run a forward pass on one process alone: then the batch's loss is counted
        # for its genuine share only, an approximation.
        num_genuine = tail.num_genuine_samples
        if num_genuine == 0:
            return loss, 0
        if not can_forward_alone(self.accelerator):
            return loss, num_genuine if num_items is None else num_items * num_genuine / batch_size
        genuine_output = self.calculate_eval_batch_loss(slice_tensors(batch, slice(num_genuine)))
        genuine_loss, _ = _loss_and_batch_size(genuine_output, "calculate_eval_batch_loss")
        genuine_items = returned_num_items(genuine_output, "calculate_eval_batch_loss")
        return genuine_loss, num_genuine if genuine_items is None else genuine_items

    def _check_first_eval_batch(self) -> None:
        """Runs ``calculate_eval_batch_loss`` once, before training, on the first samples of
        a map-style evaluation dataset, so that data or a model that do not fit fail now and
        not after a whole training epoch (like Lightning's sanity check).

        It runs in eval mode, without gradients and with the RNGs forked (a batch-norm's
        statistics, dropout and the run's random streams stay as they were), and fires no
        event; the hook itself does run once more than the batches (see ``train()``). An
        ``IterableDataset`` is not read ahead: iterating it could consume its stream.

        Only the default ``calculate_eval_batch_loss`` (the model and ``loss_func``, which keep
        no state) is checked this way: an overridden one may count what it sees (as
        pytorch-accelerated's "metrics in the loop" example does, with counters reset in
        ``eval_epoch_start``), so it is never called outside an evaluation epoch.
        """
        loader = self.eval_dataloader
        dataset = getattr(loader, "dataset", None)
        if loader is None or isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
            return
        if type(self).calculate_eval_batch_loss is not Trainer.calculate_eval_batch_loss:
            return  # a hook of the user's may keep state: see the docstring
        indices = list(range(min(self.run_config.eval_per_device_batch_size or 1, len(dataset))))
        was_training = self.model.training
        try:
            with rngs_seeded(0), torch.no_grad():
                getitems = getattr(dataset, "__getitems__", None)
                samples = getitems(indices) if getitems else [dataset[i] for i in indices]
                batch = send_to_device(loader.collate_fn(samples), self.device)
                self.model.eval()
                batch_output = self.calculate_eval_batch_loss(batch)
                _loss_and_batch_size(batch_output, "calculate_eval_batch_loss")
        except Exception as error:
            raise ValueError(
                f"The first batch of eval_dataset does not fit: calculate_eval_batch_loss() on "
                f"its first {len(indices)} samples raised {type(error).__name__}: {error} "
                "(train() checks one evaluation batch before training, so that this does not "
                "fail after a whole epoch)."
            ) from error
        finally:
            self.model.train(was_training)

    def evaluate(
        self,
        dataset: Dataset | None = None,
        per_device_batch_size: int = 8,
        dataloader_kwargs: dict[str, Any] | None = None,
        collate_fn: Callable | None = None,
    ) -> RunHistory:
        """Runs one evaluation epoch over ``dataset`` and records ``evaluation_loss``.

        While it runs, `eval_dataloader` is the dataloader over ``dataset`` and
        `run_config` describes this evaluation (its ``eval_*`` fields, processes and device;
        the training fields are ``None``); the previous ones are restored afterwards, so this
        can be called before any ``train()`` and from a callback during training.

        Args:
            dataset: the data to evaluate on.
            per_device_batch_size: batch size of each process.
            dataloader_kwargs: overrides for the evaluation ``DataLoader``.
            collate_fn: the dataloader's ``collate_fn``.

        Returns:
            The run history.
        """
        if dataset is None:
            raise ValueError(
                "evaluate() needs a dataset to evaluate on: trainer.evaluate(dataset)."
            )
        _check_data_arguments(
            "dataset", dataset, per_device_batch_size, dataloader_kwargs, collate_fn
        )
        previous = (
            self.eval_dataset,
            self.eval_dataloader,
            self.collate_fn,
            self.run_config,
            self._dataloader_settings.get("eval"),
        )
        self.eval_dataset, self.collate_fn = dataset, collate_fn
        self._prepare_model_and_optimizer()
        self.eval_dataloader = self._prepare_dataloader(
            self.create_eval_dataloader(per_device_batch_size, dataloader_kwargs), "eval"
        )
        limits = batch_limits(self.callback_handler.callbacks)
        max_num_batches = limit_that_cuts(limits.max_num_eval_batches, self.eval_dataloader)
        self.run_config = evaluation_run_config(
            self.accelerator, self.eval_dataloader, self._dataloader_settings, max_num_batches
        )
        try:
            self.evaluation_run_start()
            self.callback_handler.call_event("on_evaluation_run_start", self)
            self._run_eval_epoch(self.eval_dataloader, "evaluation_loss", max_num_batches)
            self.evaluation_run_end()
            self.callback_handler.call_event("on_evaluation_run_end", self)
        except BaseException as exception:  # KeyboardInterrupt included: cleanup, then raise
            self._report_exception(exception)
            raise
        finally:
            (
                self.eval_dataset,
                self.eval_dataloader,
                self.collate_fn,
                self.run_config,
                self._dataloader_settings["eval"],
            ) = previous
        return self.run_history

    def evaluate_model(
        self,
        model: nn.Module,
        dataloader: DataLoader | None = None,
        metric_name: str = "eval_loss_epoch",
    ) -> float:
        """Evaluates another model (e.g. an EMA copy of the one being trained) with this
        trainer's
        [`calculate_eval_batch_loss`][trainwright.trainer.Trainer.calculate_eval_batch_loss], and
        records its loss.

        ``model`` stands in for `model` while the batches run (under
        ``torch.no_grad()`` and the trainer's mixed-precision autocast), in eval mode; its
        train/eval mode and `model` are restored afterwards. No callback events fire,
        so this is safe to call from a callback at any point of a run. The loss is the
        sample-weighted mean over all processes, as for ``eval_loss_epoch``.

        Args:
            model: the module to evaluate, already on
                [`device`][trainwright.trainer.Trainer.device].
            dataloader: a prepared dataloader; default `eval_dataloader`, limited to
                the batches that ``train()``'s ``max_num_eval_batches`` allows, so that the
                loss is comparable with ``eval_loss_epoch``. Called during a training
                epoch's steps (an intermediate evaluation), the batches are also limited by
                ``run_config.max_num_intermediate_eval_batches`` (see
                `LimitEvalStepsCallback`), whatever the dataloader.
            metric_name: recorded in the run history under this name (with the history's
                current metric-name prefix).

        Returns:
            The loss.

        Example:
            ```python
            with trainer.run_history.metric_name_prefix_as("ema_model_"):
                trainer.evaluate_model(ema.module)  # records ema_model_eval_loss_epoch
            ```
        """
        # During a training epoch's steps this is an intermediate evaluation, with its own limit.
        limits = self._plan.limits if self._plan is not None else BatchLimits()
        is_intermediate = self._epoch is not None and self._epoch.is_in_steps
        max_num_batches = limits.max_num_intermediate_eval_batches if is_intermediate else None
        if dataloader is None:
            dataloader = self.eval_dataloader
            max_num_batches = smaller_limit(max_num_batches, limits.max_num_eval_batches)
        if dataloader is None:
            raise ValueError(
                "evaluate_model() needs evaluation data: pass a dataloader, or an eval_dataset "
                "to train()."
            )
        trained_model, was_training = self.model, model.training
        self.model = model
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                epoch_loss = self._eval_batches(dataloader, max_num_batches, fires_events=False)
        finally:
            self.model = trained_model
            model.train(was_training)
        value = epoch_loss.compute()
        self.run_history.update_metric(metric_name, value)
        return value

    def predict(
        self,
        dataset: Dataset,
        per_device_batch_size: int = 8,
        dataloader_kwargs: dict[str, Any] | None = None,
        collate_fn: Callable | None = None,
    ) -> Any:
        """Runs the model over ``dataset`` and returns its outputs, in dataset order.

        The model runs in eval mode, under ``torch.no_grad()`` and the trainer's
        mixed-precision autocast, one batch at a time through `predict_batch` (by default the
        model applied to the batch's inputs). With several processes, each process predicts
        its share and the outputs are gathered on every process with Accelerate's
        `gather_for_metrics`, which drops the samples it repeats to even out the shards, so
        the result holds each sample once, in order. Tensors are concatenated along their
        first dimension; dicts, Hugging Face `ModelOutput`s and tuples are joined entry by
        entry (see `trainwright.prediction.concatenate_outputs`). It works before any
        ``train()``, and the model's train/eval mode is restored afterwards.

        Args:
            dataset: the data to predict on; each item is the model's inputs, ``(inputs,)``
                (a one-tensor ``TensorDataset``) or ``(inputs, targets)`` for the default
                `predict_batch`. It is never shuffled.
            per_device_batch_size: batch size of each process.
            dataloader_kwargs: overrides for the ``DataLoader`` (evaluation defaults).
            collate_fn: the dataloader's ``collate_fn``.

        Returns:
            The outputs over the whole dataset, on this process's device.

        Example:
            ```python
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            from trainwright import Trainer

            model = nn.Linear(4, 2)
            trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1))
            inputs = torch.randn(10, 4)
            predictions = trainer.predict(TensorDataset(inputs), per_device_batch_size=4)
            assert torch.allclose(predictions, model(inputs))
            ```
        """
        _check_data_arguments(
            "dataset", dataset, per_device_batch_size, dataloader_kwargs, collate_fn
        )
        self._prepare_model_and_optimizer()
        kwargs = merge_dataloader_kwargs(
            self.get_default_eval_dl_kwargs(per_device_batch_size),
            {**(dataloader_kwargs or {}), "shuffle": False},
            collate_fn,
        )
        dataloader = self._prepare_dataloader(create_dataloader(dataset, **kwargs), "predict")
        was_training = self.model.training
        self.model.eval()
        outputs = []
        try:
            self.callback_handler.call_event("on_predict_run_start", self)
            with torch.no_grad(), self.accelerator.autocast():
                for step, batch in enumerate(seeded_epoch(dataloader, self._data_seed())):
                    self.callback_handler.call_event(
                        "on_predict_step_start", self, batch=batch, step=step
                    )
                    batch_outputs = self.predict_batch(batch)
                    outputs.append(self.accelerator.gather_for_metrics(batch_outputs))
                    self.callback_handler.call_event(
                        "on_predict_step_end", self, batch=batch, outputs=batch_outputs, step=step
                    )
            predictions = concatenate_outputs(outputs)
            self.callback_handler.call_event("on_predict_run_end", self, predictions=predictions)
        except BaseException as exception:  # KeyboardInterrupt included: cleanup, then raise
            self._report_exception(exception)
            raise
        finally:
            self.model.train(was_training)
        return predictions

    def find_learning_rate(
        self,
        train_dataset: Dataset,
        per_device_batch_size: int = 8,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_steps: int = 100,
        smoothing: float = 0.05,
        divergence_factor: float = 4.0,
        dataloader_kwargs: dict[str, Any] | None = None,
        collate_fn: Callable | None = None,
    ) -> LearningRateFinderResult:
        """The learning-rate range test: trains for up to ``num_steps`` updates while the
        learning rate grows exponentially from ``start_lr`` to ``end_lr``, and suggests a
        learning rate: a tenth of the one with the lowest smoothed loss (see
        `trainwright.lr_finder`).

        Each update uses the trainer's own hooks (`calculate_train_batch_loss`,
        `backward_step`, `optimizer_step`), every parameter group gets the same learning
        rate, and no callback events fire. The loss is the mean over all processes (read on
        the host once per update: the test is short and not the training run). The test
        stops when the smoothed loss is more than ``divergence_factor`` times its lowest value
        or is not finite. Afterwards the model's weights and buffers, the gradients, the
        optimizer state (learning rates included), the scheduler, the gradient scaler and
        every random number generator are put back exactly as they were, so a ``train()``
        after it runs exactly as it would have without it.

        Args:
            train_dataset: the training data (iterated again if it has fewer batches than
                ``num_steps``).
            per_device_batch_size: batch size of each process, as for ``train()``.
            start_lr: the first learning rate tried.
            end_lr: the last learning rate tried.
            num_steps: how many updates (learning rates) to try.
            smoothing: weight of each new loss in the exponential moving average (0 < s <= 1;
                1 means no smoothing).
            divergence_factor: stop once the smoothed loss exceeds this multiple of its lowest
                value.
            dataloader_kwargs: overrides for the ``DataLoader`` (training defaults).
            collate_fn: the dataloader's ``collate_fn``.

        Returns:
            A `LearningRateFinderResult` with ``learning_rates``, ``losses``, ``suggestion``
            and ``plot()``.

        Example:
            ```python
            import torch
            from torch import nn
            from torch.utils.data import TensorDataset
            from trainwright import Trainer

            torch.manual_seed(0)
            dataset = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
            model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=())
            result = trainer.find_learning_rate(dataset, per_device_batch_size=16, num_steps=50)
            for group in optimizer.param_groups:  # use the suggestion for the real run
                group["lr"] = result.suggestion
            trainer.train(dataset, num_epochs=1, per_device_batch_size=16)
            ```
        """
        _check_data_arguments(
            "train_dataset", train_dataset, per_device_batch_size, dataloader_kwargs, collate_fn
        )
        check_positive_int("num_steps", num_steps)
        for name, value in (
            ("start_lr", start_lr),
            ("end_lr", end_lr),
            ("smoothing", smoothing),
            ("divergence_factor", divergence_factor),
        ):
            check_number(name, value)
        if not (0 < start_lr < end_lr):
            raise ValueError(
                f"find_learning_rate() needs 0 < start_lr < end_lr; got start_lr={start_lr!r}, "
                f"end_lr={end_lr!r}."
            )
        if not (0 < smoothing <= 1):
            raise ValueError(f"smoothing must be in (0, 1]; got {smoothing!r}.")
        if not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be above 1; got {divergence_factor!r}.")
        self._prepare_model_and_optimizer()
        snapshot = TrainerSnapshot(self)
        previous = (self.train_dataset, self.collate_fn, self.model.training)
        try:
            self.train_dataset, self.collate_fn = train_dataset, collate_fn
            dataloader = self._prepare_dataloader(
                self.create_train_dataloader(per_device_batch_size, dataloader_kwargs), "lr_finder"
            )
            result = self._run_learning_rate_range_test(
                _batches_forever(dataloader),
                learning_rate_schedule(start_lr, end_lr, num_steps),
                smoothing,
                divergence_factor,
            )
        finally:
            self.train_dataset, self.collate_fn = previous[:2]
            self.model.train(previous[2])
            snapshot.restore()
        if result.suggestion is None:
            warnings.warn(
                f"find_learning_rate() stopped after {len(result.losses)} updates, too few to "
                "suggest a learning rate: lower start_lr, or raise num_steps.",
                RuntimeWarning,
                stacklevel=2,
            )
        return result

    def _run_learning_rate_range_test(
        self,
        batches: Iterator[Any],
        learning_rates: list[float],
        smoothing: float,
        divergence_factor: float,
    ) -> LearningRateFinderResult:
        self.model.train()
        self.optimizer_zero_grad()
        result = LearningRateFinderResult(learning_rates=[], losses=[])
        average, best = 0.0, math.inf
        for index, learning_rate in enumerate(learning_rates):
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            batch_output = self.calculate_train_batch_loss(next(batches))
            loss, _ = _loss_and_batch_size(batch_output, "calculate_train_batch_loss")
            self.backward_step(loss)
            self.optimizer_step()
            self.optimizer_zero_grad()
            raw = self.accelerator.reduce(loss.detach().float(), reduction="mean").item()
            average = (1 - smoothing) * average + smoothing * raw
            smoothed = average / (1 - (1 - smoothing) ** (index + 1))  # bias-corrected
            result.learning_rates.append(learning_rate)
            result.raw_losses.append(raw)
            result.losses.append(smoothed)
            best = min(best, smoothed)
            if not math.isfinite(smoothed) or smoothed > divergence_factor * best:
                result.stopped_early = index + 1 < len(learning_rates)
                break
        result.suggestion = suggest(result.learning_rates, result.losses)
        result.steepest_lr = steepest(result.learning_rates, result.losses)
        return result

    # ----------------------------------------------------------------------------------------
    # Setting up a run: loaders, Accelerate, the scheduler
    # ----------------------------------------------------------------------------------------

    def _build_dataloaders(self, arguments: TrainArguments) -> None:
        """Builds and prepares the run's training and evaluation dataloaders."""
        self.train_dataloader = self._prepare_dataloader(
            self.create_train_dataloader(
                arguments.per_device_batch_size, arguments.train_dataloader_kwargs
            ),
            "train",
        )
        self.eval_dataloader = None
        if arguments.eval_dataset is not None:
            self.eval_dataloader = self._prepare_dataloader(
                self.create_eval_dataloader(
                    arguments.eval_batch_size, arguments.eval_dataloader_kwargs
                ),
                "eval",
            )

    def _prepare_model_and_optimizer(self) -> None:
        if not self._is_prepared:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
            self._is_prepared = True
            self._plain_optimizer = _plain_optimizer(self.accelerator, self.optimizer)

    def _is_sharded(self) -> bool:
        return self._is_prepared and is_sharded(self.accelerator, self.model)

    def _prepare_dataloader(self, dataloader: DataLoader, role: str) -> DataLoader:
        self._dataloader_settings[role] = _dataloader_settings(dataloader)
        dataloader = seeded_dataloader(dataloader)  # resumable randomness (trainwright.data)
        num_processes = self.accelerator.num_processes
        batch_size = dataloader.batch_size
        if self.accelerator.split_batches and batch_size and batch_size % num_processes:
            raise ValueError(
                f"With split_batches=True (Accelerate's dataloader_config), the {role} batch size "
                f"({batch_size}) is the batch of all {num_processes} processes together, split "
                f"among them, so it must be a multiple of {num_processes}. Pass a multiple of "
                f"{num_processes}, or leave split_batches off to give each process its own batch."
            )
        # On the CPU, training batches are where they need to be already: skipping
        # Accelerate's per-batch device transfer (a walk over the batch and a no-op .to() per
        # tensor) saves about 10 µs per step; the loader's ``device`` is then None. Evaluation
        # loaders keep it, as callbacks read ``eval_dataloader.device`` to place metrics.
        is_placement_needed = role != "train" or self.device.type != "cpu"
        prepared = self.accelerator.prepare_data_loader(
            dataloader, device_placement=is_placement_needed
        )
        if dataloader_length(prepared) == 0:  # None: no length, nothing to check up front
            raise ValueError(
                f"The {role} dataloader has no batches on this process (dataset of "
                f"{_length_or_unknown(dataloader.dataset)} samples, batch size "
                f"{dataloader.batch_size}, drop_last={dataloader.drop_last}). Use a smaller "
                "batch size, more data, or drop_last=False."
            )
        return prepared

    def _create_run_scheduler(self, arguments: TrainArguments) -> None:
        """Creates the run's scheduler from ``create_scheduler_fn`` (placeholders resolved
        with the plan's run config), and adds how it is stepped to the plan."""
        self.scheduler = self.create_scheduler_fn = None
        if arguments.create_scheduler_fn is not None:
            self.create_scheduler_fn = resolve_placeholders(
                arguments.create_scheduler_fn, self.run_config
            )
            self.scheduler = self._call_create_scheduler()
            _check_scheduler(self.scheduler)
        metric = arguments.scheduler_metric
        stepping = scheduler_stepping(self.scheduler, arguments.scheduler_step_interval, metric)
        self._plan = self._plan.with_scheduler(stepping)
        if self.scheduler is not None and metric is not None:
            check_metric_will_be_recorded(self, metric, "scheduler_metric")

    def _call_create_scheduler(self) -> Any:
        # pytorch-accelerated's override takes no argument; ours receives the factory.
        if inspect.signature(self.create_scheduler).parameters:
            scheduler = self.create_scheduler(self.create_scheduler_fn)
        else:
            scheduler = self.create_scheduler()
        if getattr(scheduler, "optimizer", None) is self.optimizer:
            # Built on Accelerate's wrapper (an override passing self.optimizer): step the
            # wrapper, whose step() a torch scheduler watches, not the optimizer inside.
            self._plain_optimizer = None
        return scheduler

    def _report_exception(self, exception: BaseException) -> None:
        """Fires ``on_exception`` once for ``exception``, which then propagates."""
        if isinstance(exception, StopTrainingError) or getattr(
            exception, "_trainwright_reported", False
        ):
            return
        exception._trainwright_reported = True  # evaluate() inside train(): report once
        try:
            self.callback_handler.call_event("on_exception", self, exception=exception)
        except Exception as cleanup_error:  # never hide the original exception
            warnings.warn(
                f"{type(cleanup_error).__name__} in on_exception while handling "
                f"{type(exception).__name__}: {cleanup_error}",
                RuntimeWarning,
                stacklevel=2,
            )

    # ----------------------------------------------------------------------------------------
    # Hooks: override these in a subclass to change one part of the loop
    # ----------------------------------------------------------------------------------------

    def get_default_train_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The training ``DataLoader`` settings before the ``collate_fn`` and
        ``train_dataloader_kwargs`` given to ``train()`` are applied: shuffled, except an
        ``IterableDataset``, whose order is its own (``DataLoader`` rejects ``shuffle=True``
        for one); see `trainwright.data.default_dataloader_kwargs`. A plain `TensorDataset`
        without a ``collate_fn`` is loaded in the main process (``num_workers=0``): each batch
        is one indexing call, read straight from the tensors (see
        `trainwright.data.is_read_in_memory`), which worker processes could only slow down;
        pass ``num_workers`` in ``train_dataloader_kwargs`` to have workers anyway.

        An override may return any settings: ``train()``'s ``collate_fn`` still applies, and
        ``persistent_workers`` is decided from the final ``num_workers`` (see
        `trainwright.data.merge_dataloader_kwargs`). It does not change the evaluation
        defaults (`get_default_eval_dl_kwargs`).

        Example:
            ```python
            from trainwright import Trainer


            class NoShuffleTrainer(Trainer):
                def get_default_train_dl_kwargs(self, batch_size):
                    return {**super().get_default_train_dl_kwargs(batch_size), "shuffle": False}
            ```
        """
        kwargs = self._default_dl_kwargs(
            batch_size, is_shuffled=not isinstance(self.train_dataset, IterableDataset)
        )
        if is_batched_fetch_exact(self.train_dataset, kwargs):
            kwargs["num_workers"] = 0  # read in memory: workers would only add copies
        return kwargs

    def get_default_eval_dl_kwargs(self, batch_size: int) -> dict[str, Any]:
        """The evaluation ``DataLoader`` settings before the ``collate_fn`` and
        ``eval_dataloader_kwargs`` (``dataloader_kwargs`` of ``evaluate()``) are applied: not
        shuffled, every sample kept. Independent of `get_default_train_dl_kwargs`, so that
        training-only settings of an override (``drop_last``, a sampler) never reach
        evaluation."""
        return self._default_dl_kwargs(batch_size, is_shuffled=False)

    def _default_dl_kwargs(self, batch_size: int, is_shuffled: bool) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "collate_fn": self.collate_fn,
            **default_dataloader_kwargs(
                shuffle=is_shuffled, device=self.device, num_local_processes=_num_local_processes()
            ),
        }

    def create_train_dataloader(
        self, batch_size: int, train_dl_kwargs: dict[str, Any] | None = None
    ) -> DataLoader:
        """Builds the training ``DataLoader`` over `train_dataset` (before Accelerate
        prepares it for the device and processes), from `get_default_train_dl_kwargs`,
        ``train()``'s ``collate_fn`` and ``train_dl_kwargs`` (see
        `trainwright.data.merge_dataloader_kwargs`: a ``sampler`` or ``batch_sampler``
        there replaces the default shuffling and batching). It is built with
        `trainwright.data.create_dataloader`: a `TensorDataset` without a ``collate_fn`` is
        read one batch per indexing call."""
        kwargs = merge_dataloader_kwargs(
            self.get_default_train_dl_kwargs(batch_size), train_dl_kwargs, self.collate_fn
        )
        return create_dataloader(self.train_dataset, **kwargs)

    def create_eval_dataloader(
        self, batch_size: int, eval_dl_kwargs: dict[str, Any] | None = None
    ) -> DataLoader:
        """Builds the evaluation ``DataLoader`` over `eval_dataset`, like
        `create_train_dataloader` from `get_default_eval_dl_kwargs`."""
        kwargs = merge_dataloader_kwargs(
            self.get_default_eval_dl_kwargs(batch_size), eval_dl_kwargs, self.collate_fn
        )
        return create_dataloader(self.eval_dataset, **kwargs)

    def create_scheduler(
        self, create_scheduler_fn: Callable[[torch.optim.Optimizer], Any] | None = None
    ) -> Any:
        """Creates the scheduler from the factory given to ``train()`` (placeholders already
        resolved; also available as `self.create_scheduler_fn`). It receives the user's
        optimizer, not Accelerate's wrapper.

        An override may take the factory as its argument, or no argument at all and read
        `self.create_scheduler_fn`, as pytorch-accelerated's `create_scheduler(self)` does;
        the trainer calls either form.

        Example:
            ```python
            class OneCycleTrainer(Trainer):
                def create_scheduler(self):
                    return self.create_scheduler_fn(
                        self.optimizer, total_steps=self.run_config.num_update_steps
                    )
            ```
        """
        if create_scheduler_fn is None:
            create_scheduler_fn = self.create_scheduler_fn
        return create_scheduler_fn(getattr(self.optimizer, "optimizer", self.optimizer))

    def training_run_start(self) -> None:
        """Called once at the start of ``train()``, before ``on_training_run_start``."""

    def training_run_end(self) -> None:
        """Called once at the end of ``train()``, also after an early stop."""

    def train_epoch_start(self) -> None:
        """Puts the model in training mode at the start of every training epoch."""
        self.model.train()

    def train_epoch_end(self) -> None:
        """Called at the end of every training epoch, before ``train_loss_epoch`` is
        recorded."""

    def eval_epoch_start(self) -> None:
        """Puts the model in evaluation mode at the start of every evaluation epoch."""
        self.model.eval()

    def eval_epoch_end(self) -> None:
        """Called at the end of every evaluation epoch, before its loss is recorded."""

    def training_run_epoch_end(self) -> None:
        """Called after each epoch's training and evaluation."""

    def evaluation_run_start(self) -> None:
        """Called at the start of [`evaluate`][trainwright.trainer.Trainer.evaluate]."""

    def evaluation_run_end(self) -> None:
        """Called at the end of [`evaluate`][trainwright.trainer.Trainer.evaluate]."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        """Computes the loss of one training batch.

        The default expects ``batch`` to be ``(inputs, targets)``. Override it for any
        other batch structure; return the batch's unscaled *mean* loss (gradient
        accumulation is handled by the loop).

        The loop weighs each batch by the number of items its loss averages over, so that
        an accumulated update is the mean over every item of its window on every process:
        ``batch_size`` by default, or ``num_items`` when returned, e.g. the number of target
        tokens of a language model's batch (``(labels != -100).sum()``, an int or a 0-dim
        tensor, read without a host sync). pytorch-accelerated's ``num_items_in_batch`` is
        read as ``num_items``. A batch with no items must return a finite loss (e.g.
        ``sum / max(count, 1)``), which it then does not weigh in.

        Returns:
            ``{"loss": scalar tensor, "model_outputs": ..., "batch_size": int}``, optionally
            with ``"num_items"``; the epoch's loss metrics are weighted the same way.

        Example:
            ```python
            class DictBatchTrainer(Trainer):
                def calculate_train_batch_loss(self, batch):
                    outputs = self.model(batch["pixels"])
                    loss = self.loss_func(outputs, batch["label"])
                    return {"loss": loss, "model_outputs": outputs,
                            "batch_size": batch["label"].size(0)}
            ```
        """
        inputs, targets = _inputs_and_targets(batch, "calculate_train_batch_loss")
        model_outputs = self.model(inputs)
        loss = self.loss_func(model_outputs, targets)
        return {"loss": loss, "model_outputs": model_outputs, "batch_size": targets.size(0)}

    def calculate_eval_batch_loss(self, batch: Any) -> dict[str, Any]:
        """Computes the loss of one evaluation batch (runs under ``torch.no_grad()``).

        Same contract as
        [`calculate_train_batch_loss`][trainwright.trainer.Trainer.calculate_train_batch_loss].
        """
        inputs, targets = _inputs_and_targets(batch, "calculate_eval_batch_loss")
        model_outputs = self.model(inputs)
        loss = self.loss_func(model_outputs, targets)
        return {"loss": loss, "model_outputs": model_outputs, "batch_size": targets.size(0)}

    def predict_batch(self, batch: Any) -> Any:
        """Computes the model outputs of one batch for `predict` (runs under
        ``torch.no_grad()``, in eval mode).

        The default applies the model to the batch's inputs: the batch itself for a tensor,
        ``model(**batch)`` for a mapping (e.g. a tokenizer's output), the first item of
        ``(inputs,)`` or ``(inputs, targets)``.

        Returns:
            The outputs: a tensor, or a dict / ``ModelOutput`` / tuple of tensors whose first
            dimension is the batch's.

        Example:
            ```py title="not run"
            class ProbabilitiesTrainer(Trainer):
                def predict_batch(self, batch):
                    return self.model(batch[0]).softmax(dim=-1)
            ```
        """
        inputs = predict_inputs(batch)
        if isinstance(inputs, Mapping):
            return self.model(**inputs)
        return self.model(inputs)

    def backward_step(self, loss: torch.Tensor) -> None:
        """Computes gradients of ``loss`` (scaled for mixed precision by Accelerate)."""
        if self._plain_optimizer is not None:
            loss.backward()  # all Accelerate's backward() does in this setup
        else:
            self.accelerator.backward(loss)

    def optimizer_step(self) -> None:
        """Updates the parameters."""
        if self._plain_optimizer is not None:
            self._plain_optimizer.step()
        else:
            self.optimizer.step()

    def scheduler_step(self) -> None:
        """Advances the scheduler after an optimizer update that happened (not called for a
        scheduler stepped per epoch): ``step_update(num_updates=updates done so far)`` for a
        timm-style scheduler, ``step()`` for any other."""
        if self._scheduler_stepping.is_timm:
            self.scheduler.step_update(num_updates=self.progress.num_update_steps)
        else:
            self.scheduler.step()

    def scheduler_epoch_step(self) -> None:
        """Advances a scheduler stepped per epoch, after ``on_training_run_epoch_end`` (so
        every metric of the epoch is recorded).

        ``ReduceLROnPlateau`` gets the latest value of ``scheduler_metric``; a timm-style
        scheduler gets ``step(epoch=epochs completed, metric=...)``, which sets the learning
        rate of the epoch about to start; any other scheduler gets ``step()``.

        Example:
            ```python
            class LoggingTrainer(Trainer):
                def scheduler_epoch_step(self):
                    super().scheduler_epoch_step()
                    self.print("next epoch's LR:", self.optimizer.param_groups[0]["lr"])
            ```
        """
        metric = None
        metric_name = self._scheduler_stepping.metric
        if metric_name is not None:
            metric = read_watched_metric(self, metric_name, "scheduler_metric")
        if self._scheduler_stepping.is_timm:
            self.scheduler.step(epoch=self.progress.epoch + 1, metric=metric)
        elif metric is not None:
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def optimizer_zero_grad(self) -> None:
        """Clears the gradients after an update."""
        if self._plain_optimizer is not None:
            self._plain_optimizer.zero_grad()
        else:
            self.optimizer.zero_grad()

    # ----------------------------------------------------------------------------------------
    # Control from callbacks and hooks: the same decision on every process
    # ----------------------------------------------------------------------------------------

    #: Whether hooks of this Trainer (subclass) may call `request_skip_update` on some
    #: processes only; see ``TrainerCallback.may_skip_updates``.
    may_skip_updates: bool = False

    #: In a multi-process run, how many training steps apart the processes combine their
    #: requests (`request_stop`, a `StopTrainingError`, `request_end_epoch`,
    #: `request_evaluation`, `request_save`, SIGTERM / SIGINT): one small all-reduce, started
    #: without waiting, every ``vote_interval`` steps, and none at the other steps. A request
    #: made during step ``k`` of an epoch takes effect at the end of step
    #: ``vote_interval * (k // vote_interval + 1)`` on every process (the first step after ``k``
    #: whose index is a multiple of ``vote_interval``), or after the epoch's last step if that
    #: comes first; ``1`` acts one step after the request, at the cost of a collective per
    #: step. With one process, requests take effect at the end of the current step whatever
    #: the interval. Set it on the class or on the trainer before ``train()``. ``None`` (the
    #: default): 16 steps, or 64 when the processes talk over gloo (CPU processes), where one
    #: collective costs about as much as a small model's step (see
    #: `trainwright.run_control.default_vote_interval`).
    vote_interval: int | None = None

    #: Names of the metrics the hooks of this Trainer subclass record in the run history
    #: (e.g. ``("accuracy",)`` for an ``eval_epoch_end`` that computes it), as callbacks
    #: declare theirs: early stopping, best-model saving and ``scheduler_metric`` then know
    #: the metric will be recorded. Undeclared, such a metric draws a warning when the run
    #: starts and is checked when first read, at the end of the first epoch.
    writes_metrics: tuple[str, ...] = ()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Asks to end the run, like raising `StopTrainingError` but without leaving
        the calling callback or hook: the run stops at the end of the current training step
        (with several processes, on every process at the end of the step the processes next
        agree on it, at most `vote_interval` steps later), or of the current
        epoch-level event (``on_training_run_start``, ``on_train_epoch_end``, the evaluation
        epoch, ``on_training_run_epoch_end``). ``on_stop_training_error`` then receives a
        ``StopTrainingError(reason)``.

        Example:
            ```python
            class StopWhenGoodEnough(TrainerCallback):
                def on_training_run_epoch_end(self, trainer, **kwargs):
                    if trainer.run_history.get_latest_metric("eval_loss_epoch") < 0.1:
                        trainer.request_stop("eval loss below 0.1")
            ```
        """
        self._run_control.request_stop(StopTrainingError(reason))

    def request_end_epoch(self) -> None:
        """Asks to end the current training epoch early; the run goes on with the epoch's
        evaluation and epoch-end events, then the next epoch.

        Asked during a training step (or ``on_train_epoch_start``), the epoch ends after the
        current step with one process; with several, every process ends it after the same step,
        the step the processes next agree on it (at most `vote_interval` steps later, without a
        collective per step). Gradients of an
        unfinished accumulation window are discarded. Asked elsewhere, it is ignored.

        Example:
            ```python
            class ShortEpochs(TrainerCallback):
                def on_train_step_end(self, trainer, step, **kwargs):
                    if step == 99:
                        trainer.request_end_epoch()
            ```
        """
        self._run_control.request_at_step_end(END_EPOCH)

    def request_evaluation(self) -> None:
        """Asks for an evaluation at the end of the current training step (with several
        processes, at the end of the step they next agree on it, on every process; see
        `vote_interval`):
        [`evaluate_model`][trainwright.trainer.Trainer.evaluate_model] on the training model and the
        ``eval_dataset`` given to ``train()``, recording ``step_eval_loss``. Asked outside a step,
        it happens at the end of the next step.

        Raises:
            ValueError: if the run has no evaluation data.

        Example:
            ```python
            class EvaluateWhenTheLossSpikes(TrainerCallback):
                def on_train_step_end(self, trainer, batch_output, **kwargs):
                    if batch_output["loss"].item() > 10:  # a host sync, every step
                        trainer.request_evaluation()
            ```
        """
        if self.eval_dataloader is None:
            raise ValueError(
                "request_evaluation() needs evaluation data: pass eval_dataset to train()."
            )
        self._run_control.request_at_step_end(EVALUATE)

    def request_save(self) -> None:
        """Asks for a training state to be saved at the end of the current training step
        (with several processes, at the end of the step they next agree on it, on every
        process; see `vote_interval`), by the trainer's
        [`SaveTrainingStateCallback`][trainwright.callbacks.saving.SaveTrainingStateCallback] (in
        its ``save_dir``, with its pruning), after any requested evaluation. Asked outside a step,
        it happens at the end of the next step.

        Raises:
            ValueError: if the trainer has no ``SaveTrainingStateCallback``.

        Example:
            ```python
            class SaveBeforeRiskyPhase(TrainerCallback):
                def on_train_epoch_start(self, trainer, **kwargs):
                    if trainer.progress.epoch == 10:
                        trainer.request_save()
            ```
        """
        self._run_control.request_save()  # fails now, on the process that asks, if it cannot

    def _act_on_step_end_requests(self, requests: int, step: int) -> bool:
        """Evaluates and saves as requested; returns whether to end the epoch now."""
        if requests & EVALUATE:
            self.evaluate_model(self.model, metric_name="step_eval_loss")
        if requests & SAVE:
            self._run_control.state_saver().save(self)
        if requests & END_EPOCH:
            if not self._plan.is_update_step(step, self._epoch.num_batches):
                self.optimizer_zero_grad()  # discard the unfinished accumulation window
                self._item_weighting.discard_window()
            return True
        return False

    def request_skip_update(self, reason: str = "skip requested") -> None:
        """Asks to skip the optimizer update of the current accumulation window: its
        gradients are discarded, and the optimizer, scheduler, gradient scaler and
        ``on_after_optimizer_step`` (where the EMA is updated) do not step. The skipped update
        still counts in ``progress.num_update_steps`` (the schedule is not lengthened), is
        counted in ``progress.num_skipped_updates`` and logged (logger
        ``trainwright.trainer``, level INFO).

        Ask up to ``on_before_optimizer_step``; asked later in a step, it applies to the
        next update. With several processes every process skips when any asked; this needs
        ``may_skip_updates = True`` on the asking callback (or Trainer subclass), which costs
        one small blocking all-reduce per update.

        Raises:
            RuntimeError: with several processes, if nothing declared ``may_skip_updates``.

        Example:
            ```python
            class SkipHugeGradients(TrainerCallback):
                may_skip_updates = True

                def on_before_optimizer_step(self, trainer, **kwargs):
                    norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in trainer.model.parameters() if p.grad is not None])
                    if norm > 1e3:  # a host sync: only for callbacks that need it
                        trainer.request_skip_update(f"gradient norm {norm:.3g}")
            ```
        """
        self._run_control.request_skip_update(reason)

    def _is_update_skipped(self) -> bool:
        reason = self._run_control.skipped_update_reason()  # the same on every process
        if reason is not None:
            self.progress.num_skipped_updates += 1
            _logger.info(
                "Skipped optimizer update %d (epoch %d, step %d): %s",
                self.progress.num_update_steps + 1,
                self.progress.epoch,
                self.progress.step,
                reason,
            )
        return reason is not None

    # ----------------------------------------------------------------------------------------
    # Checkpoints and training states: everything needed to continue a run exactly
    # ----------------------------------------------------------------------------------------

    def save_checkpoint(
        self,
        save_path: str | os.PathLike,
        checkpoint_kwargs: dict[str, Any] | None = None,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        save_per_node: bool = False,
    ) -> None:
        """Saves a portable checkpoint: the unwrapped model's weights, optionally the
        optimizer and scheduler state, and any extra entries, in one ``.pt`` file.

        The file is written atomically by the main process (by the main process of every
        machine with ``save_per_node``) and loads with ``torch.load(path,
        weights_only=True)``. Call it on every process (weights sharded by FSDP or DeepSpeed
        are gathered first).

        Args:
            save_path: the file to write.
            checkpoint_kwargs: extra entries to store, e.g. ``{"epoch": 3}``; plain Python
                values and tensors only.
            save_optimizer: include the optimizer state.
            save_scheduler: include the scheduler state, when there is a scheduler.
            save_per_node: write the file on every machine (for disks that are not shared).

        Example:
            ```python
            trainer.save_checkpoint("model.pt", checkpoint_kwargs={"eval_loss": 0.12})
            ```
        """
        is_sharded = self._is_sharded()
        checkpoint = {MODEL_STATE_KEY: self._portable_model_state_dict()}
        if save_optimizer:
            checkpoint[OPTIMIZER_STATE_KEY] = (
                full_optimizer_state_dict(self.model, self.optimizer)
                if is_sharded
                else self.optimizer.state_dict()
            )
        if save_scheduler and hasattr(self.scheduler, "state_dict"):
            checkpoint[SCHEDULER_STATE_KEY] = self.scheduler.state_dict()
        for key, value in (checkpoint_kwargs or {}).items():
            if key in (MODEL_STATE_KEY, OPTIMIZER_STATE_KEY, SCHEDULER_STATE_KEY):
                raise ValueError(f"checkpoint_kwargs may not use the reserved key {key!r}.")
            checkpoint[key] = value
        is_writer = (
            self.accelerator.is_local_main_process
            if save_per_node
            else self.accelerator.is_main_process
        )
        if is_writer:
            atomic_save(checkpoint, save_path)
        self.accelerator.wait_for_everyone()

    def _portable_model_state_dict(self) -> dict[str, Any]:
        """The plain model's weights: keys as in the uncompiled, unwrapped model."""
        if can_forward_alone(self.accelerator):  # every process holds the whole model
            return self.get_model().state_dict()
        # Sharded weights (FSDP, DeepSpeed) are gathered by Accelerate, from the model
        # without its torch.compile wrapper, whose key prefix the plain model lacks.
        return self.accelerator.get_state_dict(_without_compile_wrappers(self.model))

    def load_checkpoint(
        self,
        checkpoint_path: str | os.PathLike,
        load_optimizer: bool = True,
        load_scheduler: bool = True,
    ) -> dict[str, Any]:
        """Loads a checkpoint written by `save_checkpoint` (with ``weights_only=True``).

        Args:
            checkpoint_path: the ``.pt`` file.
            load_optimizer: restore the optimizer state, when the file has it.
            load_scheduler: restore the scheduler state, when the file and trainer have one.

        Returns:
            The whole checkpoint, as pytorch-accelerated returns it: ``"model_state_dict"``
            (and ``"optimizer_state_dict"`` / ``"scheduler_state_dict"`` when saved) and the
            entries given as ``checkpoint_kwargs`` (``ckpt["epoch"]``).

        Raises:
            RuntimeError: if the weights do not fit the model; the message lists the missing
                and unexpected keys.
        """
        checkpoint = load_checkpoint_file(checkpoint_path)
        is_sharded = self._is_sharded()
        if is_sharded:  # every process loads the full weights, keeping its shard
            load_full_model_state_dict(self.model, checkpoint[MODEL_STATE_KEY])
        else:
            self.get_model().load_state_dict(checkpoint[MODEL_STATE_KEY])
        optimizer_state = checkpoint.get(OPTIMIZER_STATE_KEY)
        if load_optimizer and optimizer_state is not None:
            if is_sharded:
                load_full_optimizer_state_dict(self.model, self.optimizer, optimizer_state)
            else:
                self.optimizer.load_state_dict(optimizer_state)
        scheduler_state = checkpoint.get(SCHEDULER_STATE_KEY)
        if load_scheduler and scheduler_state is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(scheduler_state)
        return checkpoint

    def save_training_state(
        self, save_dir: str | os.PathLike, checkpoint_kwargs: dict[str, Any] | None = None
    ) -> Path:
        """Saves everything needed to continue this run exactly, as one directory.

        The state holds the model, optimizer, gradient scaler and every RNG (Python, NumPy,
        torch, CUDA; through Accelerate's ``save_state``, sharded under FSDP / DeepSpeed),
        the scheduler, the loop position ([`progress`][trainwright.callbacks.progress]: epoch, batch
        within the epoch, optimizer updates), the gradients accumulated so far in the current
        accumulation window, the epoch's partial loss sums, the sampler's generator (now and at the
        epoch's start) and the epoch's data seed (for the batch order and every random augmentation,
        see `trainwright.data`), the run history, and every callback's
        `state_dict()`. It warns (`RuntimeWarning`) when the training data is of a kind whose
        random draws a resume cannot replay (see docs/checkpoints.md).

        The directory is written atomically: complete, or absent (a save interrupted even by
        SIGKILL leaves the previous state intact). Call it on every process, between steps
        (e.g. from ``on_train_step_end`` or an epoch-end event). Values recorded in the run
        history and callback states must be numbers, strings, tensors or containers of them.

        Args:
            save_dir: the state directory to write.
            checkpoint_kwargs: extra entries stored with the state (numbers, strings,
                tensors), which `load_training_state` returns.

        Returns:
            The directory written.

        Example:
            ```python
            class SaveAtStep(TrainerCallback):
                def on_train_step_end(self, trainer, step, **kwargs):
                    if trainer.progress.num_update_steps == 100:
                        trainer.save_training_state("checkpoints/state-100")
            ```
        """
        reason = inexact_resume_reason(self.train_dataloader)
        if reason is not None:
            warnings.warn(
                f"A run resumed from this training state continues exactly only if its data "
                f"draws no random numbers from the global RNGs: {reason}. See "
                "docs/checkpoints.md for the set-ups that resume exactly.",
                RuntimeWarning,
                stacklevel=2,
            )
        extra = dict(checkpoint_kwargs or {})
        return _save_training_state_directory(
            self.accelerator, save_dir, lambda: {**self._trainer_state(), "extra": extra}
        )

    def load_training_state(self, load_dir: str | os.PathLike) -> dict[str, Any]:
        """Loads a state written by `save_training_state` into this trainer: model,
        optimizer, scaler, RNGs, scheduler (when the trainer has one), run history, progress
        and callback states. To continue training from it, use
        ``train(..., resume_from=load_dir)`` instead, which also restores the position in
        the data.

        Returns:
            The ``checkpoint_kwargs`` the state was saved with (as pytorch-accelerated).

        Raises:
            FileNotFoundError: if ``load_dir`` does not exist.
            ValueError: if it is incomplete or damaged (an ``InvalidTrainingStateError``
                naming the file, found by checking every file against the state's
                manifest), or was saved from a different model (nothing is loaded then).
        """
        directory = Path(load_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"No training state directory at {str(directory)!r}.")
        self._check_training_state(directory)
        state = self._read_training_state(directory)
        self._prepare_model_and_optimizer()
        self._restore_training_state(Path(load_dir), state)
        self.callback_handler.load_state_dict(state["callbacks"])
        self._resume_position = None
        return dict(state.get("extra", {}))

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "format": TRAINING_STATE_FORMAT,
            "progress": dataclasses.asdict(self.progress),
            "run": self._run_facts(),
            "model_signature": _model_signature(self.get_model()),
            "run_history": self.run_history.state_dict(),
            "callbacks": self.callback_handler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch_start": self._epoch.start_state if self._epoch is not None else None,
            "sampler": _generator_state(self.train_dataloader),
            "train_loss": self._train_loss.state_dict(),
            "accumulation": self._item_weighting.state_dict(),
            "gradients": local_gradients(self.model),
        }

    def _run_facts(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one for the resume to be exact."""
        config = self.run_config
        if config is None:
            return {}
        dataset = self.train_dataset
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate's wrapper
        return {
            "train dataset length": len(dataset) if isinstance(dataset, Sized) else None,
            "per_device_batch_size": config.train_per_device_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "num_processes": config.num_processes,
            "train_dataloader_len": config.train_dataloader_len,
            # A state's optimizer entries only fit an optimizer of the same type, and a run of
            # another length has other schedules and another end: both refused, not guessed.
            "optimizer": type(optimizer).__name__,
            "num_epochs": config.num_epochs,
            "num_update_steps": config.num_update_steps,
        }

    def _find_resume_state(
        self, resume_from: str | os.PathLike | None
    ) -> tuple[Path | None, dict[str, Any] | None]:
        """The state to resume from and this process's trainer state read from it. Every
        state is verified against its manifest first; from a directory of states (or
        "latest"), a state that fails is skipped with a warning for the newest valid one."""
        if resume_from is None:
            return None, None
        is_latest = str(resume_from) == "latest"
        if is_latest:
            savers = [
                callback
                for callback in self.callback_handler.callbacks
                if isinstance(callback, SaveTrainingStateCallback)
            ]
            if not savers:
                raise ValueError(
                    "resume_from='latest' needs a SaveTrainingStateCallback: the newest state "
                    "is looked for in its save_dir. Add one, or pass a state directory."
                )
            target = savers[0].save_dir
        else:
            target = Path(resume_from)
            if target.is_file():
                raise ValueError(
                    f"resume_from takes a training-state directory (written by "
                    f"save_training_state or SaveTrainingStateCallback), but {str(target)!r} "
                    "is a file. To start training from the weights of a checkpoint file, call "
                    f"trainer.load_checkpoint({str(target)!r}) before train() instead."
                )
        # Leftovers of killed saves go first: a state moved aside by a re-save comes back.
        if self.accelerator.is_main_process:
            if not is_latest:
                clean_up_training_states(target.parent, name=target.name)
            if not is_training_state(target):  # a directory of states
                clean_up_training_states(target)
        self.accelerator.wait_for_everyone()
        explicit, states_dir = None, target
        if not is_latest and (target.name.endswith(STAGING_SUFFIX) or is_training_state(target)):
            explicit = target
        candidates, error = [], None
        try:
            candidates = _resume_candidates(explicit, states_dir, is_latest)
        except FileNotFoundError as caught:  # raised below, on every process
            error = caught
        # Each process looked on its own file system (a machine's own disk, without shared
        # storage): they agree before any state is verified or read.
        check_same_training_states(self.accelerator, resume_from, candidates, error)
        if explicit is not None:
            self._check_training_state(explicit)
            return explicit, self._read_training_state(explicit)
        if not candidates:
            self.print(f"No training state in {states_dir} yet: starting afresh.")
            return None, None
        problems = []
        for directory in candidates:
            problem = self._training_state_problem(directory)
            if problem is None:
                return directory, self._read_training_state(directory)
            problems.append(problem)
            warnings.warn(
                f"Skipping the training state {str(directory)!r}: {problem} Falling back to "
                "the next older state.",
                RuntimeWarning,
                stacklevel=3,
            )
        raise InvalidTrainingStateError(
            f"None of the {len(candidates)} training states in {str(states_dir)!r} can be "
            "used, so nothing was loaded rather than silently starting afresh: "
            + " ".join(problems)
            + " Delete them to start afresh, or restore a good copy."
        )

    def _check_training_state(self, directory: Path) -> None:
        problem = self._training_state_problem(directory)
        if problem is not None:
            raise InvalidTrainingStateError(
                f"Cannot use the training state {str(directory)!r}: {problem} Nothing was loaded."
            )

    def _training_state_problem(self, directory: Path) -> str | None:
        """What is wrong with a state (None when it is valid), as every process agrees: each
        node's first process verifies the files it sees."""
        problem = None
        num_processes = self.accelerator.num_processes
        missing = missing_state_parts(directory, num_processes) if num_processes > 1 else []
        if missing:
            problem = (
                f"process {self.accelerator.process_index} (host {socket.gethostname()}) does "
                f"not see {', '.join(missing)}: every process must see the whole state, which "
                "all processes write into one directory (with a save_dir on each machine's own "
                "disk, each machine holds only its own processes' part). Save to storage every "
                "machine shares, or copy the whole state directory onto every machine."
            )
        elif self.accelerator.is_local_main_process:
            try:
                verify_training_state(directory)
            except InvalidTrainingStateError as error:
                problem = str(error)
        problems = [p for p in gather_object([problem]) if p is not None]
        return problems[0] if problems else None

    def _read_training_state(self, directory: Path) -> dict[str, Any]:
        state = read_trainer_state(directory, self.accelerator.process_index)
        saved, current = state["model_signature"], _model_signature(self.get_model())
        if saved != current:
            missing = sorted(set(current) - set(saved))
            unexpected = sorted(set(saved) - set(current))
            resized = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
            raise ValueError(
                f"The training state in {str(directory)!r} was saved from a different model. "
                f"Missing from the state: {missing or 'none'}; not in this model: "
                f"{unexpected or 'none'}; different shapes: {resized or 'none'}. Nothing was "
                "loaded."
            )
        return state

    def _check_resume_matches_run(self, directory: Path, state: dict[str, Any]) -> None:
        epoch_start = state["epoch_start"]
        if epoch_start is not None and "data_seed" not in epoch_start:
            raise ValueError(
                f"Cannot resume from {str(directory)!r}: it was saved by an earlier trainwright, "
                "whose data randomness a resume cannot replay exactly. Start the run afresh "
                "(or load_training_state() it to use its weights). Nothing was loaded."
            )
        current = self._run_facts()
        for name, saved_value in state["run"].items():
            if current.get(name) != saved_value:
                raise ValueError(
                    f"Cannot resume from {str(directory)!r}: it was saved with {name}="
                    f"{saved_value}, now {current.get(name)}. Resume with the same data and "
                    "settings as the saved run. Nothing was loaded."
                )

    def _resume(self, directory: Path, state: dict[str, Any]) -> None:
        """Continues from the training state in ``directory`` (``state``: its trainer state,
        read by ``_find_resume_state``) once the run is planned: checks that the state fits
        the run, restores it and says so."""
        self._check_resume_matches_run(directory, state)
        self._restore_training_state(directory, state)
        self._report_resume(directory)

    def _restore_training_state(self, directory: Path, state: dict[str, Any]) -> None:
        # Accelerate restores the model, optimizer, scaler and every RNG (to the saved step).
        self.accelerator.load_state(str(directory))
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.run_history.load_state_dict(state["run_history"])
        self.progress = TrainingProgress(**state["progress"])
        restore_local_gradients(self.model, state["gradients"])
        if "accumulation" in state:  # states saved before accumulation was item-weighted
            self._item_weighting.load_state_dict(state["accumulation"])
        if self.progress.is_epoch_finished:  # saved during the epoch's last events
            # The next epoch's order comes from the sampler's generator as it is now (with
            # several processes, a generator of Accelerate's that save_state does not keep).
            _set_generator_state(self.train_dataloader, state["sampler"])
            self._finish_epoch()
        elif self.progress.num_batches_done > 0:  # saved mid-epoch: continue that epoch
            self._resume_position = {
                "train_loss": state["train_loss"],
                "epoch_start": state["epoch_start"],
            }

    def _report_resume(self, directory: Path) -> None:
        progress = self.progress
        within_epoch = (
            f" ({progress.num_batches_done} batches into the epoch)"
            if progress.num_batches_done
            else ""
        )
        self.print(
            f"Resumed from {str(directory)!r} at epoch {self.run_history.current_epoch}, update "
            f"{progress.num_update_steps}{within_epoch}."
        )

    # ----------------------------------------------------------------------------------------
    # Pass-throughs to Accelerate, and the callbacks' list
    # ----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.accelerator.device

    @property
    def _accelerator(self) -> Accelerator:
        """Alias of `accelerator` (the name used by pytorch-accelerated)."""
        return self.accelerator

    @property
    def _train_dataloader(self) -> DataLoader | None:
        """Alias of `train_dataloader` (the name used by pytorch-accelerated); assignable."""
        return self.train_dataloader

    @_train_dataloader.setter
    def _train_dataloader(self, dataloader: DataLoader | None) -> None:
        self.train_dataloader = dataloader

    @property
    def _eval_dataloader(self) -> DataLoader | None:
        """Alias of `eval_dataloader` (the name used by pytorch-accelerated); assignable."""
        return self.eval_dataloader

    @_eval_dataloader.setter
    def _eval_dataloader(self, dataloader: DataLoader | None) -> None:
        self.eval_dataloader = dataloader

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Prints once per machine, like `print`: on the local main process of every
        machine (``accelerator.print``), so once per run on a single machine and once per
        machine on several. Use [`print_once`][trainwright.trainer.Trainer.print_once] for once per
        run on any number."""
        self.accelerator.print(*args, **kwargs)

    def print_once(self, *args: Any, **kwargs: Any) -> None:
        """Prints once per run, like `print`: on the main process of the whole run only
        (process 0 of machine 0)."""
        if self.accelerator.is_main_process:
            print(*args, **kwargs)

    def run_on_main_process(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls ``function(*args, **kwargs)`` on the main process of the run only, and returns
        its result there (``None`` on the other processes). The other processes do not wait
        for it; follow it with [`wait_for_everyone`][trainwright.trainer.Trainer.wait_for_everyone]
        if they must.

        Example:
            ```python
            trainer.run_on_main_process(write_report, "runs/report.md")
            ```
        """
        return self.accelerator.on_main_process(function)(*args, **kwargs)

    def run_on_local_main_process(
        self, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Like `run_on_main_process`, but on the main process of every machine (e.g.
        to write to a disk each machine has of its own)."""
        return self.accelerator.on_local_main_process(function)(*args, **kwargs)

    def main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """A context manager in which the main process runs first and the other processes
        wait, entering the block once it has left it (Accelerate's ``main_process_first``):
        e.g. the main process downloads or preprocesses a dataset into a cache that the others
        then read. Enter it on every process (it waits for every process, twice).

        Example:
            ```python
            with trainer.main_process_first():
                dataset = load_or_build_cached_dataset("cache/")
            ```
        """
        return self.accelerator.main_process_first()

    def local_main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Like `main_process_first`, with the main process of every machine first (for
        a cache on each machine's own disk)."""
        return self.accelerator.local_main_process_first()

    def wait_for_everyone(self) -> None:
        """Waits until every process reaches this call (a barrier; nothing on one process)."""
        self.accelerator.wait_for_everyone()

    def gather(self, tensor: Any, padding_value: float | None = None) -> Any:
        """Concatenates ``tensor`` (or a nested structure of tensors) from every process.

        Args:
            tensor: a tensor, or a nested list, tuple or dict of tensors.
            padding_value: if given, first pad every tensor along its first dimension with
                this value to the longest one across the processes, so tensors of different
                lengths can be gathered; drop the padding afterwards with
                `trainwright.utils.remove_padding`.
        """
        if padding_value is not None:
            tensor = self.accelerator.pad_across_processes(tensor, dim=0, pad_index=padding_value)
        return self.accelerator.gather(tensor)

    def gather_for_metrics(self, data: Any, use_gather_object: bool = False) -> Any:
        """Concatenates ``data`` from every process, leaving out the samples repeated to give
        every process equally many full batches, so that over an epoch the results hold each
        sample of the dataset exactly once, in the dataloader's order.

        Call it on every process, once per batch, from inside the loop over a dataloader the
        trainer prepared (e.g. in ``on_eval_step_end``). ``data`` may be a tensor or a nested
        list, tuple or dict of tensors whose first dimension is the batch; other objects need
        ``use_gather_object=True`` (they are pickled). On one process it returns ``data``.

        Example:
            ```python
            def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
                preds, targets = trainer.gather_for_metrics(
                    (batch_output["model_outputs"].argmax(-1), batch[1])
                )
                self.accuracy.update(preds, targets)
            ```
        """
        return self.accelerator.gather_for_metrics(data, use_gather_object=use_gather_object)

    def get_model(self, keep_torch_compile: bool = False) -> nn.Module:
        """The model without any wrapper added for distributed or compiled training: the
        plain module, also when it was compiled with ``torch.compile`` (by you or through
        Accelerate's ``dynamo_backend``), whose parameters the compiled model shares.

        Args:
            keep_torch_compile: return the `torch.compile` wrapper of a compiled model
                instead of the plain module (pytorch-accelerated's default), where it wraps
                the plain module itself; one compiled around a distributed wrapper gives the
                plain module.
        """
        # keep_torch_compile=False: Accelerate keeping the compiled wrapper would also put it
        # back around the unwrapped model, dropping a DDP wrapper from the one being trained.
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        plain = _without_compile_wrappers(model)  # compiled before a DDP wrapper was added
        if keep_torch_compile:
            compiled = self.model if is_compiled_module(self.model) else model
            if is_compiled_module(compiled) and compiled._orig_mod is plain:
                return compiled
        return plain

    def add_callback(self, callback: CallbackLike) -> TrainerCallback:
        """Adds a callback (a class is instantiated with no arguments) and returns the
        instance; see `CallbackHandler.add_callback`. The callbacks in execution order are
        ``trainer.callback_handler.callbacks`` (a tuple).

        Example:
            ```python
            trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=3))
            ```
        """
        return self.callback_handler.add_callback(callback)

    def remove_callback(self, callback: CallbackLike) -> None:
        """Removes a callback instance, or the first callback of the given class; see
        `CallbackHandler.remove_callback`.

        Example:
            ```python
            trainer.remove_callback(ProgressBarCallback)
            ```
        """
        self.callback_handler.remove_callback(callback)

    def pop_callback(self, callback: CallbackLike) -> TrainerCallback:
        """Removes a callback instance, or the first callback of the given class, and
        returns it; see `CallbackHandler.pop_callback`."""
        return self.callback_handler.pop_callback(callback)


class _EpochLoss:
    """The sample-weighted mean of per-batch losses over an epoch, kept on the device.

    The loop passes the number of genuine samples of each batch, leaving out the repeats
    Accelerate adds to the last batches of a multi-process epoch (see ``padded_tail``), or the
    batch's ``num_items`` when ``calculate_train_batch_loss`` returns it.

    Each step only keeps a reference to its detached loss: the losses are summed by a few
    tensor operations every ``fold_every`` steps and at epoch end, not one per step, and
    nothing is read on the host until the epoch's result, after the sums of every process
    are added together.
    """

    fold_every = 1024

    def __init__(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator
        # float64 keeps the sum exact enough over long epochs; MPS has no float64.
        self._dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
        self.reset()

    def reset(self) -> None:
        self._loss_sum = torch.zeros((), dtype=self._dtype, device=self._accelerator.device)
        self._num_samples: int | torch.Tensor = 0
        self._losses: list[torch.Tensor] = []
        self._batch_sizes: list[int | torch.Tensor] = []

    def update(self, loss: torch.Tensor, batch_size: int | torch.Tensor) -> None:
        self._losses.append(loss.detach())
        self._batch_sizes.append(batch_size)
        if len(self._losses) == self.fold_every:
            self._fold()

    def _fold(self) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses).to(self._dtype)
        sizes = self._batch_sizes
        if all(isinstance(size, int) for size in sizes):
            # pinned + non-blocking: the copy to the GPU does not make the host wait
            on_cuda = losses.device.type == "cuda"
            weights = torch.tensor(sizes, dtype=self._dtype, pin_memory=on_cuda)
            weights = weights.to(losses.device, non_blocking=True)
            self._num_samples += sum(sizes)
        else:
            weights = torch.stack([torch.as_tensor(size).to(losses) for size in sizes])
            self._num_samples = self._num_samples + weights.sum()
        self._loss_sum = self._loss_sum + (losses * weights).sum()
        self._losses, self._batch_sizes = [], []

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss_sum": self._loss_sum.cpu(),
            "num_samples": self._num_samples,
            "losses": [loss.cpu() for loss in self._losses],
            "batch_sizes": list(self._batch_sizes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._accelerator.device
        self._loss_sum = state["loss_sum"].to(device)
        self._num_samples = state["num_samples"]
        self._losses = [loss.to(device) for loss in state["losses"]]
        self._batch_sizes = list(state["batch_sizes"])

    def compute(self) -> float:
        self._fold()
        num_samples = self._num_samples
        if isinstance(num_samples, torch.Tensor):
            num_samples = num_samples.to(self._loss_sum)
        else:
            num_samples = self._loss_sum.new_full((), num_samples)
        totals = torch.stack([self._loss_sum, num_samples])
        loss_sum, num_samples = self._accelerator.reduce(totals, reduction="sum").tolist()
        return loss_sum / num_samples if num_samples else math.nan


@dataclass
class _TrainEpoch:
    """The training epoch in progress, or the last one: its data seed also seeds the
    evaluations after it, and a state saved during its end events records its start.

    Attributes:
        start_state: the epoch's data seed and the sampler's generator at its start, saved
            with a training state so that a resumed epoch replays the same batches.
        dataloader: the loader iterated: the training dataloader or, in an epoch resumed
            mid-way, one that skips the batches already done (they are never loaded).
        first_step: the first step iterated: 0, or the batches done before a resume.
        num_batches: the epoch's batches, the plan's ``num_train_batches``; for data
            without a length ``None`` until its last batch comes (``_marking_last_batch``).
        padded_tail: the batch Accelerate completed with repeated samples, if any.
        is_in_steps: whether its steps are running (an evaluation then is intermediate).
    """

    start_state: dict[str, Any]
    dataloader: DataLoader
    first_step: int
    num_batches: int | None
    padded_tail: PaddedTail | None
    is_in_steps: bool = False


class TrainerWithTimmScheduler(Trainer):
    """pytorch-accelerated's trainer for timm schedulers, kept so ported scripts run.

    The plain `Trainer` already steps a timm-style scheduler (one with ``step_update``) the
    way timm's own loop does: ``step_update(num_updates)`` after every optimizer update and
    ``step(epoch)`` after each epoch; this subclass adds nothing to it.
    """


# --------------------------------------------------------------------------------------------
# Input checks: errors that say what was wrong and how to fix it
# --------------------------------------------------------------------------------------------


def _inputs_and_targets(batch: Any, hook_name: str) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    shape = f"{type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        shape += f" of {len(batch)} items"
    elif isinstance(batch, dict):
        shape += f" with keys {sorted(batch)}"
    raise TypeError(
        f"The default Trainer.{hook_name}() expects each batch to be a pair (inputs, targets), "
        f"but got a {shape}. Override {hook_name}() in a Trainer subclass to compute the loss "
        'from your batches, returning {"loss": ..., "model_outputs": ..., "batch_size": ...}.'
    )


def _loss_and_batch_size(batch_output: Any, hook_name: str) -> tuple[torch.Tensor, Any]:
    try:
        loss, batch_size = batch_output["loss"], batch_output["batch_size"]
    except (KeyError, TypeError, IndexError):
        keys = sorted(batch_output) if isinstance(batch_output, dict) else type(batch_output)
        raise TypeError(
            f"{hook_name}() must return a dict with 'loss' (a scalar tensor) and 'batch_size' "
            f"(the number of samples in the batch); got {keys}."
        ) from None
    if loss.dim() != 0:
        raise ValueError(
            f"The loss returned by {hook_name}() must be a scalar tensor, but has shape "
            f"{tuple(loss.shape)}. Reduce it (e.g. loss.mean()) before returning it."
        )
    return loss, batch_size


_NO_BATCH = object()


def _batches_forever(dataloader: DataLoader) -> Iterator[Any]:
    """The dataloader's batches, starting over each time it is exhausted."""
    while True:
        yielded = False
        for batch in seeded_epoch(dataloader, draw_data_seed()):  # a new order every pass
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("The dataloader yielded no batches.")


#: Former ``Accelerator`` arguments that Accelerate 1.x accepts but ignores.
_DATALOADER_CONFIG_NAMES = (
    "split_batches",
    "dispatch_batches",
    "even_batches",
    "use_seedable_sampler",
)


_MIXED_PRECISION_MODES = ("no", "fp16", "bf16", "fp8")


def _check_trainer_arguments(
    model: Any,
    loss_func: Any,
    optimizer: Any,
    callbacks: Any,
    run_history: Any,
    mixed_precision: Any,
    accelerator_kwargs: Any,
    reorder_metric_readers: Any,
    profile_callbacks: Any,
) -> None:
    check_type("model", model, nn.Module, "a torch.nn.Module")
    # None: the batch-loss hooks compute the loss (a transformers model returning its own,
    # as in pytorch-accelerated's Hugging Face example).
    check_callable(
        "loss_func", loss_func, "a loss: a function of (model_outputs, targets)", optional=True
    )
    check_type("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    model_parameters = {id(parameter) for parameter in model.parameters()}
    if isinstance(loss_func, nn.Module):  # a loss with learnable parameters of its own
        model_parameters |= {id(parameter) for parameter in loss_func.parameters()}
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(parameter) in model_parameters for parameter in optimized):
        raise ValueError(
            "optimizer holds none of the model's parameters, so training would never change "
            "the model (was it built for another model, or for a copy?). Build it from this "
            "model: torch.optim.AdamW(model.parameters(), ...)."
        )
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(
            "callbacks must be a list of TrainerCallback instances or classes; got "
            f"{type(callbacks).__name__}."
        )
    check_type("run_history", run_history, RunHistory, "a RunHistory", optional=True)
    if mixed_precision is not None and mixed_precision not in _MIXED_PRECISION_MODES:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(map(repr, _MIXED_PRECISION_MODES))} "
            f"or None; got {mixed_precision!r}."
        )
    check_mapping("accelerator_kwargs", accelerator_kwargs)
    check_bool("reorder_metric_readers", reorder_metric_readers)
    check_bool("profile_callbacks", profile_callbacks)


def _check_scheduler(scheduler: Any) -> None:
    if isinstance(scheduler, torch.optim.Optimizer) or not callable(
        getattr(scheduler, "step", None)
    ):
        raise TypeError(
            "create_scheduler_fn must return a learning-rate scheduler (an object with step()), "
            f"but it returned {type(scheduler).__name__}"
            + (
                ": an optimizer, which would then be stepped twice per update"
                if isinstance(scheduler, torch.optim.Optimizer)
                else ""
            )
            + ". Return e.g. torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)."
        )


def _check_accelerator_kwargs(accelerator_kwargs: dict[str, Any]) -> None:
    ignored = [name for name in _DATALOADER_CONFIG_NAMES if name in accelerator_kwargs]
    if ignored:
        settings = ", ".join(f"{name}={accelerator_kwargs[name]!r}" for name in ignored)
        raise ValueError(
            f"accelerator_kwargs {ignored} would be silently ignored by Accelerate: they are "
            "settings of its DataLoaderConfiguration now. Pass accelerator_kwargs="
            f'{{"dataloader_config": accelerate.DataLoaderConfiguration({settings})}} instead.'
        )


def _resume_candidates(explicit: Path | None, states_dir: Path, is_latest: bool) -> list[Path]:
    """The states to try, newest first, as this process sees them (nothing verified)."""
    if explicit is not None:
        if not explicit.exists():
            raise FileNotFoundError(f"No training state directory at {str(explicit)!r}.")
        return [explicit]
    candidates = training_states(states_dir)
    if candidates or is_latest:
        return candidates
    if not states_dir.exists():
        raise FileNotFoundError(f"No training state directory at {str(states_dir)!r}.")
    raise FileNotFoundError(
        f"No complete training state in {str(states_dir)!r} to resume from (states are "
        "directories named state-<updates>, as SaveTrainingStateCallback writes)."
    )


def _plain_optimizer(accelerator: Accelerator, optimizer: Any) -> torch.optim.Optimizer | None:
    """The optimizer inside Accelerate's wrapper when the wrapper adds nothing, else None.

    Accelerate's ``AcceleratedOptimizer`` handles gradient scaling (fp16), XLA and DeepSpeed;
    we never use its accumulation context, so otherwise its ``step()`` and ``zero_grad()`` end
    in the wrapped optimizer's, after about 100 µs of per-call overhead on a CPU (an uncached
    package lookup twice per step, ``inspect.signature`` in every ``zero_grad``). Likewise
    ``accelerator.backward`` is then ``loss.backward()`` after a division by 1.
    """
    plain_types = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    inner = getattr(optimizer, "optimizer", None)
    if (
        inner is None
        or accelerator.scaler is not None
        or accelerator.distributed_type not in plain_types
        or accelerator.mixed_precision == "fp8"
        or type(inner).__name__ in ("Lomo", "AdaLomo")  # their step() must be a no-op
    ):
        return None
    return inner


def _generator_state(dataloader: DataLoader) -> torch.Tensor | None:
    generator = getattr(dataloader, "synchronized_generator", None)
    return None if generator is None else generator.get_state()


def _set_generator_state(dataloader: DataLoader | None, state: torch.Tensor | None) -> None:
    generator = getattr(dataloader, "synchronized_generator", None)
    if generator is not None and state is not None:
        generator.set_state(state)


def _without_compile_wrappers(model: nn.Module) -> nn.Module:
    """``model`` without the ``torch.compile`` wrappers around it (``OptimizedModule``)."""
    while is_compiled_module(model):
        model = model._orig_mod
    return model


def _model_signature(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in model.state_dict().items()}


def _dataloader_settings(dataloader: DataLoader) -> dict[str, Any]:
    names = ("num_workers", "pin_memory", "drop_last", "persistent_workers")
    return {
        "batch_size": dataloader_batch_size(dataloader),
        **{name: getattr(dataloader, name) for name in names},
    }


def _num_local_processes() -> int:
    # torchrun and accelerate launch both state the processes sharing this machine here.
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _length_or_unknown(dataset: Any) -> Any:
    return len(dataset) if isinstance(dataset, Sized) else "an unknown number of"


def _check_data_arguments(
    name: str,
    dataset: Any,
    per_device_batch_size: Any,
    dataloader_kwargs: Any,
    collate_fn: Any,
) -> None:
    """The checks shared by ``evaluate()``, ``predict()`` and ``find_learning_rate()``."""
    check_dataset(name, dataset)
    check_positive_int("per_device_batch_size", per_device_batch_size)
    check_dataloader_kwargs("dataloader_kwargs", dataloader_kwargs)
    check_callable("collate_fn", collate_fn, "a function of a list of samples", optional=True)
    check_not_empty(name, dataset)
