"""Shared helpers: tiny models and tensor datasets, and a callback that records events."""

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
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import EVENTS


def make_dataset(num_samples: int = 12, num_features: int = 4, num_classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, num_features, generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return TensorDataset(inputs, targets)


def make_model(num_features: int = 4, num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(num_features, 8), nn.ReLU(), nn.Linear(8, num_classes))


def make_trainer(
    callbacks=(), lr: float = 0.1, model: nn.Module | None = None, **kwargs
) -> Trainer:
    model = model if model is not None else make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks, **kwargs)


class RecorderCallback(TrainerCallback):
    """Records every built-in event with the names of its keyword arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, ...]]] = []
        self.steps: list[tuple[str, int]] = []

    def _record(self, event: str, trainer: Trainer, kwargs: dict[str, Any]) -> None:
        assert isinstance(trainer, Trainer)
        self.events.append((event, tuple(sorted(kwargs))))
        if "step" in kwargs:
            self.steps.append((event, kwargs["step"]))


def _make_recording_method(event: str):
    def method(self, trainer, **kwargs):
        self._record(event, trainer, kwargs)

    method.__name__ = event
    return method


for _event in EVENTS:
    setattr(RecorderCallback, _event, _make_recording_method(_event))


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
