"""Evaluating during an epoch, every few optimizer updates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset

from trainwright.callbacks.base import TrainerCallback
from trainwright.callbacks.filters import due_check, every
from trainwright.data import create_dataloader, merge_dataloader_kwargs
from trainwright.validation import check_dataset, check_positive_int, check_type

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["StepBasedEvaluationCallback"]


class StepBasedEvaluationCallback(TrainerCallback):
    """Evaluates the model every ``eval_every_n_updates`` optimizer updates, recording
    ``step_eval_loss``.

    It runs at ``on_train_step_end`` of the steps that completed an update whose count is a
    multiple of ``eval_every_n_updates`` (the 1st evaluation after update N, the k-th after
    update k * N of the ``train()`` call), so with gradient accumulation it never evaluates
    in the middle of an accumulation window. The count is an ``every(n_updates=N)`` filter's
    (see [`due_check`][trainwright.callbacks.filters.due_check]): it continues after a resume,
    and an update evaluated before the training state was saved is not evaluated again. The
    evaluation uses
    [`Trainer.evaluate_model`][trainwright.trainer.Trainer.evaluate_model] (the trainer's
    ``calculate_eval_batch_loss``, no callback events, so progress bars and epoch metrics are left
    alone), and the model is back in train mode when training resumes.

    Args:
        eval_every_n_updates: evaluate after every this-many optimizer updates.
        eval_dataset: the data to evaluate on; default the ``eval_dataset`` given to
            ``train()`` (with its ``max_num_eval_batches`` limit). A dataset given here gets a
            dataloader with the trainer's evaluation defaults and the run's evaluation batch
            size.
        metric_name: the run-history metric to record, ``"step_eval_loss"`` by default.

    Raises:
        ValueError: at the start of ``train()``, if there is no data to evaluate on.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS, StepBasedEvaluationCallback(eval_every_n_updates=500),
        ])
        trainer.train(train_dataset, num_epochs=1, eval_dataset=eval_dataset)
        trainer.run_history.get_metric_values("step_eval_loss")  # one value per 500 updates
        ```
    """

    writes_metrics: tuple[str, ...] = ("step_eval_loss",)

    def __init__(
        self,
        eval_every_n_updates: int | None = None,
        eval_dataset: Dataset | None = None,
        metric_name: str = "step_eval_loss",
        *,
        eval_every_n_steps: int | None = None,
    ) -> None:
        """
        Args:
            eval_every_n_updates: evaluate after every this many optimizer updates.
            eval_dataset: the data to evaluate on; default the ``eval_dataset`` of ``train()``.
            metric_name: the metric the loss is recorded as.
            eval_every_n_steps: pytorch-accelerated's name of ``eval_every_n_updates`` (the
                same without gradient accumulation; with it, updates are counted here).
        """
        if eval_every_n_steps is not None:
            if eval_every_n_updates is not None:
                raise ValueError("Give eval_every_n_updates or eval_every_n_steps, not both.")
            eval_every_n_updates = eval_every_n_steps
        check_positive_int("eval_every_n_updates", eval_every_n_updates)
        if eval_dataset is not None:
            check_dataset("eval_dataset", eval_dataset)
        check_type("metric_name", metric_name, str, "a metric name (str)")
        self.eval_dataset = eval_dataset
        self.metric_name = metric_name
        self.writes_metrics = (metric_name,)
        self._dataloader: DataLoader | None = None
        self._evaluation = due_check(self, every(n_updates=eval_every_n_updates))

    @property
    def eval_every_n_updates(self) -> int:
        """The interval given to the constructor (read-only: build a new callback to change
        it)."""
        return self._evaluation.event_filter.n_updates

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._dataloader = None  # None: the trainer's evaluation data (and its batch limit)
        if self.eval_dataset is None:
            if trainer.eval_dataloader is None:
                raise ValueError(
                    "StepBasedEvaluationCallback has no data to evaluate on: pass "
                    "eval_dataset=... to train() or to StepBasedEvaluationCallback()."
                )
            return
        run_config = trainer.run_config
        batch_size = run_config.eval_per_device_batch_size or run_config.train_per_device_batch_size
        kwargs = merge_dataloader_kwargs(
            trainer.get_default_eval_dl_kwargs(batch_size), collate_fn=trainer.collate_fn
        )
        dataloader = create_dataloader(self.eval_dataset, **kwargs)
        self._dataloader = trainer.accelerator.prepare(dataloader)

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self._evaluation.is_due(trainer):
            return  # no update on this step, or not one we evaluate after
        trainer.evaluate_model(trainer.model, self._dataloader, self.metric_name)

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._dataloader = None  # let go of a dataloader (and its workers) built for the run
