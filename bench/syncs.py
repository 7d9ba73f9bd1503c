"""Count the tensor methods that force a host sync (on an accelerator) while a block runs.

On a GPU, reading a tensor's value on the host (``loss.item()``, ``if tensor:``, ...) stalls the
CPU until the device catches up; a training loop that does it every step loses its overlap. On
the CPU there is nothing to wait for, so we count the calls instead of timing them. The counting
wrappers cost a Python call each, so they are installed only in the separate check pass, never
while timing.
"""

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Methods that copy a tensor's value to the host. ``item``, ``__bool__``, ``tolist`` and ``numpy``
# are the usual suspects; ``__float__``/``__int__``/``__index__`` (``float(loss)``, ``range(n)``)
# are the same thing spelled differently, so they are counted too.
SYNC_METHODS = ("item", "__bool__", "tolist", "numpy", "__float__", "__int__", "__index__")


@contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Count calls of :data:`SYNC_METHODS` on any tensor inside the ``with`` block.

    Only the outermost call is counted, so a method implemented on top of another counts once.

    Example:
        >>> with count_host_syncs() as counts:
        ...     _ = torch.ones(()).item()
        >>> counts["item"]
        1
    """
    counts: Counter = Counter()
    depth = 0

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            nonlocal depth
            if depth == 0:
                counts[name] += 1
            depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth -= 1

        return wrapper

    # Remember whether torch.Tensor defines each method itself (or inherits it from the C base
    # class), so that leaving the block restores exactly the original class.
    originals = {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS}
    for name in SYNC_METHODS:
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
