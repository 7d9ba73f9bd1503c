"""Keeping, evaluating and saving an exponential moving average (EMA) of the model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainwright.callbacks.base import TrainerCallback
from trainwright.callbacks.monitor import MetricMonitor
from trainwright.checkpointing import MODEL_STATE_KEY, atomic_save
from trainwright.ema import ModelEma
from trainwright.validation import check_bool, check_number, check_path

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["ModelEmaCallback"]

EMA_METRIC_PREFIX = "ema_model_"
EMA_EVAL_LOSS = f"{EMA_METRIC_PREFIX}eval_loss_epoch"


class ModelEmaCallback(TrainerCallback):
    """Keeps an exponential moving average of the model's weights during training, and
    evaluates (and optionally saves) it after every epoch.

    * At ``on_training_run_start`` it copies
      [`Trainer.get_model`][trainwright.trainer.Trainer.get_model] into a
      [`ModelEma`][trainwright.ema.ModelEma] (`model_ema`; evaluate ``model_ema.module``).
    * After **every optimizer update** (``on_after_optimizer_step``) it folds the new weights
      into the average, so the average does not depend on the epoch length.
    * With ``evaluate=True``, at the end of every epoch (``on_training_run_epoch_end``, before
      callbacks of the default order, so they can watch the result) it evaluates the average
      over the trainer's evaluation data with
      [`Trainer.evaluate_model`][trainwright.trainer.Trainer.evaluate_model] and records
      ``ema_model_eval_loss_epoch``.
    * With ``save_path``, it writes the averaged weights there as a checkpoint that
      [`Trainer.load_checkpoint`][trainwright.trainer.Trainer.load_checkpoint] reads: whenever
      ``ema_model_eval_loss_epoch`` improves when evaluating, otherwise once when training ends.

    The average starts afresh at every ``train()``, unless a state was loaded with
    [`load_state_dict`][trainwright.callbacks.ema.ModelEmaCallback.load_state_dict] (e.g. when
    resuming), which it then continues from.

    Args:
        decay: the EMA decay, see [`ModelEma`][trainwright.ema.ModelEma].
        use_warmup: ramp the decay up over the first updates.
        evaluate: evaluate the average after every epoch. ``train()`` then needs an
            ``eval_dataset``.
        save_path: where to save the averaged weights, or ``None`` to not save them.
        device: where to keep the average (e.g. ``"cpu"`` to save accelerator memory);
            default the model's device. It must be the trainer's device to evaluate it.
        evaluate_during_training: pytorch-accelerated's name of ``evaluate``. Its
            ``watch_metric``, ``greater_is_better``, ``model_ema`` and ``callbacks`` are
            refused with a message saying what to use instead.

    Raises:
        ValueError: at the start of ``train()``, if ``evaluate=True`` and there is no
            evaluation data.

    Example:
        ```python
        trainer = Trainer(model, loss_func, optimizer, callbacks=[
            *DEFAULT_CALLBACKS,
            ModelEmaCallback(decay=0.999, save_path="ema_model.pt"),
        ])
        trainer.train(train_dataset, num_epochs=10, eval_dataset=eval_dataset)
        trainer.run_history.get_metric_values("ema_model_eval_loss_epoch")
        ```
    """

    # Evaluate before the default-order callbacks at epoch end (early stopping, best-model
    # saving, metric printing), so they see this epoch's ema_model_eval_loss_epoch.
    order = -1
    writes_metrics: tuple[str, ...] = (EMA_EVAL_LOSS,)

    def __init__(
        self,
        decay: float = 0.999,
        use_warmup: bool = True,
        evaluate: bool = True,
        save_path: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        *,
        evaluate_during_training: bool | None = None,
        **pytorch_accelerated_kwargs: Any,
    ) -> None:
        if evaluate_during_training is not None:  # pytorch-accelerated's name
            evaluate = evaluate_during_training
        if pytorch_accelerated_kwargs:
            raise TypeError(
                f"ModelEmaCallback has no {', '.join(sorted(pytorch_accelerated_kwargs))}: it "
                "records ema_model_eval_loss_epoch after every epoch and saves the average to "
                "save_path whenever that improves. To watch another metric, add "
                "SaveBestModelCallback / EarlyStoppingCallback(watch_metric="
                "'ema_model_eval_loss_epoch'); build the average yourself with "
                "trainwright.ema.ModelEma."
            )
        check_number("decay", decay, minimum=0)
        check_bool("use_warmup", use_warmup)
        check_bool("evaluate", evaluate)
        check_path("save_path", save_path, optional=True)
        if not 0 <= decay <= 1:
            raise ValueError(
                f"decay must be between 0 and 1 (0.999 to 0.9999 is usual), got {decay!r}."
            )
        self.decay = decay
        self.use_warmup = use_warmup
        self.evaluate = evaluate
        self.save_path = Path(save_path) if save_path is not None else None
        self.device = device
        self.writes_metrics = (EMA_EVAL_LOSS,) if evaluate else ()
        self.monitor = MetricMonitor(EMA_EVAL_LOSS, greater_is_better=False)
        self.model_ema: ModelEma | None = None
        self._state_to_load: dict[str, Any] | None = None

    def on_training_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.evaluate and trainer.eval_dataloader is None:
            raise ValueError(
                "ModelEmaCallback(evaluate=True) evaluates the EMA model after every epoch, "
                "but train() was given no eval_dataset. Pass eval_dataset=... to train(), or "
                "use ModelEmaCallback(evaluate=False)."
            )
        self.model_ema = ModelEma(
            trainer.get_model(), decay=self.decay, use_warmup=self.use_warmup, device=self.device
        )
        self.monitor.reset()
        if self._state_to_load is not None:
            self._apply_state(self._state_to_load)
            self._state_to_load = None

    def on_after_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self.model_ema.update(trainer.get_model())

    def on_training_run_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self.evaluate:
            return
        with trainer.run_history.metric_name_prefix_as(EMA_METRIC_PREFIX):
            value = trainer.evaluate_model(self.model_ema.module, metric_name="eval_loss_epoch")
        epoch = trainer.run_history.current_epoch
        if self.save_path is not None and self.monitor.update(value, epoch):
            self._save(trainer, {EMA_EVAL_LOSS: value, "epoch": epoch})

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._state_to_load = None  # a state loaded during this run was applied already
        if self.save_path is not None and not self.evaluate and self.model_ema is not None:
            self._save(trainer, {"num_updates": self.model_ema.num_updates})

    def _save(self, trainer: Trainer, extra: dict[str, Any]) -> None:
        # Every process holds the same average; one writes it (atomically).
        if trainer.run_config.is_world_process_zero:
            atomic_save(
                {MODEL_STATE_KEY: self.model_ema.module.state_dict(), **extra}, self.save_path
            )

    def state_dict(self) -> dict[str, Any]:
        """The EMA weights and update count, and the best EMA loss so far."""
        ema_state = self.model_ema.state_dict() if self.model_ema is not None else None
        return {"model_ema": ema_state, "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned. Loaded between runs (e.g. when
        resuming), the state is also kept and applied once the next run creates its average."""
        self._state_to_load = state
        if self.model_ema is not None:
            self._apply_state(state)

    def _apply_state(self, state: dict[str, Any]) -> None:
        if state["model_ema"] is not None:
            self.model_ema.load_state_dict(state["model_ema"])
        self.monitor.load_state_dict(state["monitor"])
