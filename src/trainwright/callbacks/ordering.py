"""Resolving the order callbacks run in, from ``order``, ``run_after`` / ``run_before`` and
the metrics they declare to write and read.

The rules (applied by [`CallbackHandler`][trainwright.callbacks.base.CallbackHandler] whenever its
callbacks
change):

1. The *preferred* order is by ``order`` (lower first), then the order the callbacks were
   given in. Wherever the constraints below allow, callbacks keep it.
2. ``run_after`` / ``run_before`` name other callbacks, by class (matching instances of it and
   of its subclasses) or by class name (of the callback's class or any base class). Names that
   match no callback are ignored, so a callback may say "after early stopping, if present".
   They are hard constraints: they win over ``order``.
3. A callback whose ``reads_metrics`` holds `ALL_METRICS` (``"*"``, e.g.
   [`PrintMetricsCallback`][trainwright.callbacks.progress.PrintMetricsCallback]) runs after every
   callback that declares ``writes_metrics`` (unless that callback also reads every metric).
4. A callback that reads a named metric written by another callback must run after it. When
   the resolved order places it before, the handler raises an error naming both, or, with
   ``reorder_metric_readers=True``, moves the reader after the writer.
5. Constraints that contradict each other (a cycle) are an error naming the cycle.

Declarations are per callback, not per event: a reader is placed after a writer even when
they act at different events (where the event sequence alone would order them), which is
harmless. Callbacks that do not declare the metrics they write cannot be checked.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trainwright.callbacks.naming import callback_name

if TYPE_CHECKING:
    from trainwright.callbacks.base import TrainerCallback

__all__ = ["ALL_METRICS", "CallbackOrderError", "resolve_callback_order"]

#: Put in ``reads_metrics`` by callbacks that read every metric (printers, loggers).
ALL_METRICS = "*"


class CallbackOrderError(ValueError):
    """The callbacks' ordering constraints contradict each other, or a callback reads a
    metric before the callback that writes it has run.

    Example:
        ```python
        try:
            trainer = Trainer(model, loss_func, optimizer, callbacks=[printer, metrics])
        except CallbackOrderError as error:
            print(error)  # names the reader, the writer and the fixes
        ```
    """


def _matches(callback: TrainerCallback, target: type | str) -> bool:
    if isinstance(target, str):
        return any(callback_name(cls) == target for cls in type(callback).__mro__)
    return isinstance(callback, target)


def _reads_all(callback: TrainerCallback) -> bool:
    return ALL_METRICS in callback.reads_metrics


def resolve_callback_order(
    callbacks: Sequence[TrainerCallback], reorder_metric_readers: bool = False
) -> list[TrainerCallback]:
    """The order to run ``callbacks`` in (see the module docstring for the rules).

    Args:
        callbacks: the callbacks, in the order they were given.
        reorder_metric_readers: move a callback that reads a metric after the callback that
            writes it, instead of raising.

    Returns:
        The callbacks in execution order.

    Raises:
        CallbackOrderError: on a cycle of constraints, or a metric read before it is written
            (unless ``reorder_metric_readers``).

    Example:
        ```python
        class Accuracy(TrainerCallback):
            writes_metrics = ("accuracy",)

        class Report(TrainerCallback):
            reads_metrics = ("accuracy",)
            run_after = ("Accuracy",)  # or rely on reorder_metric_readers=True

        [type(c).__name__ for c in resolve_callback_order([Report(), Accuracy()])]
        # ['Accuracy', 'Report']
        ```
    """
    count = len(callbacks)
    preferred = sorted(range(count), key=lambda index: (callbacks[index].order, index))
    rank = {index: position for position, index in enumerate(preferred)}
    # edges[i][j] = why i must run before j
    edges: dict[int, dict[int, str]] = {index: {} for index in range(count)}

    def require(first: int, then: int, reason: str) -> None:
        if first != then:
            edges[first].setdefault(then, reason)

    metric_pairs: list[tuple[int, int, str]] = []  # (writer, reader, metric)
    for index, callback in enumerate(callbacks):
        for target in callback.run_after:
            for other in range(count):
                if _matches(callbacks[other], target):
                    require(other, index, f"{callback_name(callback)}.run_after")
        for target in callback.run_before:
            for other in range(count):
                if _matches(callbacks[other], target):
                    require(index, other, f"{callback_name(callback)}.run_before")
        for other, writer in enumerate(callbacks):
            if other == index or not writer.writes_metrics:
                continue
            if _reads_all(callback):
                if not _reads_all(writer):
                    require(other, index, f"{callback_name(callback)} reads every metric")
                continue
            for metric in callback.reads_metrics:
                if metric in writer.writes_metrics:
                    metric_pairs.append((other, index, metric))
                    if reorder_metric_readers:
                        require(other, index, f"{callback_name(callback)} reads {metric!r}")

    order = _stable_topological_order(count, edges, rank)
    if len(order) < count:
        cycle = _find_cycle(set(range(count)) - set(order), edges)
        steps = " -> ".join(
            f"{callback_name(callbacks[first])} ({edges[first][then]})"
            for first, then in itertools.pairwise(cycle)
        )
        raise CallbackOrderError(
            f"The callbacks' ordering constraints form a cycle: {steps} -> "
            f"{callback_name(callbacks[cycle[-1]])}. Remove one of these run_after / run_before "
            "declarations (or a metric declaration that implies it)."
        )
    position = {index: place for place, index in enumerate(order)}
    conflicts = [
        f"{callback_name(callbacks[reader])} reads {metric!r}, written by "
        f"{callback_name(callbacks[writer])}, but runs before it"
        for writer, reader, metric in metric_pairs
        if position[reader] < position[writer]
    ]
    if conflicts:
        raise CallbackOrderError(
            "; ".join(conflicts) + ". Give the reader a higher `order` or "
            "`run_after = (WriterClass,)`, list it after the writer, or pass "
            "reorder_metric_readers=True to place readers after writers automatically."
        )
    return [callbacks[index] for index in order]


def _stable_topological_order(
    count: int, edges: dict[int, dict[int, str]], rank: dict[int, int]
) -> list[int]:
    # Kahn's algorithm, always taking the ready callback that comes first in the preferred
    # order, so that unconstrained callbacks keep it.
    num_before = [0] * count
    for successors in edges.values():
        for then in successors:
            num_before[then] += 1
    ready = [(rank[index], index) for index in range(count) if num_before[index] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, index = heapq.heappop(ready)
        order.append(index)
        for then in edges[index]:
            num_before[then] -= 1
            if num_before[then] == 0:
                heapq.heappush(ready, (rank[then], then))
    return order


def _find_cycle(remaining: set[int], edges: dict[int, dict[int, str]]) -> list[int]:
    # Every callback left over by Kahn's algorithm still waits for another leftover one: walk
    # backwards through those until a callback repeats. Returns the cycle in execution
    # direction, its first callback repeated at the end.
    path: list[int] = []
    seen: dict[int, int] = {}
    current = min(remaining)
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        current = min(first for first in remaining if current in edges[first])
    cycle = [*path[seen[current] :], current]
    return cycle[::-1]
