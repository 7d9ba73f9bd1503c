"""Learning-rate schedulers driven by the number of optimizer updates, not epochs.

Counting optimizer updates (rather than epochs or batches) means gradient accumulation, a
mid-epoch resume or a change of dataset size need no special handling.

The contract with the trainer, which every scheduler here follows:

* the trainer runs updates numbered ``0 .. total_num_steps - 1``;
* constructing a scheduler writes the learning rates for update ``0`` into the optimizer, so
  the very first update already uses the warm-up start LR;
* after every optimizer update the trainer calls ``scheduler.step()`` exactly once, which
  moves ``scheduler.update_step`` from ``i`` to ``i + 1`` and writes the LRs for update
  ``i + 1``.

So ``scheduler.update_step`` is always the number of updates done so far, which is also the
index of the next update, and the LR that update ``i`` uses is ``scheduler.get_lr(i)``.

Two kinds of scheduler:

* [`StatelessLrScheduler`][trainwright.schedulers.StatelessLrScheduler]: the LR is a pure function
  of the update index (cosine,
  warmup-stable-decay, ...). Prefer it whenever the schedule can be written down in advance:
  it can jump to any step (``step(update_step=k)``), resume from the step count alone, and be
  plotted before training.
* [`StatefulLrScheduler`][trainwright.schedulers.StatefulLrScheduler]: the next LR depends on what
  happened before (reduce on plateau, multiply the current LR, back off after a loss spike). It can
  only move forward one update at a time, and resuming needs its whole state.
"""

from __future__ import annotations

import bisect
import copy
import functools
import itertools
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from trainwright.placeholders import TrainerPlaceholderValues

__all__ = [
    "CosineLrScheduler",
    "StatefulLrScheduler",
    "StatelessLrScheduler",
    "WSDLrScheduler",
]

_DEFAULT_WARMUP_STARTING_LR = 1e-6
_DECAY_SHAPES = ("linear", "sqrt", "inverse_proportional")


class _LrSchedulerBase:
    """What both kinds share: the optimizer, base LRs, the update counter and state saving.

    Subclasses set their own settings as attributes *before* calling ``super().__init__``,
    because the base constructor may already need them to compute the LRs for update 0.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            # Remember the LR the user configured, so the schedule stays relative to it after
            # we have written other values into ``group["lr"]`` (same key as torch uses).
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [
            float(group["initial_lr"]) for group in optimizer.param_groups
        ]
        self.update_step = 0
        self._last_lrs: list[float] = [float(group["lr"]) for group in optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """Return the LRs last written into the optimizer, one per param group.

        These are the LRs the next optimizer update (number ``update_step``) will use.
        """
        return list(self._last_lrs)

    def state_dict(self) -> dict[str, Any]:
        """Return the step count and every setting, so a reloaded scheduler continues exactly.

        Example:
            >>> state = scheduler.state_dict()  # doctest: +SKIP
            >>> new_scheduler.load_state_dict(state)  # doctest: +SKIP
        """
        state = {key: value for key, value in self.__dict__.items() if key != "optimizer"}
        state = copy.deepcopy(state)
        state["scheduler_class"] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count and settings and write the matching LRs into the optimizer.

        The saved settings win over the ones this scheduler was constructed with, so the
        resumed run follows the saved curve exactly.
        """
        state = copy.deepcopy(dict(state_dict))
        if "update_step" not in state and "scheduler_class" not in state:
            state = self._state_from_pytorch_accelerated(state)
        saved_class = state.pop("scheduler_class", type(self).__name__)
        if saved_class != type(self).__name__:
            raise ValueError(
                f"This state dict was saved by a {saved_class}, but is being loaded into a "
                f"{type(self).__name__}. Load it into a {saved_class} instead."
            )
        num_groups = len(self.optimizer.param_groups)
        if len(state.get("base_lrs", [])) != num_groups:
            raise ValueError(
                f"The saved scheduler state has {len(state.get('base_lrs', []))} param groups "
                f"but the optimizer has {num_groups}. Build the optimizer with the same param "
                "groups as the run that saved the state."
            )
        self.__dict__.update(state)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base_lr
        self._write_lrs(self._last_lrs)

    def _state_from_pytorch_accelerated(self, state: dict[str, Any]) -> dict[str, Any]:
        """A pytorch-accelerated scheduler's state dict: its update count and base LRs
        continue this scheduler; the schedule's settings stay those it was built with.

        Its count is ``num_updates`` (one less than the updates done; ``_num_updates`` in
        its attributes) or, in older versions, ``current_iteration_number`` (the updates
        done). Its ``WSDLrScheduler`` saves no count: the count then stays, with a warning.
        """
        if "current_iteration_number" in state:
            update_step = int(state["current_iteration_number"])
        elif "num_updates" in state or "_num_updates" in state:
            update_step = int(state.get("num_updates", state.get("_num_updates"))) + 1
        else:
            warnings.warn(
                "This scheduler state dict (saved by pytorch-accelerated) holds no update "
                f"count, so the schedule stays at update {self.update_step}. Call "
                "scheduler.step(update_step=...) with the updates done to move it.",
                stacklevel=3,
            )
            update_step = self.update_step
        base_lrs = [float(lr) for lr in state.get("base_lr_values", self.base_lrs)]
        converted = {
            key: value
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "update_step", "base_lrs", "_last_lrs")
        }
        converted.update(update_step=update_step, base_lrs=base_lrs)
        previous_base_lrs, self.base_lrs = self.base_lrs, base_lrs
        try:
            converted["_last_lrs"] = self._lrs_at(update_step)
        finally:
            self.base_lrs = previous_base_lrs
        return copy.deepcopy(converted)

    def _lrs_at(self, update_step: int) -> list[float]:
        """The LRs of update ``update_step``; a stateful scheduler keeps its last ones."""
        return self.get_last_lr()

    def _write_lrs(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], torch.Tensor):
                # A tensor LR (capturable / compiled optimizers) must be updated in place.
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lrs = list(lrs)


