"""An exponential moving average (EMA) of a model's weights, to evaluate or save.

Averaging the weights over the last stretch of training smooths out the noise of single
updates; the averaged model often evaluates better than the raw one, at the cost of one more
copy of the weights. Call [`ModelEma.update`][trainwright.ema.ModelEma.update] after every optimizer
update.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(nn.Module):
    """Keep an exponential moving average of a model's parameters.

    It is an ``nn.Module`` holding the averaged copy as ``module``: ``ema.to(device)`` moves
    it, ``ema(inputs)`` runs the averaged model, ``ema.set(model)`` copies a model's weights
    into it, and ``ema.state_dict()`` holds the averaged weights (``module.*``) and, as its
    extra state, ``num_updates`` and the settings. A state dict without that extra state
    (pytorch-accelerated's, the weights only) also loads.

    After each optimizer update, every floating-point parameter of the copy becomes
    ``ema = decay_t * ema + (1 - decay_t) * param``. Buffers (BatchNorm running statistics
    and the like) and non-float parameters are copied as they are, since averaging counters
    or statistics that are already running averages would only lag them.

    (pytorch-accelerated averages buffers too, integer counters included.) It is not built
    on ``torch.optim.swa_utils.AveragedModel``, whose first update copies the weights instead
    of averaging them with the warm-up decay, and whose decay cannot depend on the step.

    ``decay_t`` is ``decay``, or with ``use_warmup=True``
    ``decay_t = min(decay, (1 + t) / (10 + t))`` where ``t`` is the number of updates done
    before this one (0.1 on the first update, 0.5 on the ninth, then towards ``decay``).
    The warm-up keeps the average from being dominated by the random initial weights when
    ``decay`` is close to 1.

    Args:
        model: the model to average. A DDP (``.module``) or ``torch.compile``
            (``._orig_mod``) wrapper is unwrapped, so the copy is the plain model.
        decay: the EMA decay; the average spans roughly ``1 / (1 - decay)`` updates.
        use_warmup: use the warm-up formula above for the decay.
        device: where to keep the average (e.g. ``"cpu"`` to save accelerator memory);
            None keeps it on the model's device.

    Attributes:
        module: the averaged model, in eval mode and without gradients; evaluate this one.
        num_updates: how many times [`update`][trainwright.ema.ModelEma.update] has run.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = ModelEma(model, decay=0.9)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> optimizer.step()
        >>> ema.update(model)
        >>> ema.num_updates
        1
        >>> prediction = ema.module(torch.ones(1, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        use_warmup: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(
                f"decay must be between 0 and 1 (0.999 to 0.9999 is usual), got {decay!r}."
            )
        super().__init__()
        self.decay = float(decay)
        self.use_warmup = use_warmup
        self.device = torch.device(device) if device is not None else None
        self.num_updates = 0
        self.module = copy.deepcopy(_unwrap(model))
        self.module.eval()
        self.module.requires_grad_(False)
        if self.device is not None:
            self.module.to(self.device)

    def get_decay(self, num_updates: int | None = None) -> float:
        """Return the decay the update after ``num_updates`` updates uses (default: next)."""
        if num_updates is None:
            num_updates = self.num_updates
        if not self.use_warmup:
            return self.decay
        return min(self.decay, (1 + num_updates) / (10 + num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average; call after each optimizer update.

        Args:
            model: the model being trained, with the same architecture as the copy; a DDP or
                compiled wrapper is unwrapped.
        """
        decay = self.get_decay()
        model = _unwrap(model)
        for ema_value, value in _paired(self.module, model, "parameters"):
            value = value.detach().to(ema_value.device)
            if ema_value.is_floating_point():
                ema_value.mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                ema_value.copy_(value)
        for ema_value, value in _paired(self.module, model, "buffers"):
            ema_value.copy_(value.detach().to(ema_value.device))
        self.num_updates += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged model."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy ``model``'s parameters and buffers into the average (``num_updates`` stays).

        Args:
            model: a model with the same architecture; a DDP or compiled wrapper is unwrapped.
        """
        model = _unwrap(model)
        for kind in ("parameters", "buffers"):
            for ema_value, value in _paired(self.module, model, kind):
                ema_value.copy_(value.detach().to(ema_value.device))

    def get_extra_state(self) -> dict[str, Any]:
        """``num_updates`` and the settings, saved in ``state_dict()`` beside the weights."""
        return {"num_updates": self.num_updates, "decay": self.decay, "use_warmup": self.use_warmup}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `get_extra_state` returned; the warm-up resumes where it stopped."""
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.use_warmup = bool(state["use_warmup"])

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a state dict from `state_dict`, or one holding only the weights (as
        pytorch-accelerated's ``ModelEma`` saves it): the counters and settings then stay."""
        state_dict = dict(state_dict)
        state_dict.setdefault("_extra_state", self.get_extra_state())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _paired(
    ema_module: nn.Module, model: nn.Module, kind: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair the EMA copy's parameters (or buffers) with the model's, checking names match."""
    ema_items = list(getattr(ema_module, f"named_{kind}")())
    model_items = list(getattr(model, f"named_{kind}")())
    ema_names = [name for name, _ in ema_items]
    model_names = [name for name, _ in model_items]
    if ema_names != model_names:
        only_in_one = sorted(set(model_names) ^ set(ema_names))
        difference = f"; in one but not the other: {only_in_one[:3]}" if only_in_one else ""
        raise ValueError(
            f"The model's {kind} ({len(model_names)}) do not match the EMA copy's "
            f"({len(ema_names)}){difference}. Pass the same model (architecture) that the "
            "ModelEma was built from."
        )
    return [(ema_value, value) for (_, ema_value), (_, value) in zip(ema_items, model_items)]
