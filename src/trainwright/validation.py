"""Argument checks shared by the trainer and the callbacks, with errors that say what to pass.

Each check names the argument, says what was expected and what was given: a wrong type raises
``TypeError``, a value out of range ``ValueError`` (``check_positive_int`` raises ``ValueError``
for both, as it always has). ``True`` and ``False`` are never accepted as numbers.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

__all__ = [
    "check_bool",
    "check_callable",
    "check_dataloader_kwargs",
    "check_dataset",
    "check_mapping",
    "check_number",
    "check_path",
    "check_positive_int",
    "check_type",
]


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a positive ``int`` (or
    ``None`` when ``optional``). ``True`` and ``False`` are not accepted as numbers."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alternative = " or None" if optional else ""
        raise ValueError(f"{name} must be a positive integer{alternative}; got {value!r}.")


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    is_minimum_allowed: bool = True,
    optional: bool = False,
) -> None:
    """Raises unless ``value`` is a finite real number (or ``None`` when ``optional``), at least
    ``minimum`` (above it, when not ``is_minimum_allowed``): ``TypeError`` for another type,
    ``ValueError`` for NaN, an infinity or a value out of range."""
    if optional and value is None:
        return
    alternative = " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{alternative}; got {_described(value)}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{alternative}; got {value!r}.")
    if minimum is not None and (value < minimum or (value == minimum and not is_minimum_allowed)):
        if minimum == 0:
            bound = "a non-negative number" if is_minimum_allowed else "a positive number"
        else:
            bound = f">= {minimum}" if is_minimum_allowed else f"> {minimum}"
        raise ValueError(f"{name} must be {bound}{alternative}; got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Raises ``TypeError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {_described(value)}.")


def check_type(
    name: str, value: Any, types: type | tuple[type, ...], what: str, *, optional: bool = False
) -> None:
    """Raises ``TypeError`` unless ``value`` is an instance of ``types`` (or ``None`` when
    ``optional``); ``what`` describes the expected value for the message."""
    if (optional and value is None) or isinstance(value, types):
        return
    alternative = " or None" if optional else ""
    raise TypeError(f"{name} must be {what}{alternative}; got {_described(value)}.")


def check_callable(name: str, value: Any, what: str, *, optional: bool = False) -> None:
    """Raises ``TypeError`` unless ``value`` is callable (or ``None`` when ``optional``)."""
    if (optional and value is None) or callable(value):
        return
    alternative = " or None" if optional else ""
    raise TypeError(f"{name} must be {what}{alternative}; got {_described(value)}.")


def check_mapping(name: str, value: Any, *, optional: bool = True) -> None:
    """Raises ``TypeError`` unless ``value`` is a dict of keyword arguments with string keys
    (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise TypeError(
            f"{name} must be a dict of keyword arguments (str keys); got {_described(value)}."
        )


def check_dataloader_kwargs(name: str, value: Any) -> None:
    """Raises unless ``value`` is ``None`` or a dict of ``torch.utils.data.DataLoader`` keyword
    arguments other than the dataset."""
    import inspect

    from torch.utils.data import DataLoader

    check_mapping(name, value)
    known = set(inspect.signature(DataLoader).parameters) - {"dataset"}
    unknown = sorted(set(value or ()) - known)
    if unknown:
        raise TypeError(
            f"{name} has keys that DataLoader does not take: {unknown}. It takes: "
            f"{', '.join(sorted(known))}."
        )


def check_path(name: str, value: Any, *, optional: bool = False) -> None:
    """Raises ``TypeError`` unless ``value`` is a ``str`` or ``os.PathLike`` (or ``None``)."""
    check_type(name, value, (str, os.PathLike), "a path (str or os.PathLike)", optional=optional)
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} must be a path; got an empty string.")


def check_dataset(name: str, value: Any) -> None:
    """Raises unless ``value`` can be the dataset of a ``torch.utils.data.DataLoader``: a
    map-style dataset (``__getitem__``) or an iterable one. A ``DataLoader`` is refused with
    what to do instead."""
    from torch.utils.data import DataLoader

    if value is None:
        raise ValueError(f"{name} is None; pass a dataset.")
    if isinstance(value, DataLoader):
        raise TypeError(
            f"{name} must be a dataset, not a DataLoader: the trainer builds the DataLoaders "
            f"itself. Pass the loader's dataset ({name}=loader.dataset), with its settings as "
            "train_dataloader_kwargs / eval_dataloader_kwargs (or dataloader_kwargs for "
            "evaluate()), or override create_train_dataloader / create_eval_dataloader."
        )
    if isinstance(value, (str, bytes, dict, numbers.Number)) or not (
        hasattr(value, "__getitem__") or hasattr(value, "__iter__")
    ):
        raise TypeError(
            f"{name} must be a dataset (a torch.utils.data.Dataset, or any object with "
            f"__getitem__ and __len__, or an IterableDataset); got {_described(value)}."
        )


def _described(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