class StatelessLrScheduler(_LrSchedulerBase, ABC):
    """Base for schedules whose LR is a pure function of the optimizer update index.

    Subclasses implement [`get_lr`][trainwright.schedulers.StatelessLrScheduler.get_lr];
    construction writes ``get_lr(0)`` into the optimizer and each
    [`step`][trainwright.schedulers.StatelessLrScheduler.step] writes the LRs for the next update.
    Use this base unless the next LR depends on something other than the update index (then use
    [`StatefulLrScheduler`][trainwright.schedulers.StatefulLrScheduler]).

    Args:
        optimizer: the optimizer whose param groups' ``"lr"`` this scheduler sets. Each
            group's current ``lr`` (or ``initial_lr`` if already set) is its base LR.

    Example:
        >>> import torch
        >>> class HalvingLrScheduler(StatelessLrScheduler):
        ...     def get_lr(self, update_step: int) -> list[float]:
        ...         return [base_lr * 0.5**update_step for base_lr in self.base_lrs]
        >>> parameter = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([parameter], lr=1.0)
        >>> scheduler = HalvingLrScheduler(optimizer)
        >>> scheduler.step()
        >>> optimizer.param_groups[0]["lr"]
        0.5
    """

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__(optimizer)
        self._write_lrs(self.get_lr(0))

    @classmethod
    def create_scheduler_fn(cls, **kwargs: Any) -> functools.partial[Any]:
        """``functools.partial(cls, **kwargs)``, for ``train(create_scheduler_fn=...)``.

        ``total_num_steps`` defaults to the trainer placeholder ``NUM_UPDATE_STEPS`` (every
        optimizer update of the run, also when ``max_num_train_steps`` cuts it short), which
        the trainer resolves when training starts.

        Example:
            ```python
            trainer.train(dataset, num_epochs=10, create_scheduler_fn=(
                CosineLrScheduler.create_scheduler_fn(num_warmup_steps=0.05)))
            ```
        """
        if _PYTORCH_ACCELERATED_EPOCH_COUNTS.intersection(kwargs):
            kwargs.setdefault(
                "num_update_steps_per_epoch", TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH
            )
        if not _PYTORCH_ACCELERATED_TOTALS.intersection(kwargs):
            kwargs.setdefault("total_num_steps", TrainerPlaceholderValues.NUM_UPDATE_STEPS)
        return functools.partial(cls, **kwargs)

    @abstractmethod
    def get_lr(self, update_step: int) -> list[float]:
        """Return the LR of each param group for optimizer update number ``update_step``."""

    def _lrs_at(self, update_step: int) -> list[float]:
        return self.get_lr(update_step)

    def step(self, update_step: int | None = None) -> None:
        """Move to the next update (or to ``update_step``) and write its LRs.

        Args:
            update_step: the update index to jump to. ``None`` (what the trainer passes)
                advances by one.
        """
        if update_step is None:
            update_step = self.update_step + 1
        elif isinstance(update_step, bool) or not isinstance(update_step, int) or update_step < 0:
            raise ValueError(
                f"update_step must be a non-negative int (an optimizer update index), got "
                f"{update_step!r}."
            )
        self.update_step = update_step
        self._write_lrs(self.get_lr(update_step))


class StatefulLrScheduler(_LrSchedulerBase, ABC):
    """Base for schedules whose next LR depends on state, not only on the update index.

    Use it for schedules such as reduce-on-plateau or "multiply the current LR by a factor",
    where the LR of update ``i + 1`` is computed from the LR (or a metric) at update ``i``.
    Such a scheduler can only advance one update at a time, and resuming it needs its whole
    `state_dict`, which holds every attribute the subclass set. Construction leaves the
    optimizer's LRs as they are; set different starting LRs in your ``__init__`` if needed.

    Subclasses implement [`get_next_lrs`][trainwright.schedulers.StatefulLrScheduler.get_next_lrs].

    Args:
        optimizer: the optimizer whose param groups' ``"lr"`` this scheduler sets.

    Example:
        >>> import torch
        >>> class DecayByFactor(StatefulLrScheduler):
        ...     def __init__(self, optimizer: torch.optim.Optimizer, factor: float) -> None:
        ...         self.factor = factor
        ...         super().__init__(optimizer)
        ...     def get_next_lrs(self) -> list[float]:
        ...         return [lr * self.factor for lr in self.get_last_lr()]
        >>> parameter = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([parameter], lr=1.0)
        >>> scheduler = DecayByFactor(optimizer, factor=0.5)
        >>> scheduler.step()
        >>> scheduler.get_last_lr()
        [0.5]
    """

    @abstractmethod
    def get_next_lrs(self) -> list[float]:
        """Return the LRs for update ``self.update_step`` (already advanced) from the state."""

    def step(self) -> None:
        """Advance to the next update and write its LRs (call once per optimizer update)."""
        self.update_step += 1
        self._write_lrs(self.get_next_lrs())


