"""Launches ``worker.py`` under ``torchrun`` with 2 CPU processes (gloo) and reads back what
each process wrote.

A launch that runs past its timeout is killed with its whole process group, so a hang fails
the test instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")
NUM_PROCESSES = 2


@dataclass
class Launch:
    """The outcome of one ``torchrun`` launch.

    Attributes:
        returncode: torchrun's exit status (``None`` if it was killed for running too long).
        output: torchrun's stdout and stderr, which include every worker's.
        results: per rank, the dictionary of results the worker wrote (empty if none).
    """

    returncode: int | None
    output: str
    results: list[dict[str, Any]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command() -> list[str]:
    """``torchrun`` starting :data:`NUM_PROCESSES` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(NUM_PROCESSES),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]


def launch(
    specs: list[tuple[str, str, dict[str, Any]]],
    out_dir: Path,
    timeout: float,
    launcher_command: list[str] | None = None,
) -> Launch:
    """Runs ``specs`` (``(key, scenario name, kwargs)``) in 2 processes and collects results.

    ``launcher_command`` (default :func:`torchrun_command`) is what precedes the worker's path
    on the command line, e.g. an ``accelerate launch`` command.
    """
    launcher_command = launcher_command or torchrun_command()
    command = [*launcher_command, str(WORKER), str(out_dir), json.dumps(specs)]
    # A plain torchrun launch, as a user would type it: the Trainer itself asks Accelerate to
    # join the processes on the CPU (gloo) when there is no GPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be killed whole
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        returncode: int | None = process.returncode
    except subprocess.TimeoutExpired:
        _kill(process, out_dir)
        output, _ = process.communicate()
        returncode = None
    results = []
    for rank in range(NUM_PROCESSES):
        path = out_dir / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return Launch(returncode, output, results)


def _kill(process: subprocess.Popen, out_dir: Path) -> None:
    # torchrun stops its workers when terminated; it starts them in sessions of their own,
    # so the workers' own process ids (from their pid files) are killed too, to be sure.
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    for pid_file in out_dir.glob("pid.rank*"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def run_scenarios(
    specs: list[tuple[str, str, dict[str, Any]]],
    out_dir: Path,
    timeout: float = 120,
    launcher_command: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Like :func:`launch`, but fails (showing the output) unless every process succeeded."""
    result = launch(specs, out_dir, timeout, launcher_command)
    if result.returncode is None:
        raise AssertionError(f"torchrun hung for {timeout} s and was killed:\n{result.output}")
    if result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.output}")
    return result.results
