"""Placeholders for values only known once ``train()`` starts, e.g. to size a scheduler.

``TrainerPlaceholderValues`` members combine with ``*`` and ``+`` (with numbers or each
other) into expressions. The trainer resolves them, without ``eval``, in the positional and
keyword arguments of a `functools.partial` scheduler factory (also inside lists and
tuples), from the run's [`RunConfig`][trainwright.run_config.RunConfig].
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

__all__ = ["PlaceholderExpression", "TrainerPlaceholderValues", "resolve_placeholders"]


class _PlaceholderArithmetic:
    """``*`` and ``+`` for placeholders and the expressions built from them."""

    def __mul__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(operator.mul, self, other)

    def __rmul__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(operator.mul, other, self)

    def __add__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(operator.add, self, other)

    def __radd__(self, other: Any) -> PlaceholderExpression:
        return PlaceholderExpression(operator.add, other, self)


class TrainerPlaceholderValues(_PlaceholderArithmetic, Enum):
    """Values of the run that a scheduler factory can refer to before they are known.

    Each member names the [`RunConfig`][trainwright.run_config.RunConfig] field it resolves to.
    All counts are per process, and the update counts are the optimizer updates that every
    process performs, so a schedule sized with them ends exactly on the run's last update on
    any number of processes.

    Training data without a length (an ``IterableDataset`` without ``__len__``) leaves the
    per-epoch counts unknown, and ``NUM_UPDATE_STEPS`` unless ``max_num_train_steps`` is
    given (``NUM_EPOCHS`` is then the unknown one); resolving an unknown placeholder raises
    a ``ValueError`` that says so.

    Example:
        ```python
        create_scheduler_fn = functools.partial(
            torch.optim.lr_scheduler.OneCycleLR,
            max_lr=0.01,
            total_steps=TrainerPlaceholderValues.NUM_UPDATE_STEPS,
        )
        trainer.train(train_dataset, num_epochs=3, create_scheduler_fn=create_scheduler_fn)
        ```
    """

    NUM_EPOCHS = "num_epochs"
    NUM_UPDATE_STEPS_PER_EPOCH = "num_update_steps_per_epoch"
    #: pytorch-accelerated's per-process count: the same as (an alias of)
    #: ``NUM_UPDATE_STEPS_PER_EPOCH``, which is per process here.
    PER_PROCESS_NUM_UPDATE_STEPS_PER_EPOCH = "num_update_steps_per_epoch"
    #: Every optimizer update of the run (respects ``max_num_train_steps``).
    NUM_UPDATE_STEPS = "num_update_steps"
    TRAIN_DATALOADER_LEN = "train_dataloader_len"
    EVAL_DATALOADER_LEN = "eval_dataloader_len"

    def resolve(self, values: Mapping[str, Any]) -> Any:
        """This placeholder's value in ``values`` (a ``RunConfig`` or a mapping)."""
        value = values[self.value]
        if value is None:
            raise ValueError(
                f"{self} has no value in this run: {self.value} is None. {_WHY_NONE[self.value]}"
            )
        return value


#: Why each placeholder can be unknown, and what to do about it.
_NO_TRAIN_LENGTH = (
    "The training data has no length (e.g. an IterableDataset without __len__), so this "
    "count is unknown before training. "
)
_WHY_NONE = {
    "num_epochs": _NO_TRAIN_LENGTH
    + "With max_num_train_steps, epochs repeat until that many updates: size the schedule "
    "with NUM_UPDATE_STEPS instead.",
    "num_update_steps_per_epoch": _NO_TRAIN_LENGTH
    + "Give the dataset a __len__, or size the schedule with NUM_UPDATE_STEPS and pass "
    "max_num_train_steps to train().",
    "num_update_steps": _NO_TRAIN_LENGTH
    + "Pass max_num_train_steps to train() to fix the number of updates, or give the "
    "dataset a __len__.",
    "train_dataloader_len": _NO_TRAIN_LENGTH
    + "Give the dataset a __len__, or size the schedule with NUM_UPDATE_STEPS and pass "
    "max_num_train_steps to train().",
    "eval_dataloader_len": "EVAL_DATALOADER_LEN needs an eval_dataset passed to train(), "
    "with a length (not an IterableDataset without __len__).",
}


class PlaceholderExpression(_PlaceholderArithmetic):
    """An arithmetic combination of placeholders and numbers, resolved at ``train()``."""

    def __init__(self, operation: Callable[[Any, Any], Any], left: Any, right: Any) -> None:
        self.operation = operation
        self.left = left
        self.right = right

    def resolve(self, values: Mapping[str, Any]) -> Any:
        """The expression's value, with every placeholder taken from ``values``."""
        return self.operation(_resolve(self.left, values), _resolve(self.right, values))

    def __repr__(self) -> str:
        symbol = "*" if self.operation is operator.mul else "+"
        return f"({self.left!r} {symbol} {self.right!r})"


def _resolve(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, (TrainerPlaceholderValues, PlaceholderExpression)):
        return value.resolve(values)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(item, values) for item in value)
    return value


def resolve_placeholders(factory: Callable, values: Mapping[str, Any]) -> Callable:
    """Returns ``factory`` with every placeholder in its partial arguments resolved.

    Nested partials are resolved too; any other callable is returned unchanged.
    """
    if not isinstance(factory, functools.partial):
        return factory
    return functools.partial(
        resolve_placeholders(factory.func, values),
        *(_resolve(argument, values) for argument in factory.args),
        **{name: _resolve(argument, values) for name, argument in factory.keywords.items()},
    )