class _WarmupThenDecayScheduler(StatelessLrScheduler):
    """Shared by the cosine and WSD schedules: per param group, a warm-up start LR, a base LR
    and a minimum ratio; subclasses give the LR of one group at one update."""

    warmup_starting_lrs: list[float]
    lr_min_ratios: list[float]

    def get_lr(self, update_step: int) -> list[float]:
        """Return the LR of each param group for optimizer update ``update_step``."""
        return [
            self._lr_for_group(update_step, base_lr, starting_lr, base_lr * min_ratio)
            for base_lr, starting_lr, min_ratio in zip(
                self.base_lrs, self.warmup_starting_lrs, self.lr_min_ratios
            )
        ]

    @abstractmethod
    def _lr_for_group(
        self, update_step: int, base_lr: float, starting_lr: float, min_lr: float
    ) -> float:
        """The LR of one param group for optimizer update ``update_step``."""


class CosineLrScheduler(_WarmupThenDecayScheduler):
    """Linear warm-up, cosine decay to a minimum, then an optional flat cooldown.

    With ``W = num_warmup_steps``, ``C = num_cooldown_steps``, ``T = total_num_steps`` and the
    decay phase ``D = T - W - C`` updates long, the LR of update ``i`` in each param group is:

    * warm-up, ``0 <= i < W``: ``start + (base - start) * i / W`` (exactly ``start`` at 0);
    * decay, ``W <= i < W + D``: with progress ``p = (i - W) / (D - 1)`` and
      ``f = (1 + cos(pi * p**k_decay)) / 2``, the LR is ``base * f + min_lr * (1 - f)``.
      So update ``W`` uses exactly ``base`` and update ``W + D - 1`` exactly
      ``min_lr = base * lr_min_ratio`` (with ``D == 1`` that one update uses ``min_lr``);
    * cooldown and beyond, ``i >= W + D``: ``min_lr``.

    Without cooldown the minimum is reached on the final update ``T - 1``.

    Args:
        optimizer: the optimizer to schedule; each group's LR is its ``base`` LR.
        total_num_steps: the number of optimizer updates in the run (``T``).
        num_warmup_steps: an int number of updates, or a float in (0, 1) read as a fraction
            of ``total_num_steps`` (rounded to the nearest update).
        warmup_starting_lr: the LR of update 0 in every group (default 1e-6). Give this or
            ``warmup_starting_lr_ratio``, not both.
        warmup_starting_lr_ratio: the LR of update 0 as a fraction of each group's base LR.
        lr_min_ratio: the final LR as a fraction of the base LR; one float for all groups or
            one per param group (default 0.05).
        num_cooldown_steps: updates held at the minimum LR at the end of the run.
        k_decay: exponent on the decay progress (k-decay); above 1 keeps the LR high for
            longer, below 1 drops it sooner.
        total_num_epochs: pytorch-accelerated's way to give the length, with
            ``num_update_steps_per_epoch``: ``total_num_steps`` is their product. With it
            (or another ``*_epochs`` argument) the minimum LR defaults to
            pytorch-accelerated's ``lr_min`` of 1e-6.
        num_update_steps_per_epoch: optimizer updates per epoch, for the ``*_epochs``
            arguments.
        num_warmup_epochs: ``num_warmup_steps`` in epochs (pytorch-accelerated's argument).
        num_cooldown_epochs: ``num_cooldown_steps`` in epochs.
        lr_min: the final LR as an absolute value, the same for every param group
            (pytorch-accelerated's argument); give it or ``lr_min_ratio``.
        min_lr_ratio: pytorch-accelerated's name of ``lr_min_ratio``.

    Example:
        >>> import torch
        >>> parameter = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([parameter], lr=0.1)
        >>> scheduler = CosineLrScheduler(
        ...     optimizer, total_num_steps=100, num_warmup_steps=10, lr_min_ratio=0.01
        ... )
        >>> scheduler.get_lr(0), scheduler.get_lr(10), scheduler.get_lr(99)
        ([1e-06], [0.1], [0.001])
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int | None = None,
        num_warmup_steps: int | float = 0,
        warmup_starting_lr: float | None = None,
        warmup_starting_lr_ratio: float | None = None,
        lr_min_ratio: float | Sequence[float] | None = None,
        num_cooldown_steps: int = 0,
        k_decay: float = 1.0,
        *,
        total_num_epochs: int | None = None,
        num_update_steps_per_epoch: int | None = None,
        num_warmup_epochs: int | None = None,
        num_cooldown_epochs: int | None = None,
        lr_min: float | None = None,
        min_lr_ratio: float | None = None,
    ) -> None:
        is_epoch_based = any(
            value is not None
            for value in (total_num_epochs, num_warmup_epochs, num_cooldown_epochs)
        )
        total_num_steps = _total_from_epochs(
            total_num_steps, total_num_epochs, num_update_steps_per_epoch, "total_num_epochs"
        )
        if num_warmup_epochs is not None:
            num_warmup_steps = _epochs_to_steps(num_warmup_epochs, num_update_steps_per_epoch)
        if num_cooldown_epochs is not None:
            num_cooldown_steps = _epochs_to_steps(num_cooldown_epochs, num_update_steps_per_epoch)
        if min_lr_ratio is not None:
            lr_min_ratio = _only_one("lr_min_ratio", lr_min_ratio, "min_lr_ratio", min_lr_ratio)
        if lr_min is None and lr_min_ratio is None and is_epoch_based:
            lr_min = _PYTORCH_ACCELERATED_COSINE_LR_MIN
        if lr_min is not None:
            lr_min_ratio = _only_one(
                "lr_min_ratio", lr_min_ratio, "lr_min", _ratios_of_absolute(optimizer, lr_min)
            )
        if lr_min_ratio is None:
            lr_min_ratio = 0.05
        self.total_num_steps = _check_total_num_steps(total_num_steps)
        self.num_warmup_steps = _resolve_num_steps(
            num_warmup_steps, total_num_steps, "num_warmup_steps"
        )
        self.num_cooldown_steps = _check_non_negative_int(num_cooldown_steps, "num_cooldown_steps")
        self.num_decay_steps = total_num_steps - self.num_warmup_steps - self.num_cooldown_steps
        if self.num_decay_steps < 1:
            raise ValueError(
                f"num_warmup_steps ({self.num_warmup_steps}) + num_cooldown_steps "
                f"({self.num_cooldown_steps}) leave no update for the cosine decay in a run of "
                f"total_num_steps={total_num_steps}. Shorten the warm-up or cooldown so that "
                "their sum is below total_num_steps."
            )
        if not k_decay > 0:
            raise ValueError(
                f"k_decay must be > 0 (1.0 is the plain cosine), got {k_decay!r}. Use a value "
                "above 1 to keep the LR high for longer, below 1 to decay sooner."
            )
        self.k_decay = float(k_decay)
        self.warmup_starting_lrs = _resolve_warmup_starting_lrs(
            optimizer, warmup_starting_lr, warmup_starting_lr_ratio
        )
        self.lr_min_ratios = _resolve_per_group_ratio(optimizer, lr_min_ratio, "lr_min_ratio")
        super().__init__(optimizer)

    def _lr_for_group(
        self, update_step: int, base_lr: float, starting_lr: float, min_lr: float
    ) -> float:
        if update_step < self.num_warmup_steps:
            return _warmup_lr(update_step, self.num_warmup_steps, starting_lr, base_lr)
        progress = _phase_progress(update_step, self.num_warmup_steps, self.num_decay_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress**self.k_decay))
        # base * f + min * (1 - f), not min + (base - min) * f: exact at both ends (f = 1, 0).
        return base_lr * factor + min_lr * (1.0 - factor)


class WSDLrScheduler(_WarmupThenDecayScheduler):
    """Warmup-stable-decay: linear warm-up, a long stable phase at the base LR, a short decay.

    The run ends in one or more *checkpoints* ``C_1 < ... < C_m = total_num_steps`` (counted
    in updates done). Checkpoint ``j`` has its own decay window of
    ``L_j = max(1, round(decay_phase_ratio * C_j))`` updates, ``s_j = C_j - L_j .. C_j - 1``,
    so the decay length is proportional to the run length that checkpoint stands for.

    The LR of update ``i`` in each param group:

    * warm-up, ``0 <= i < W``: ``start + (base - start) * i / W``;
    * stable, from ``W`` (or the previous checkpoint ``C_{j-1}``) up to ``s_j - 1``: ``base``;
    * decay, ``s_j <= i < C_j``: with progress ``p = (i - s_j) / (L_j - 1)``, update ``s_j``
      uses ``base`` and update ``C_j - 1`` uses ``min_lr = base * lr_min_ratio``
      (a one-update window goes straight to ``min_lr``). The shapes are

      - ``"linear"``: ``min_lr + (base - min_lr) * (1 - p)``;
      - ``"sqrt"``: ``min_lr + (base - min_lr) * (1 - sqrt(p))``, the "1 - sqrt" cooldown;
      - ``"inverse_proportional"``: ``1 / ((1 - p) / base + p / min_lr)``, i.e. ``1 / lr``
        grows linearly; it drops quickly at first and flattens near ``min_lr`` (needs
        ``lr_min_ratio > 0``);

    * after ``C_j`` (``j < m``) the next segment starts stable at ``base`` again; after the
      last checkpoint the LR stays at ``min_lr``.

    *Pre-decay checkpoints*: when ``s_j`` updates are done
    ([`is_decay_phase_start`][trainwright.schedulers.WSDLrScheduler.is_decay_phase_start]), no
    update has seen a decayed LR in segment ``j``. A model saved then can be trained on, at the
    stable LR, towards a later checkpoint: that branch is the run a longer schedule would have done.
    In one uninterrupted run, the weights after ``C_j`` carry the decay into the next segment;
    resume from the pre-decay checkpoint for the exact longer run.

    Args:
        optimizer: the optimizer to schedule; each group's LR is its ``base`` LR.
        total_num_steps: the number of optimizer updates in the run; always the last
            checkpoint.
        num_warmup_steps: an int number of updates, or a float in (0, 1) read as a fraction
            of ``total_num_steps`` (rounded to the nearest update).
        warmup_starting_lr: the LR of update 0 in every group (default 1e-6). Give this or
            ``warmup_starting_lr_ratio``, not both.
        warmup_starting_lr_ratio: the LR of update 0 as a fraction of each group's base LR.
        decay_phase_ratio: each decay window's length as a fraction of its checkpoint step,
            in (0, 1).
        lr_min_ratio: the LR at the end of each decay as a fraction of the base LR; one float
            for all groups or one per param group.
        decay_shape: ``"linear"``, ``"sqrt"`` or ``"inverse_proportional"`` (see above).
        num_checkpoints: this many checkpoints, placed by ``checkpoint_spacing``. Default 1.
        checkpoint_steps: explicit, strictly increasing checkpoint steps (updates done);
            ``total_num_steps`` is added if missing. Give this or ``num_checkpoints``.
        checkpoint_spacing: ``"geometric"`` (default, as pytorch-accelerated documents it):
            each checkpoint at half the next one, ``C_j = floor(T / 2**(m - j))``, e.g.
            ``[250, 500, 1000]`` for 3 checkpoints of 1000 updates and ``[500, 1000]`` for 2;
            ``"even"``: equal segments, ``C_j = floor(j * T / m)``.
        num_epochs: pytorch-accelerated's way to give the length, with
            ``num_update_steps_per_epoch`` (their product) or ``total_steps``. The minimum
            ratio then defaults to pytorch-accelerated's ``lr_min`` of 1e-6.
        total_num_epochs: the name of ``num_epochs`` in pytorch-accelerated's
            ``create_scheduler_fn``.
        num_update_steps_per_epoch: optimizer updates per epoch, with ``num_epochs``.
        total_steps: pytorch-accelerated's name of ``total_num_steps``.
        num_warmup_epochs: ``num_warmup_steps`` in epochs (needs ``num_update_steps_per_epoch``).
        lr_min: pytorch-accelerated's name of ``lr_min_ratio`` (a ratio there too).
        use_inverse_sqrt_decay: pytorch-accelerated's switch: True is ``decay_shape="sqrt"``,
            False ``"inverse_proportional"``.
        is_continuation_from_checkpoint: only False is accepted: resume from a pre-decay
            training state with ``train(..., resume_from=...)`` instead.

    pytorch-accelerated's getters are here too: `get_checkpoint_steps`, `get_decay_info`,
    `get_phase_info`, `get_current_step` and `get_current_phase_info`. Their decay windows
    are this scheduler's (``decay_phase_ratio`` of each checkpoint's step), where
    pytorch-accelerated's are ``decay_phase_ratio`` of the period since the previous one.

    Example:
        >>> import torch
        >>> parameter = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([parameter], lr=1.0)
        >>> scheduler = WSDLrScheduler(
        ...     optimizer, total_num_steps=100, num_warmup_steps=10,
        ...     decay_phase_ratio=0.1, decay_shape="linear", num_checkpoints=2,
        ... )
        >>> scheduler.checkpoint_steps, scheduler.decay_phase_start_steps
        ([50, 100], [45, 90])
        >>> scheduler.get_lr(44), scheduler.get_lr(49), scheduler.get_lr(50)
        ([1.0], [0.0], [1.0])
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int | None = None,
        num_warmup_steps: int | float | None = 0,
        warmup_starting_lr: float | None = None,
        warmup_starting_lr_ratio: float | None = None,
        decay_phase_ratio: float = 0.1,
        lr_min_ratio: float | Sequence[float] | None = None,
        decay_shape: str | None = None,
        num_checkpoints: int | None = None,
        checkpoint_steps: Sequence[int] | None = None,
        checkpoint_spacing: str = "geometric",
        *,
        num_epochs: int | None = None,
        total_num_epochs: int | None = None,
        num_update_steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        num_warmup_epochs: int | None = None,
        lr_min: float | None = None,
        use_inverse_sqrt_decay: bool | None = None,
        is_continuation_from_checkpoint: bool = False,
    ) -> None:
        if is_continuation_from_checkpoint:
            raise ValueError(
                "is_continuation_from_checkpoint is not needed: to continue a run from a "
                "pre-decay training state with a longer schedule, pass the state to "
                "train(..., resume_from=...) with the new WSDLrScheduler settings."
            )
        if total_num_epochs is not None:  # the name in its create_scheduler_fn
            num_epochs = _only_one("num_epochs", num_epochs, "total_num_epochs", total_num_epochs)
        is_pytorch_accelerated_style = num_epochs is not None or total_steps is not None
        if total_steps is not None:
            total_num_steps = _only_one(
                "total_num_steps", total_num_steps, "total_steps", total_steps
            )
        total_num_steps = _total_from_epochs(
            total_num_steps, num_epochs, num_update_steps_per_epoch, "num_epochs"
        )
        if num_warmup_epochs is not None:
            num_warmup_steps = _epochs_to_steps(num_warmup_epochs, num_update_steps_per_epoch)
        if num_warmup_steps is None:  # pytorch-accelerated's create_scheduler_fn default
            num_warmup_steps = 0.01
        if lr_min is not None:  # a ratio in pytorch-accelerated's WSDLrScheduler
            lr_min_ratio = _only_one("lr_min_ratio", lr_min_ratio, "lr_min", lr_min)
        if lr_min_ratio is None:
            lr_min_ratio = _PYTORCH_ACCELERATED_WSD_LR_MIN if is_pytorch_accelerated_style else 0.0
        if use_inverse_sqrt_decay is not None:
            shape = "sqrt" if use_inverse_sqrt_decay else "inverse_proportional"
            decay_shape = _only_one("decay_shape", decay_shape, "use_inverse_sqrt_decay", shape)
        if decay_shape is None:
            decay_shape = "sqrt"
        if checkpoint_spacing not in ("geometric", "even"):
            raise ValueError(
                f"checkpoint_spacing must be 'geometric' or 'even', got {checkpoint_spacing!r}."
            )
        self.total_num_steps = _check_total_num_steps(total_num_steps)
        self.num_warmup_steps = _resolve_num_steps(
            num_warmup_steps, total_num_steps, "num_warmup_steps"
        )
        if decay_shape not in _DECAY_SHAPES:
            raise ValueError(
                f"decay_shape must be one of {', '.join(map(repr, _DECAY_SHAPES))}, "
                f"got {decay_shape!r}."
            )
        self.decay_shape = decay_shape
        if isinstance(decay_phase_ratio, bool) or not 0 < decay_phase_ratio < 1:
            raise ValueError(
                f"decay_phase_ratio must be in (0, 1), the fraction of each checkpoint's run "
                f"spent decaying (0.1 to 0.2 is usual), got {decay_phase_ratio!r}."
            )
        self.decay_phase_ratio = float(decay_phase_ratio)
        self.warmup_starting_lrs = _resolve_warmup_starting_lrs(
            optimizer, warmup_starting_lr, warmup_starting_lr_ratio
        )
        self.lr_min_ratios = _resolve_per_group_ratio(optimizer, lr_min_ratio, "lr_min_ratio")
        if decay_shape == "inverse_proportional" and min(self.lr_min_ratios) <= 0:
            raise ValueError(
                "decay_shape='inverse_proportional' divides by the minimum LR, so lr_min_ratio "
                f"must be > 0 for every param group, got {lr_min_ratio!r}. Use a small positive "
                "ratio such as 0.01, or the 'linear' or 'sqrt' shape to decay to zero."
            )
        self.checkpoint_steps = _resolve_checkpoint_steps(
            total_num_steps, num_checkpoints, checkpoint_steps, checkpoint_spacing
        )
        self.decay_phase_start_steps = self._compute_decay_phase_starts()
        super().__init__(optimizer)

    def is_decay_phase_start(self, update_step: int) -> bool:
        """Return whether a decay window starts at update ``update_step``.

        Called with ``scheduler.update_step`` after ``step()``, True means no update of this
        segment has used a decayed LR yet: the moment to save a pre-decay checkpoint.
        """
        return update_step in self.decay_phase_start_steps

    def is_checkpoint_step(self, update_step: int) -> bool:
        """Return whether ``update_step`` updates done completes a decay (a checkpoint)."""
        return update_step in self.checkpoint_steps

    def get_checkpoint_steps(self) -> list[int]:
        """Return the checkpoint steps (updates done), as pytorch-accelerated's does."""
        return list(self.checkpoint_steps)

    def get_decay_info(self) -> list[dict[str, int]]:
        """Return one dict per checkpoint period: ``period_start`` (the previous checkpoint,
        or 0), ``period_end`` (the checkpoint), ``decay_steps`` (its decay window's length)
        and ``pre_decay_step`` (the update the decay starts at)."""
        period_starts = [0, *self.checkpoint_steps[:-1]]
        return [
            {
                "period_start": period_start,
                "period_end": checkpoint,
                "decay_steps": checkpoint - decay_start,
                "pre_decay_step": decay_start,
            }
            for period_start, checkpoint, decay_start in zip(
                period_starts, self.checkpoint_steps, self.decay_phase_start_steps
            )
        ]

    def get_phase_info(self, num_updates: int) -> dict[str, int]:
        """Return the `get_decay_info` entry of the period ``num_updates`` updates done falls
        in (the last one beyond the end)."""
        decay_info = self.get_decay_info()
        return next(
            (info for info in decay_info if info["period_end"] >= num_updates), decay_info[-1]
        )

    def get_current_step(self) -> int:
        """Return the index of the last update done (``update_step - 1``; -1 before any)."""
        return self.update_step - 1

    def get_current_phase_info(self) -> dict[str, Any]:
        """Return `get_phase_info` for the updates done so far, with ``"phase"``: the phase
        of the next update, ``"warmup"``, ``"stable"``, ``"decay"`` or ``"finished"``."""
        info: dict[str, Any] = dict(self.get_phase_info(self.update_step))
        if self.update_step < self.num_warmup_steps:
            phase = "warmup"
        elif self.update_step >= self.total_num_steps:
            phase = "finished"
        elif self.update_step >= self.get_phase_info(self.update_step + 1)["pre_decay_step"]:
            phase = "decay"
        else:
            phase = "stable"
        return {**info, "phase": phase}

    def _lr_for_group(
        self, update_step: int, base_lr: float, starting_lr: float, min_lr: float
    ) -> float:
        if update_step < self.num_warmup_steps:
            return _warmup_lr(update_step, self.num_warmup_steps, starting_lr, base_lr)
        if update_step >= self.total_num_steps:
            return min_lr
        # The segment of update i is the first checkpoint still ahead of it (C_j > i).
        segment = bisect.bisect_right(self.checkpoint_steps, update_step)
        decay_start = self.decay_phase_start_steps[segment]
        if update_step < decay_start:
            return base_lr
        decay_length = self.checkpoint_steps[segment] - decay_start
        progress = _phase_progress(update_step, decay_start, decay_length)
        return self._decayed_lr(progress, base_lr, min_lr)

    def _decayed_lr(self, progress: float, base_lr: float, min_lr: float) -> float:
        # The ends are returned as is, so the curve hits base and min exactly.
        if progress <= 0.0:
            return base_lr
        if progress >= 1.0:
            return min_lr
        if self.decay_shape == "inverse_proportional":
            if base_lr == 0.0:
                return 0.0
            return 1.0 / ((1.0 - progress) / base_lr + progress / min_lr)
        factor = 1.0 - progress if self.decay_shape == "linear" else 1.0 - math.sqrt(progress)
        return base_lr * factor + min_lr * (1.0 - factor)

    def _compute_decay_phase_starts(self) -> list[int]:
        starts = []
        previous_end, previous_name = self.num_warmup_steps, "the end of the warm-up"
        for checkpoint in self.checkpoint_steps:
            decay_length = max(1, int(self.decay_phase_ratio * checkpoint + 0.5))
            start = checkpoint - decay_length
            if start < previous_end:
                raise ValueError(
                    f"The decay window of the checkpoint at step {checkpoint} ({decay_length} "
                    f"updates, decay_phase_ratio={self.decay_phase_ratio}) would start at step "
                    f"{start}, before {previous_name} (step {previous_end}). Use fewer or more "
                    "widely spaced checkpoints, a smaller decay_phase_ratio or a shorter warm-up."
                )
            starts.append(start)
            previous_end, previous_name = checkpoint, "the previous checkpoint"
        return starts


