"""How messages, plans and saved states name a callback: one helper, so that they agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainwright.callbacks.base import TrainerCallback

__all__ = ["callback_name"]


def callback_name(callback: TrainerCallback | type[TrainerCallback]) -> str:
    """The name of a callback (an instance or a class) in messages: its class name.

    The same name keys the callback's state in a training state (``#2``, ``#3``... added
    for further instances of a class), and is what ``run_after`` / ``run_before`` match.

    Example:
        ```python
        callback_name(EarlyStoppingCallback())  # "EarlyStoppingCallback"
        callback_name(EarlyStoppingCallback)  # the same, for the class
        ```
    """
    return callback.__name__ if isinstance(callback, type) else type(callback).__name__
