"""The launchers other than ``torchrun``: ``accelerate launch`` with a config file, and
``accelerate.notebook_launcher`` called from Python, run the same 2-process training as
``torchrun`` (see test_multiprocess.py) and match one process.

``accelerate launch`` with ``distributed_type: MULTI_CPU`` is not tested: on one machine
Accelerate starts multi-CPU jobs only through ``mpirun`` (``--mpirun_hostfile``), and without
it starts a single process (see docs/distributed.md). A ``MULTI_GPU`` config starts the
processes with torchrun, and on a machine without a GPU the Trainer joins them on the CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import PartialState, notebook_launcher
from distributed_scenarios import equivalence
from launcher import NUM_PROCESSES, free_port, run_scenarios

pytestmark = pytest.mark.multiprocess

ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
mixed_precision: 'no'
num_machines: 1
num_processes: {num_processes}
machine_rank: 0
main_process_ip: 127.0.0.1
main_process_port: {port}
rdzv_backend: static
same_network: true
"""


def _assert_matches_one_process(result: dict[str, Any], reference: dict[str, Any]) -> None:
    assert result["num_updates"] == reference["num_updates"]
    torch.testing.assert_close(
        torch.tensor(result["weights"]), torch.tensor(reference["weights"]), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(result["eval_loss_epoch"]),
        torch.tensor(reference["eval_loss_epoch"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_accelerate_launch_with_a_config_file_runs_the_worker_on_two_processes(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "accelerate.yaml"
    config_file.write_text(ACCELERATE_CONFIG.format(num_processes=NUM_PROCESSES, port=free_port()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    specs = [
        ("equivalence", "equivalence", {"gradient_accumulation_steps": 1}),
        ("process_helpers", "process_helpers", {"shared_dir": str(tmp_path)}),
    ]
    results = run_scenarios(specs, out_dir, launcher_command=[*command, str(config_file)])

    reference = equivalence(1)
    for rank_results in results:
        _assert_matches_one_process(rank_results["equivalence"], reference)
    assert [rank_results["process_helpers"]["ran"] for rank_results in results] == [
        [1, {"key": "value"}],
        None,
    ]


def _train_in_launched_process(out_dir: str) -> None:
    result = equivalence(1)
    rank = int(os.environ["RANK"])
    result["num_processes_joined"] = PartialState().num_processes
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_notebook_launcher_trains_on_two_processes_from_python(tmp_path: Path) -> None:
    # Accelerate forks the processes from this one; its state must not be set up here yet
    # (the autouse fixture resets it), and the reference runs after the launch.
    notebook_launcher(
        _train_in_launched_process,
        (str(tmp_path),),
        num_processes=NUM_PROCESSES,
        use_port=str(free_port()),
    )

    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reference = equivalence(1)
    for result in results:
        assert result["num_processes_joined"] == NUM_PROCESSES  # not 2 lone processes
        _assert_matches_one_process(result, reference)
