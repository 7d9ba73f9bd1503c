"""Exact gradient accumulation: every update is one step on the mean loss over all items of
its window, on all processes, whatever the sizes of the micro-batches.

``calculate_train_batch_loss`` returns each micro-batch's *mean* loss and the number of items
it averages over (``num_items``, e.g. its target tokens, or else ``batch_size``). Dividing
each micro-batch's loss by the number of micro-batches in the window, as a plain loop does,
is exact only when every micro-batch holds as many items. Instead,
[`ItemWeighting`][trainwright.accumulation.ItemWeighting]:

1. back-propagates each micro-batch's loss times ``num_items / scale`` (``scale`` a number
   every process shares, only there to keep the gradients' magnitude near that of a mean),
   so the window's gradients are ``sum(num_items_i * grad(mean_loss_i)) / scale``, and sums
   the window's items on the device (no host sync);
2. at the window's last micro-batch, starts one all-reduce of that sum over the processes,
   without waiting: it runs while the last backward pass (and, with DDP, its gradient
   all-reduce, which averages the gradients over the ``P`` processes) does;
3. right after the last backward pass (so before ``on_after_backward`` and clipping),
   multiplies the gradients once by ``P * scale / total_items``. They are then the gradient
   of the mean loss over every item of the window on every process.

When every process's window provably holds as many items, step 2 is skipped: the total is
``P`` times the local window's items, a Python number, and the factor and the next scale are
computed on the host, without a collective or a host sync. That holds when the run plan says
every training batch of every process holds the same number of samples (its
``batch_size_of_every_process``, from ``trainwright.run_plan``'s
``window_items_match_across_processes``: several processes, not DeepSpeed,
Accelerate's ``even_batches`` on, the loader batching with torch's own ``BatchSampler`` of a
fixed size over a map-style dataset with a length; with ``split_batches`` too, whose batches
are split evenly, the last one completed to full size first) and, in this window, every
micro-batch was weighed by its ``batch_size`` (``calculate_train_batch_loss`` returned no
``num_items``), a plain ``int``. A window with any ``num_items`` is all-reduced as above. A
``batch_size`` other than the loader's there (e.g. a ``collate_fn`` that drops samples)
raises a ``ValueError``: the other processes could not know it; return ``num_items`` then.

A window of one micro-batch (``gradient_accumulation_steps=1``, or an epoch's last window of
one batch) on one process, or with as many items on every process, needs none of this: its
mean loss is already the window's mean, so it is back-propagated as it is, and the weights
are bit for bit those of a plain loop, a short last batch included.

The window's size is only needed at its end, so data without a length (whose last window's
size is unknown until it ends) is exact too. Multiplying the gradients commutes with the fp16
gradient scaler's unscaling (a division by its scale, before clipping or in its step) and
keeps an inf or NaN an inf or NaN, so the scaler still detects overflows.

DeepSpeed keeps the gradients inside its engine, out of reach: there each micro-batch's own
total is all-reduced before its backward pass and folded into its loss instead, which is
exact for windows of one micro-batch (``gradient_accumulation_steps=1``, as DeepSpeed is used
with trainwright) and weighs the micro-batches of longer windows equally.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

__all__ = ["ItemWeighting", "returned_num_items"]

#: The keys of ``calculate_train_batch_loss``'s result that give a micro-batch's weight.
NUM_ITEMS_KEYS = ("num_items", "num_items_in_batch")

Number = int | float
Weight = Number | torch.Tensor


def returned_num_items(
    batch_output: dict[str, Any], hook_name: str = "calculate_train_batch_loss"
) -> Weight | None:
    """The number of items a batch's mean loss averages over, as returned by the hook
    ``hook_name`` (``calculate_train_batch_loss`` or ``calculate_eval_batch_loss``): its
    ``num_items``, or pytorch-accelerated's ``num_items_in_batch``, read with the same meaning
    (the number of items, e.g. non-padding tokens, in this batch); ``None`` when it returned
    neither (``batch_size`` weighs the batch then).

    Raises:
        ValueError: if both keys are given, or the count is not a number or 0-dim tensor.
    """
    if "num_items" not in batch_output and "num_items_in_batch" not in batch_output:
        return None  # the common case, checked without building a list
    given = [key for key in NUM_ITEMS_KEYS if key in batch_output]
    if len(given) > 1:
        raise ValueError(
            f"{hook_name}() returned both 'num_items' and 'num_items_in_batch'; "
            "return one of them: the number of items (e.g. target tokens) that this "
            "micro-batch's mean loss averages over."
        )
    num_items = batch_output[given[0]]
    is_number = isinstance(num_items, numbers.Real) and not isinstance(num_items, bool)
    is_scalar_tensor = isinstance(num_items, torch.Tensor) and num_items.dim() == 0
    if not (is_number or is_scalar_tensor):
        shape = tuple(num_items.shape) if isinstance(num_items, torch.Tensor) else None
        raise ValueError(
            f"{hook_name}() returned {given[0]}={type(num_items).__name__}"
            f"{'' if shape is None else f' of shape {shape}'}; it must be an int or a 0-dim "
            "tensor: the number of items (e.g. target tokens, (labels != -100).sum()) that "
            "this micro-batch's mean loss averages over."
        )
    if is_number and num_items < 0:
        raise ValueError(
            f"{hook_name}() returned {given[0]}={num_items}; the number of "
            "items cannot be negative."
        )
    return num_items


class ItemWeighting:
    """Weighs the micro-batches of accumulation windows by their items, and scales each
    window's gradients to the mean over all items of the window on all processes (see the
    module's docstring).

    Args:
        accelerator: the trainer's accelerator.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator
        self._num_processes = accelerator.num_processes
        self._is_loss_folded = accelerator.distributed_type == DistributedType.DEEPSPEED
        # float64 keeps large token counts exact; MPS has no float64.
        self._dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
        self._scale: Weight = 1
        self._window_items: Weight = 0
        # Every process's batches hold this many samples (None: not known to match).
        self._matching_batch_size: int | None = None
        self._is_window_of_batch_sizes = True  # every micro-batch so far weighed by its size
        self._is_every_window_one_batch = False
        self._total: torch.Tensor | None = None
        self._work: Any = None

    def start_run(
        self,
        nominal_window_items: Number,
        matching_batch_size: int | None = None,
        gradient_accumulation_steps: int = 1,
    ) -> None:
        """Starts a ``train()`` run: an empty window, and a scale of the items a window of
        full batches holds on one process.

        Args:
            nominal_window_items: the items a window of full batches holds on one process.
            matching_batch_size: the samples of every training batch on every process, when
                the run plan guarantees they match (``RunPlan.batch_size_of_every_process``);
                a window weighed by batch sizes then needs no all-reduce. ``None``: always
                all-reduce.
            gradient_accumulation_steps: the micro-batches of a window. With 1, on one
                process (DeepSpeed aside), every window is one micro-batch whose mean loss is
                the window's: nothing is ever weighed or rescaled.
        """
        self._scale = nominal_window_items
        self._matching_batch_size = matching_batch_size
        self._is_every_window_one_batch = (
            gradient_accumulation_steps == 1
            and self._num_processes == 1
            and not self._is_loss_folded
        )
        self.discard_window()

    def discard_window(self) -> None:
        """Forgets the items of the current window (its gradients are being discarded)."""
        self._window_items = 0
        self._is_window_of_batch_sizes = True
        self._is_window_unweighted = False
        self._num_micro_batches = 0
        self._total, self._work = None, None

    def weigh(
        self,
        loss: torch.Tensor,
        num_items: Weight,
        is_window_end: bool,
        is_batch_size: bool = False,
    ) -> torch.Tensor:
        """The tensor to back-propagate for a micro-batch with mean loss ``loss`` over
        ``num_items`` items; at the window's last micro-batch (``is_window_end``), also
        starts summing the window's items over the processes, unless they are known to
        match (see the module's docstring).

        Args:
            loss: the micro-batch's mean loss.
            num_items: the items it averages over.
            is_window_end: whether it is the window's last micro-batch.
            is_batch_size: whether ``num_items`` is the batch's ``batch_size`` (the hook
                returned no ``num_items``).

        Raises:
            ValueError: if a ``batch_size`` differs from that of every process's batches.
        """
        if self._is_every_window_one_batch:
            return loss  # as a window of one below, without the bookkeeping
        if self._is_loss_folded:
            return _weighted(loss, self._folded_weight(num_items))
        is_window_of_one = is_window_end and self._num_micro_batches == 0
        self._num_micro_batches += 1
        self._window_items = self._window_items + num_items
        self._is_window_of_batch_sizes = self._is_window_of_batch_sizes and (
            is_batch_size and type(num_items) is int
        )
        if self._is_window_of_batch_sizes and self._matching_batch_size is not None:
            self._check_batch_size(num_items)
        if is_window_of_one and (self._num_processes == 1 or self._is_total_known()):
            # A window of one micro-batch with as many items on every process: its mean loss
            # is already the window's, so it is back-propagated as it is, bit for bit what a
            # plain loop computes (a short last batch included), and nothing is rescaled.
            self._is_window_unweighted = True
            return loss
        if is_window_end and self._num_processes > 1 and not self._is_total_known():
            self._total = self._as_tensor(self._window_items)
            self._work = dist.all_reduce(self._total, async_op=True)
        return _weighted(loss, num_items / self._scale)

    def _is_total_known(self) -> bool:
        # Every process's window holds as many items: P times this one's (module docstring).
        return self._matching_batch_size is not None and self._is_window_of_batch_sizes

    def _check_batch_size(self, batch_size: int) -> None:
        if batch_size != self._matching_batch_size:
            raise ValueError(
                f"calculate_train_batch_loss() returned batch_size={batch_size}, but the "
                f"training dataloader batches {self._matching_batch_size} samples on every "
                "process, which the item count of each accumulation window relies on. If "
                "your collate_fn or hook changes the number of samples, return 'num_items' "
                "(the number of samples the loss averages over) from "
                "calculate_train_batch_loss() in every batch."
            )

    @property
    def rescales_gradients(self) -> bool:
        """Whether `scale_gradients` may change the gradients: not when every window is one
        micro-batch on one process, nor with DeepSpeed (the losses are weighed instead)."""
        return not (self._is_every_window_one_batch or self._is_loss_folded)

    def scale_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Scales the window's gradients to the mean over all its items on all processes;
        called once per window, after its last backward pass and before clipping."""
        if self._is_loss_folded or self._is_every_window_one_batch:  # nothing to rescale
            return
        if self._is_window_unweighted:  # already the window's mean (see weigh)
            self.discard_window()
            return
        if self._num_processes == 1:
            total: Weight = self._window_items
        elif self._is_total_known():
            total = self._num_processes * self._window_items  # a Python int
        else:
            self._work.wait()  # on a GPU, orders the stream; the host does not wait
            total = self._total
        if isinstance(total, torch.Tensor):
            factor: Weight = torch.where(
                total > 0, self._num_processes * self._scale / total, 0.0
            ).to(self._dtype)
            # The next window's items per process are likely those of this one.
            self._scale = total.to(self._dtype) / self._num_processes
        elif total:
            # Another window's scale may be a tensor: the factor is one then too.
            factor = self._num_processes * self._scale / total
            self._scale = total // self._num_processes if self._num_processes > 1 else total
        else:
            factor = 0.0
        self.discard_window()
        if not isinstance(factor, float) or factor != 1.0:
            _multiply_gradients(parameters, factor)

    def state_dict(self) -> dict[str, Any]:
        """The scale (a number or a tensor) and the current window's items, for an exact
        resume mid-window."""
        return {
            "scale": _to_cpu(self._scale),
            "window_items": _to_cpu(self._window_items),
            "is_window_of_batch_sizes": self._is_window_of_batch_sizes,
            "num_micro_batches": self._num_micro_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict`; a state saved before it recorded whether the window was
        weighed by batch sizes finishes its window with an all-reduce."""
        device = self._accelerator.device
        self.discard_window()
        self._scale = _to_device(state["scale"], device)
        self._window_items = _to_device(state["window_items"], device)
        self._is_window_of_batch_sizes = state.get("is_window_of_batch_sizes", False)
        # Older states: a window with items so far has had a micro-batch.
        self._num_micro_batches = state.get("num_micro_batches", int(bool(state["window_items"])))

    def _as_tensor(self, value: Weight) -> torch.Tensor:
        device = self._accelerator.device
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=self._dtype)
        # A fill, not a copy from the host, which could wait for the GPU's queue.
        return torch.full((), value, dtype=self._dtype, device=device)

    def _folded_weight(self, num_items: Weight) -> Weight:
        # DeepSpeed: this micro-batch's share of its items over all processes, times the
        # number of processes (its engine averages the gradients over them).
        if self._num_processes == 1:  # a weight of 1, or 0 for a micro-batch without items
            if isinstance(num_items, torch.Tensor):
                return (num_items > 0).to(self._dtype)
            return 1.0 if num_items else 0.0
        total = self._as_tensor(num_items)
        dist.all_reduce(total)
        tiny = torch.finfo(self._dtype).tiny  # no items anywhere: a weight of 0
        return self._num_processes * num_items / total.clamp(min=tiny)


def _weighted(loss: torch.Tensor, weight: Weight) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return loss * weight.to(loss.dtype)
    return loss if weight == 1.0 else loss * weight


def _multiply_gradients(parameters: Iterable[nn.Parameter], factor: Weight) -> None:
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
    for parameter in parameters:
        if parameter.grad is not None:
            by_device[parameter.grad.device, parameter.grad.dtype].append(parameter.grad)
    for (device, dtype), grads in by_device.items():
        if isinstance(factor, torch.Tensor):
            if any(type(grad) is not torch.Tensor for grad in grads):
                # DTensor gradients (FSDP2) mix with a plain number only: one host read.
                for grad in grads:
                    grad.mul_(float(factor))
                continue
            scale = factor.to(device=device, dtype=dtype)
            torch._foreach_mul_(grads, scale)
        else:
            torch._foreach_mul_(grads, factor)


def _to_cpu(value: Weight) -> Weight:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _to_device(value: Weight, device: torch.device) -> Weight:
    return value.to(device) if isinstance(value, torch.Tensor) else value
