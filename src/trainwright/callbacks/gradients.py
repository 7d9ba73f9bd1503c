"""`GradientNormMonitorCallback`: the total gradient norm of every optimizer update.

The norm is computed on the device (`torch.linalg.vector_norm`) and kept there: per epoch,
its mean and maximum are read on the host once, at the epoch's end, beside the epoch's loss;
per update, it is published in `trainer.step_metrics`, which experiment trackers and progress
bars read without making the host wait. With `max_grad_norm`, the norm that clipping already
computes (Accelerate's `clip_grad_norm_`) is reused instead of computing it again.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import torch

from trainwright.callbacks.base import TrainerCallback

if TYPE_CHECKING:
    from trainwright.trainer import Trainer

__all__ = ["GradientNormMonitorCallback", "total_gradient_norm"]


def total_gradient_norm(parameters: Any, norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all gradients of `parameters` together, as one vector (what
    `torch.nn.utils.clip_grad_norm_` returns), as a float32 device tensor; 0 without any
    gradient. Nothing is read on the host."""
    gradients = [p.grad.detach() for p in parameters if p.grad is not None]
    if not gradients:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(g, norm_type).float() for g in gradients])
    return torch.linalg.vector_norm(norms, norm_type)


class GradientNormMonitorCallback(TrainerCallback):
    """Records the total gradient norm before clipping of every optimizer update.

    At each epoch's end it records `gradient_norm_mean` and `gradient_norm_max` (over the
    epoch's updates) in the run history; at each update it publishes `gradient_norm` in
    `trainer.step_metrics`, for experiment trackers (logged as `gradient_norm_step` with the
    step's loss) and the progress bar. No host sync is added on the per-step path.

    The norm is that of the gradients the optimizer would use before any norm clipping:
    with `max_grad_norm`, the one clipping computes; otherwise it is computed here, after
    Accelerate unscales fp16 gradients (with `gradient_clip_value`, of the value-clipped
    gradients). With DDP every process holds the same, all-reduced, gradients; under FSDP or
    DeepSpeed each process holds a shard, so pass `max_grad_norm` to get the global norm.

    Args:
        norm_type: the p of the p-norm (2 by default; `float("inf")` for the largest
            absolute value); with `max_grad_norm` the clipping's norm (2) is reported.

    Example:
        ```python
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        from trainwright import Trainer
        from trainwright.callbacks import GradientNormMonitorCallback

        model = nn.Linear(4, 2)
        trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1),
                          callbacks=[GradientNormMonitorCallback()])
        dataset = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
        trainer.train(dataset, num_epochs=2, per_device_batch_size=8)
        print(trainer.run_history.get_metric_values("gradient_norm_max"))
        ```
    """

    # Before loggers and progress bars, which read what it publishes at the same events.
    order = -10
    writes_metrics = ("gradient_norm_mean", "gradient_norm_max")

    def __init__(self, norm_type: float = 2.0) -> None:
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
            raise TypeError(f"norm_type must be a number (the p of the p-norm); got {norm_type!r}.")
        if not norm_type > 0:
            raise ValueError(f"norm_type must be a positive number; got {norm_type!r}.")
        self.norm_type = float(norm_type)
        self._norms: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self._norms = []

    def on_before_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        config = trainer.run_config
        if config.max_grad_norm is not None and trainer.gradient_norm is not None:
            norm = trainer.gradient_norm.detach().float()
        else:
            if trainer.accelerator.scaler is not None and config.gradient_clip_value is None:
                trainer.accelerator.unscale_gradients()  # clipping has not unscaled them
            norm = total_gradient_norm(trainer.model.parameters(), self.norm_type)
        self._norms.append(norm)
        trainer.step_metrics["gradient_norm"] = norm

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if not self._norms:  # an epoch without an update (a resumed, finished epoch)
            return
        norms = torch.stack(self._norms)
        mean, maximum = torch.stack([norms.mean(), norms.max()]).tolist()
        trainer.run_history.update_metric("gradient_norm_mean", mean)
        trainer.run_history.update_metric("gradient_norm_max", maximum)
        self._norms = []

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        trainer.step_metrics.pop("gradient_norm", None)
