"""Helpers under the names pytorch-accelerated's ``utils`` module gives them.

The decorators run a function on one process and make the others wait, which is
`Trainer.run_on_main_process` / `Trainer.main_process_first` for code that has no trainer at
hand (they work before any trainer exists, through Accelerate's ``PartialState``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import PartialState

from trainwright.ema import ModelEma

__all__ = [
    "ModelEma",
    "local_process_zero_first",
    "local_process_zero_only",
    "remove_padding",
    "worker_init_fn",
    "world_process_zero_first",
    "world_process_zero_only",
]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _only_on(is_chosen: Callable[[PartialState], bool]) -> Callable[[_Function], _Function]:
    def decorator(function: _Function) -> _Function:
        @functools.wraps(function)
        def run_then_wait(*args: Any, **kwargs: Any) -> Any:
            state = PartialState()
            result = function(*args, **kwargs) if is_chosen(state) else None
            state.wait_for_everyone()
            return result

        return run_then_wait  # type: ignore[return-value]

    return decorator


def _first_on(
    context: Callable[[PartialState], Any],
) -> Callable[[_Function], _Function]:
    def decorator(function: _Function) -> _Function:
        @functools.wraps(function)
        def run_in_turn(*args: Any, **kwargs: Any) -> Any:
            with context(PartialState()):
                return function(*args, **kwargs)

        return run_in_turn  # type: ignore[return-value]

    return decorator


#: Run the decorated function on the main process of every machine only (``None`` elsewhere),
#: then wait for every process.
local_process_zero_only = _only_on(lambda state: state.is_local_main_process)

#: Run the decorated function on the main process of the whole run only (``None`` elsewhere),
#: then wait for every process.
world_process_zero_only = _only_on(lambda state: state.is_main_process)

#: Run the decorated function on the main process of every machine first, then on the others.
local_process_zero_first = _first_on(lambda state: state.local_main_process_first())

#: Run the decorated function on the main process of the run first, then on the others.
world_process_zero_first = _first_on(lambda state: state.main_process_first())


def worker_init_fn(worker_id: int) -> None:
    """Seed Python's ``random`` and NumPy in a DataLoader worker from torch's seed of that
    worker, for ``DataLoader(worker_init_fn=...)``.

    PyTorch already does this in every worker, from the base seed its loader drew from your
    seed, so trainwright does not need it; it is kept so that ported scripts run. It never
    reseeds torch.
    """
    seed = torch.initial_seed() % 2**32  # the worker's seed: base seed + worker_id
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed)


def remove_padding(padded_tensor: torch.Tensor, pad_value: float) -> torch.Tensor:
    """Drop the rows that are padding from a tensor gathered with
    ``trainer.gather(tensor, padding_value=pad_value)``.

    Args:
        padded_tensor: the gathered tensor; its first dimension is the rows (samples).
        pad_value: the padding value given to ``gather``.

    Returns:
        The rows not made entirely of ``pad_value``.

    Example:
        >>> import torch
        >>> remove_padding(torch.tensor([[1, 2], [-1, -1], [3, -1]]), pad_value=-1)
        tensor([[ 1,  2],
                [ 3, -1]])
    """
    is_padding = padded_tensor == pad_value
    if padded_tensor.dim() > 1:
        is_padding = is_padding.flatten(start_dim=1).all(dim=1)
    return padded_tensor[~is_padding]
