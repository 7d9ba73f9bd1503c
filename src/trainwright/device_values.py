"""Reading values computed on the device without making the host wait for them.

Calling ``.item()`` (or ``bool()``, ``.tolist()``, printing) on a CUDA tensor blocks the
Python thread until every queued kernel has run: done once per step it stalls the pipeline.
[`DeviceValueReader`][trainwright.device_values.DeviceValueReader] instead starts a non-blocking
copy into pinned host memory and records a CUDA event; the value is read once the event reports the
copy done, usually a step or two later. On the CPU the value is ready at once and nothing is copied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["DeviceValueReader"]


class DeviceValueReader:
    """A queue of scalar tensors to read on the host once they are available.

    Example:
        ```python
        reader = DeviceValueReader()
        reader.submit(loss, tag=step)           # never waits
        for step, value in reader.ready():      # values whose copy has finished
            ...
        for step, value in reader.wait():       # at epoch end: everything, waiting if needed
            ...
        ```
    """

    def __init__(self) -> None:
        self._pending: deque[tuple[Any, torch.Tensor, Any]] = deque()

    def submit(self, tensor: torch.Tensor, tag: Any = None) -> None:
        """Queues a one-element ``tensor`` to be read later, labelled with ``tag``."""
        tensor = tensor.detach()
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        elif tensor.device.type == "cpu":
            host, event = tensor, None
        else:  # other accelerators: a plain copy, which may wait
            host, event = tensor.to("cpu"), None
        self._pending.append((tag, host, event))

    def ready(self) -> Iterator[tuple[Any, float]]:
        """Yields ``(tag, value)`` for every queued tensor whose copy has finished, in order."""
        while self._pending and (self._pending[0][2] is None or self._pending[0][2].query()):
            tag, host, _ = self._pending.popleft()
            yield tag, float(host)

    def wait(self) -> Iterator[tuple[Any, float]]:
        """Yields ``(tag, value)`` for every queued tensor, waiting for copies in flight."""
        while self._pending:
            tag, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            yield tag, float(host)

    def __len__(self) -> int:
        """How many queued tensors have not been read yet."""
        return len(self._pending)

    def clear(self) -> None:
        """Forgets every queued tensor."""
        self._pending.clear()