def _warmup_lr(
    update_step: int, num_warmup_steps: int, starting_lr: float, base_lr: float
) -> float:
    return starting_lr + (base_lr - starting_lr) * update_step / num_warmup_steps


def _phase_progress(update_step: int, phase_start: int, phase_length: int) -> float:
    """Progress in [0, 1]: 0 on the phase's first update, 1 on its last and after."""
    if phase_length == 1:
        return 1.0
    return min((update_step - phase_start) / (phase_length - 1), 1.0)


# Arguments that give a run's length the pytorch-accelerated way, and its default minimums.
_PYTORCH_ACCELERATED_TOTALS = frozenset({"total_num_epochs", "num_epochs", "total_steps"})
_PYTORCH_ACCELERATED_EPOCH_COUNTS = frozenset({"num_warmup_epochs", "num_cooldown_epochs"})
_PYTORCH_ACCELERATED_COSINE_LR_MIN = 1e-6  # an absolute LR
_PYTORCH_ACCELERATED_WSD_LR_MIN = 1e-6  # a ratio of the base LR


def _only_one(name: str, value: Any, other_name: str, other_value: Any) -> Any:
    if value is not None:
        raise ValueError(f"Give {name} or {other_name} (the same setting), not both.")
    return other_value


def _total_from_epochs(
    total_num_steps: int | None,
    num_epochs: int | None,
    num_update_steps_per_epoch: int | None,
    epochs_name: str,
) -> int:
    """``total_num_steps``, or pytorch-accelerated's epochs times updates per epoch."""
    if num_epochs is None:
        if total_num_steps is None:
            raise TypeError(
                "Give total_num_steps (optimizer updates in the run), or "
                f"{epochs_name} and num_update_steps_per_epoch. With the trainer, "
                "create_scheduler_fn() fills in total_num_steps for you."
            )
        return total_num_steps
    if total_num_steps is not None:
        raise ValueError(
            f"Give total_num_steps, or {epochs_name} with num_update_steps_per_epoch, not both."
        )
    return _epochs_to_steps(num_epochs, num_update_steps_per_epoch) if num_epochs else 0


