"""Fixtures shared by every test: a fresh Accelerate state, one torch thread, an MLflow server,
and (helpers.environment_guard) the environment each test started with.

Helpers that tests import (tiny models, datasets, the resume job, host-sync counting) live in
``tests/helpers/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

# helpers.environment_guard: each test gets the environment it started with
# (tests/test_isolation.py checks it, with a pytest session of its own: pytester)
pytest_plugins = ["helpers.environment_guard", "pytester"]


@pytest.fixture
def one_torch_thread():
    """Runs tiny models on one thread. Their operations take microseconds, so a second
    thread only adds hand-offs; on a busy 2-core machine each hand-off can wait for a
    descheduled thread, which made such tests several times slower."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts with Accelerate's process-wide state unset, as a new script would."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ---------------------------------------------------------------------------------------------
# A real MLflow tracking server on loopback, started in the background as soon as a collected
# test asks for it: it takes 20-30 s to come up on 2 cores, which the rest of the suite hides.
# ---------------------------------------------------------------------------------------------

_MLFLOW_SERVER: dict[str, Any] = {}


def pytest_collection_modifyitems(session, config, items):
    wanted = any("mlflow_server_uri" in getattr(item, "fixturenames", ()) for item in items)
    if wanted and importlib.util.find_spec("mlflow") is not None:
        _start_mlflow_server()


def _start_mlflow_server() -> None:
    directory = Path(tempfile.mkdtemp(prefix="trainwright-mlflow-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(directory / "server.log", "wb")  # noqa: SIM115 - closed in pytest_unconfigure
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--default-artifact-root", str(directory / "artifacts"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    _MLFLOW_SERVER.update(process=process, log=log, directory=directory,
                          uri=f"http://127.0.0.1:{port}")  # fmt: skip


def pytest_unconfigure(config):
    process = _MLFLOW_SERVER.pop("process", None)
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # any worker left in the group
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)
    _MLFLOW_SERVER["log"].close()
    shutil.rmtree(_MLFLOW_SERVER["directory"], ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server_uri() -> str:
    """The URI of the MLflow server started for this session, once it answers (bounded)."""
    if "process" not in _MLFLOW_SERVER:
        pytest.fail("mlflow is not installed: pip install -e '.[test]' installs it.")
    process, uri = _MLFLOW_SERVER["process"], _MLFLOW_SERVER["uri"]
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (_MLFLOW_SERVER["directory"] / "server.log").read_text()[-2000:]
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return uri
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("mlflow server did not answer on /health within 150 s")
