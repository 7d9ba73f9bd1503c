"""Argument checks shared by the trainer and the callbacks, with errors that say what to pass."""

from __future__ import annotations

from typing import Any

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a positive ``int`` (or
    ``None`` when ``optional``). ``True`` and ``False`` are not accepted as numbers."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alternative = " or None" if optional else ""
        raise ValueError(f"{name} must be a positive integer{alternative}; got {value!r}.")