def _epochs_to_steps(num_epochs: int, num_update_steps_per_epoch: int | None) -> int:
    if num_update_steps_per_epoch is None:
        raise ValueError(
            "Arguments in epochs need num_update_steps_per_epoch (optimizer updates per "
            "epoch), e.g. TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH."
        )
    return int(num_epochs * num_update_steps_per_epoch)


def _ratios_of_absolute(optimizer: Optimizer, lr: float) -> list[float]:
    """An absolute LR as a ratio of each param group's base LR."""
    base_lrs = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
    if any(lr > base_lr for base_lr in base_lrs) or lr < 0:
        raise ValueError(
            f"lr_min={lr} must be between 0 and every param group's base LR ({base_lrs})."
        )
    return [lr / base_lr if base_lr else 0.0 for base_lr in base_lrs]


def _check_total_num_steps(total_num_steps: int) -> int:
    if isinstance(total_num_steps, bool) or not isinstance(total_num_steps, int):
        raise TypeError(
            f"total_num_steps must be an int number of optimizer updates, got "
            f"{total_num_steps!r}. With the trainer, leave it out of create_scheduler_fn and "
            "the trainer fills in num_update_steps_per_epoch * num_epochs."
        )
    if total_num_steps < 1:
        raise ValueError(f"total_num_steps must be at least 1, got {total_num_steps}.")
    return total_num_steps


