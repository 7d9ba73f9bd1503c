"""Each test leaves ``os.environ`` as it found it (a plugin of its own, so that
tests/test_isolation.py can run it in a session of its own without the suite's imports)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def restored_environment():
    """Each test leaves ``os.environ`` as it found it, whatever happens in it. A launch in this
    process (``notebook_launcher``, a ported script) sets ``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...; left behind by a launch that failed, they made every later test
    build a 2-process state and fail."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
