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
import time
from collections.abc import Iterable
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
    process = _start([*launcher_command, str(WORKER), str(out_dir), json.dumps(specs)])
    returncode, output = _finish(process, [out_dir], timeout)
    return Launch(returncode, output, _results(out_dir, range(NUM_PROCESSES)))


def launch_nodes(
    specs_per_node: list[list[tuple[str, str, dict[str, Any]]]],
    out_dirs: list[Path],
    timeout: float,
) -> list[Launch]:
    """Simulates a run on several machines, each with its own disk: one ``torchrun --nnodes
    N --node_rank r`` per machine, with 1 process each, on 127.0.0.1. Machine ``r`` runs
    ``specs_per_node[r]`` and writes into ``out_dirs[r]``; its launch holds the results of
    its process (rank ``r``). A launch running past ``timeout`` kills every machine's.
    """
    num_nodes = len(out_dirs)
    port = free_port()
    processes = [
        _start(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(num_nodes),
                "--node_rank",
                str(node_rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(WORKER),
                str(out_dir),
                json.dumps(specs),
            ]
        )
        for node_rank, (specs, out_dir) in enumerate(zip(specs_per_node, out_dirs))
    ]
    deadline = time.monotonic() + timeout
    launches = []
    for node_rank, (process, out_dir) in enumerate(zip(processes, out_dirs)):
        remaining = max(deadline - time.monotonic(), 1)
        returncode, output = _finish(process, out_dirs, remaining)
        if returncode is None:  # hung: the other machines' launches go too
            for other, other_dir in zip(processes, out_dirs):
                if other.poll() is None:
                    _kill(other, other_dir)
        launches.append(Launch(returncode, output, _results(out_dir, [node_rank])))
    return launches


def _start(command: list[str]) -> subprocess.Popen:
    # A plain torchrun launch, as a user would type it: the Trainer itself asks Accelerate to
    # join the processes on the CPU (gloo) when there is no GPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be killed whole
    )


def _finish(
    process: subprocess.Popen, out_dirs: list[Path], timeout: float
) -> tuple[int | None, str]:
    """The launch's exit status (``None`` when it ran past ``timeout`` and was killed) and
    output."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        for out_dir in out_dirs:
            _kill(process, out_dir)
        output, _ = process.communicate()
        return None, output


def _results(out_dir: Path, ranks: Iterable[int]) -> list[dict[str, Any]]:
    results = []
    for rank in ranks:
        path = out_dir / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return results


def _kill(process: subprocess.Popen, out_dir: Path) -> None:
    # torchrun stops its workers when terminated; it starts them in sessions of their own,
    # so the workers' own process ids (from their pid files) are killed too, to be sure.
    if process.poll() is None:
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