def _check_non_negative_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int number of updates, got {value!r}.")
    return value


def _resolve_num_steps(value: int | float, total_num_steps: int, name: str) -> int:
    """Turn an int count, or a float fraction of the run, into a number of updates."""
    if isinstance(value, float) and not value.is_integer():
        if not 0 < value < 1:
            raise ValueError(
                f"{name}={value} is a float, so it is read as a fraction of total_num_steps "
                "and must be in (0, 1). Pass an int for an absolute number of updates."
            )
        return int(value * total_num_steps + 0.5)
    if isinstance(value, float):
        raise ValueError(
            f"{name}={value} is a whole float; pass an int ({int(value)}) for a number of "
            "updates, or a float in (0, 1) for a fraction of total_num_steps."
        )
    return _check_non_negative_int(value, name)


def _resolve_warmup_starting_lrs(
    optimizer: Optimizer, warmup_starting_lr: float | None, warmup_starting_lr_ratio: float | None
) -> list[float]:
    """One warm-up start LR per param group, from an absolute LR or a ratio of the base LR."""
    if warmup_starting_lr is not None and warmup_starting_lr_ratio is not None:
        raise ValueError(
            "Give warmup_starting_lr (an absolute LR) or warmup_starting_lr_ratio (a fraction "
            "of each group's base LR), not both."
        )
    if warmup_starting_lr_ratio is not None:
        ratios = _resolve_per_group_ratio(
            optimizer, warmup_starting_lr_ratio, "warmup_starting_lr_ratio"
        )
        return [
            float(group.get("initial_lr", group["lr"])) * ratio
            for group, ratio in zip(optimizer.param_groups, ratios)
        ]
    if warmup_starting_lr is None:
        warmup_starting_lr = _DEFAULT_WARMUP_STARTING_LR
    if not warmup_starting_lr >= 0:
        raise ValueError(
            f"warmup_starting_lr must be a non-negative LR, got {warmup_starting_lr!r}."
        )
    return [float(warmup_starting_lr)] * len(optimizer.param_groups)


