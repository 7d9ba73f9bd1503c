"""Callbacks that save the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwright.callbacks.base import StopTrainingError, TrainerCallback
from trainwright.callbacks.filters import due_check, every
from trainwright.callbacks.monitor import MonitorCallback
from trainwright.checkpointing import (
    check_writable_directory,
    clean_up_training_states,
    missing_state_parts,
    remove_stale_temporary_files,
    remove_state,
    training_states,
)
from trainwright.tracking import format_metric_value
from trainwright.validation import check_bool, check_path, check_positive_int

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["SaveBestModelCallback", "SaveTrainingStateCallback", "WSDCheckpointCallback"]


class SaveBestModelCallback(MonitorCallback):
    """Saves a checkpoint whenever the watched metric improves, and reloads the best weights
    when training ends.

    Every checkpoint has the same entries: the model's weights, the optimizer state (when
    ``save_optimizer``), the scheduler state (when there is one and ``save_scheduler``), the watched
    metric's value under its own name, and ``"epoch"``. If the run stops before any
    checkpoint was saved, nothing is reloaded. Several instances can watch different metrics;
    give each its own ``save_path``.
    """

    def __init__(
        self,
        save_path: str | os.PathLike = "best_model.pt",
        watch_metric: str = "eval_loss_epoch",
        greater_is_better: bool = False,
        reset_on_train: bool = True,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        load_saved_checkpoint: bool = True,
    ) -> None:
        """
        Args:
            save_path: the checkpoint file to write (replaced atomically on each save).
            watch_metric: the metric to watch, as recorded in the run history.
            greater_is_better: whether higher values of the metric are better.
            reset_on_train: forget the best value at the start of every ``train()``.
            save_optimizer: include the optimizer state in the checkpoint.
            save_scheduler: include the scheduler state, when there is a scheduler.
            load_saved_checkpoint: reload the best checkpoint's weights when training ends.

        Example:
            ```python
            trainer = Trainer(model, loss_func, optimizer, callbacks=[
                *DEFAULT_CALLBACKS,
                SaveBestModelCallback("best_accuracy.pt", "accuracy", greater_is_better=True),
            ])
            ```
        """
        check_path("save_path", save_path)
        check_bool("save_optimizer", save_optimizer)
        check_bool("load_saved_checkpoint", load_saved_checkpoint)
        super().__init__(watch_metric, greater_is_better, 0.0, reset_on_train)
        self.save_path = Path(save_path)
        self.save_optimizer = save_optimizer
        self.save_scheduler = save_scheduler
        self.load_saved_checkpoint = load_saved_checkpoint
        self.saved_this_run = False

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        super().on_training_run_start(trainer, **kwargs)
        self.saved_this_run = False
        check_writable_directory(self.save_path.parent, "SaveBestModelCallback save_path folder")
        if trainer.accelerator.is_main_process:
            remove_stale_temporary_files(self.save_path)

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        value = self.read_metric(trainer)
        epoch = trainer.run_history.current_epoch
        if self.monitor.update(value, epoch):
            trainer.save_checkpoint(
                self.save_path,
                checkpoint_kwargs={self.watch_metric: value, "epoch": epoch},
                save_optimizer=self.save_optimizer,
                save_scheduler=self.save_scheduler,
            )
            self.saved_this_run = True

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.load_saved_checkpoint and self.saved_this_run:
            best = format_metric_value(self.monitor.best_value)
            trainer.print(
                f"Loading the best model ({self.watch_metric} {best} at epoch "
                f"{self.monitor.best_epoch}) from {self.save_path}"
            )
            trainer.load_checkpoint(self.save_path, load_optimizer=False, load_scheduler=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "saved_this_run": self.saved_this_run}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.saved_this_run = state["saved_this_run"]


class SaveTrainingStateCallback(TrainerCallback):
    """Saves full training states, from which ``train(..., resume_from=...)`` continues a run
    exactly (see [save_training_state][trainwright.trainer.Trainer.save_training_state]).

    States are directories named ``state-<optimizer updates>`` inside ``save_dir`` (default
    ``"training_states"``, as in pytorch-accelerated, so the class itself can be given in
    ``callbacks=[...]``), each written atomically (complete or absent) with a manifest of
    checksums that a resume verifies. They are saved:

    - every ``save_every_n_steps`` optimizer updates, at the end of the step that performed
      the update (``on_train_step_end``);
    - every ``save_every_n_epochs`` epochs, once the epoch's evaluation and epoch-end
      callbacks have run (epochs of the run history, ``run_history.current_epoch``: they
      count on across ``train()`` calls with ``reset_run_history=False``);
    - at the end of the run when ``save_at_end`` (after the last epoch, or when a
      ``StopTrainingError`` ended the run), before any callback reloads other weights;
    - when the run is interrupted by SIGTERM or SIGINT (Ctrl-C), after the current step.

    Only the newest ``max_checkpoints`` states are kept, when it is set: an older one is
    renamed to ``<name>.removing`` and then deleted, and one that cannot be deleted is a
    warning, not an error. Each save also removes what killed saves and prunes left in
    ``save_dir`` (see `trainwright.checkpointing.clean_up_training_states`). ``save_dir`` is
    created and checked for writing when training starts, before the first step. Pruning
    is done by the main process, and, on machines whose ``save_dir`` is on their own disk
    (no shared storage), by the machine's first process too, in its part of the states.

    The callback runs after callbacks of the default order (``order = 50``) and always after
    the stopping and best-model callbacks (``run_after``), so a state holds the early
    stopping and best-model decisions of its step or epoch.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS, SaveTrainingStateCallback("checkpoints", save_every_n_steps=500)])
        trainer.train(dataset, num_epochs=10, resume_from="latest")  # continues if possible
        ```
    """

    order = 50
    run_after = ("EarlyStoppingCallback", "TerminateOnNaNCallback", "SaveBestModelCallback")

    def __init__(
        self,
        save_dir: str | os.PathLike = "training_states",
        save_every_n_epochs: int | None = None,
        save_every_n_steps: int | None = None,
        save_at_end: bool = True,
        max_checkpoints: int | None = None,
    ) -> None:
        for name, value in (
            ("save_every_n_epochs", save_every_n_epochs),
            ("save_every_n_steps", save_every_n_steps),
            ("max_checkpoints", max_checkpoints),
        ):
            check_positive_int(name, value, optional=True)
        check_path("save_dir", save_dir)
        check_bool("save_at_end", save_at_end)
        self.save_dir = Path(save_dir)
        self.save_every_n_epochs = save_every_n_epochs
        self.save_at_end = save_at_end
        self.max_checkpoints = max_checkpoints
        self._update_saving = None
        if save_every_n_steps is not None:
            self._update_saving = due_check(self, every(n_updates=save_every_n_steps))

    @property
    def save_every_n_steps(self) -> int | None:
        """The interval in optimizer updates given to the constructor (read-only: build a new
        callback to change it)."""
        return None if self._update_saving is None else self._update_saving.event_filter.n_updates

    def save(self, trainer: Trainer) -> Path:
        """Saves a training state now and prunes old ones; returns its directory."""
        directory = self.save_dir / f"state-{trainer.progress.num_update_steps:09d}"
        trainer.save_training_state(directory)
        accelerator = trainer.accelerator
        # The main process prunes; so does the first process of a machine whose save_dir is
        # on its own disk (it does not see the main process's part of the state).
        if accelerator.is_main_process or (
            accelerator.is_local_main_process and missing_state_parts(directory, 1)
        ):
            self._prune()
        accelerator.wait_for_everyone()
        return directory

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        check_writable_directory(self.save_dir, "SaveTrainingStateCallback save_dir")

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self._update_saving is not None and self._update_saving.is_due(trainer):
            self.save(trainer)

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        config = trainer.run_config
        if config.num_epochs is None:  # data without a length: epochs until the last update
            is_last_epoch = trainer.progress.num_update_steps >= config.num_update_steps
        else:
            is_last_epoch = trainer.progress.epoch == config.num_epochs - 1
        # Every N epochs of the run history (numbered from 1, and across train() calls that
        # keep the history), not `every(n_epochs=N)`, which counts the epochs of one train().
        epoch = trainer.run_history.current_epoch
        if (self.save_at_end and is_last_epoch) or (
            self.save_every_n_epochs is not None and epoch % self.save_every_n_epochs == 0
        ):
            self.save(trainer)

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        if self.save_at_end:
            self.save(trainer)

    def on_training_interrupted(self, trainer: Trainer, signal_name: str, **kwargs: Any) -> None:
        path = self.save(trainer)
        trainer.print(f"Interrupted by {signal_name}: training state saved to {path}")

    def _prune(self) -> None:
        # Leftovers of killed saves and prunes go first; a state that cannot be deleted
        # (e.g. read-only) is a warning, and the run goes on.
        clean_up_training_states(self.save_dir)
        if self.max_checkpoints is None:
            return
        states = [path for path in training_states(self.save_dir) if path.name.startswith("state-")]
        for stale in states[self.max_checkpoints :]:
            remove_state(stale)


class WSDCheckpointCallback(TrainerCallback):
    """Saves the checkpoints a warmup-stable-decay schedule is made for.

    With a [`WSDLrScheduler`][trainwright.schedulers.WSDLrScheduler] of several checkpoints, each
    checkpoint ``C`` ends a short decay that starts from the stable phase. This callback
    saves, in ``save_dir``:

    - ``pre-decay-<updates>``: a full training state (see
      [`save_training_state`][trainwright.trainer.Trainer.save_training_state]) just before each
      decay starts, i.e. once the updates done reach a decay window's start. Resuming from it
      with a longer schedule continues the stable phase, so a run can be extended without
      retraining;
    - ``post-decay-<updates>.pt``: a model export (`
      save_checkpoint`) once each decay ends, at the checkpoint, with the weights trained at
      the decayed learning rate.

    Saves happen at the end of the step that performed the update (``on_train_step_end``).

    Args:
        save_dir: the directory to save into (default ``"checkpoints"``).
        save_pre_decay_states: save the training states before each decay.
        save_post_decay_models: save the model exports at each checkpoint.
        save_optimizer: include the optimizer state in the model exports.
        save_scheduler: include the scheduler state in the model exports.
        initial_checkpoint: a model export (``.pt`` file, e.g. a ``post-decay-*.pt``) whose
            weights and optimizer state are loaded when training starts, to continue from
            it (WSD-S). To continue from a pre-decay training state (a directory), pass it
            to ``train(..., resume_from=...)`` instead, which restores the exact position.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS, WSDCheckpointCallback("wsd-checkpoints")])
        trainer.train(dataset, num_epochs=30,
                      create_scheduler_fn=WSDLrScheduler.create_scheduler_fn(num_checkpoints=3))
        ```
    """

    order = 50

    def __init__(
        self,
        save_dir: str | os.PathLike = "checkpoints",
        save_pre_decay_states: bool = True,
        save_post_decay_models: bool = True,
        save_optimizer: bool = True,
        save_scheduler: bool = True,
        initial_checkpoint: str | os.PathLike | None = None,
    ) -> None:
        check_path("save_dir", save_dir)
        check_bool("save_pre_decay_states", save_pre_decay_states)
        check_bool("save_post_decay_models", save_post_decay_models)
        self.save_dir = Path(save_dir)
        self.save_pre_decay_states = save_pre_decay_states
        self.save_post_decay_models = save_post_decay_models
        self.save_optimizer = save_optimizer
        self.save_scheduler = save_scheduler
        self.initial_checkpoint = Path(initial_checkpoint) if initial_checkpoint else None
        if self.initial_checkpoint is not None and self.initial_checkpoint.is_dir():
            raise ValueError(
                f"initial_checkpoint={str(self.initial_checkpoint)!r} is a directory (a "
                "training state): continue from it with train(..., resume_from="
                f"{str(self.initial_checkpoint)!r}), which restores the exact position; "
                "initial_checkpoint takes a model export (.pt file)."
            )
        self._each_update = due_check(self, every(n_updates=1))

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        from trainwright.schedulers import WSDLrScheduler

        if not isinstance(trainer.scheduler, WSDLrScheduler):
            raise ValueError(
                "WSDCheckpointCallback needs a WSDLrScheduler: pass create_scheduler_fn="
                "WSDLrScheduler.create_scheduler_fn(...) to train(); got "
                f"{type(trainer.scheduler).__name__}."
            )
        check_writable_directory(self.save_dir, "WSDCheckpointCallback save_dir")
        if self.initial_checkpoint is not None:
            trainer.print(f"Loading the model and optimizer from {self.initial_checkpoint}")
            trainer.load_checkpoint(self.initial_checkpoint, load_scheduler=False)

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self._each_update.is_due(trainer):
            return  # no update in this step
        updates = trainer.progress.num_update_steps
        scheduler = trainer.scheduler
        if self.save_pre_decay_states and scheduler.is_decay_phase_start(updates):
            trainer.save_training_state(self.save_dir / f"pre-decay-{updates:09d}")
        if self.save_post_decay_models and scheduler.is_checkpoint_step(updates):
            trainer.save_checkpoint(
                self.save_dir / f"post-decay-{updates:09d}.pt",
                save_optimizer=self.save_optimizer,
                save_scheduler=self.save_scheduler,
            )