def _resolve_per_group_ratio(
    optimizer: Optimizer, ratio: float | Sequence[float], name: str
) -> list[float]:
    """One ratio in [0, 1] per param group, from one shared float or a sequence."""
    num_groups = len(optimizer.param_groups)
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        ratios = [float(ratio)] * num_groups
    else:
        ratios = [float(value) for value in ratio]
        if len(ratios) != num_groups:
            raise ValueError(
                f"{name} has {len(ratios)} values but the optimizer has {num_groups} param "
                f"groups. Give one value per param group, or a single float for all of them."
            )
    for value in ratios:
        if not 0 <= value <= 1:
            raise ValueError(
                f"{name} must be between 0 and 1 (a fraction of the base LR), got {ratio!r}."
            )
    return ratios


def _resolve_checkpoint_steps(
    total_num_steps: int,
    num_checkpoints: int | None,
    checkpoint_steps: Sequence[int] | None,
    spacing: str = "geometric",
) -> list[int]:
    if num_checkpoints is not None and checkpoint_steps is not None:
        raise ValueError(
            "Give num_checkpoints (evenly spaced) or checkpoint_steps (explicit), not both."
        )
    if checkpoint_steps is None:
        num_checkpoints = 1 if num_checkpoints is None else num_checkpoints
        if isinstance(num_checkpoints, bool) or not isinstance(num_checkpoints, int):
            raise TypeError(f"num_checkpoints must be an int, got {num_checkpoints!r}.")
        if not 1 <= num_checkpoints <= total_num_steps:
            raise ValueError(
                f"num_checkpoints must be between 1 and total_num_steps ({total_num_steps}), "
                f"got {num_checkpoints}."
            )
        if spacing == "even":
            return [
                index * total_num_steps // num_checkpoints
                for index in range(1, num_checkpoints + 1)
            ]
        if total_num_steps >> (num_checkpoints - 1) < 1:
            raise ValueError(
                f"{num_checkpoints} geometrically spaced checkpoints halve the run "
                f"{num_checkpoints - 1} times, which {total_num_steps} updates cannot hold. "
                "Use fewer checkpoints, checkpoint_spacing='even', or checkpoint_steps."
            )
        return [
            total_num_steps >> (num_checkpoints - index) for index in range(1, num_checkpoints + 1)
        ]
    steps = [_check_non_negative_int(step, "each of checkpoint_steps") for step in checkpoint_steps]
    if steps[-1:] != [total_num_steps]:
        steps.append(total_num_steps)
    is_increasing = all(earlier < later for earlier, later in itertools.pairwise(steps))
    if not is_increasing or steps[0] < 1 or steps[-1] != total_num_steps:
        raise ValueError(
            f"checkpoint_steps must be strictly increasing, each between 1 and total_num_steps "
            f"({total_num_steps}), got {list(checkpoint_steps)}."
        )
    return steps
