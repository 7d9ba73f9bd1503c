"""Two machines, each saving training states to its own disk, simulated on 127.0.0.1 (one
``torchrun --nnodes 2 --node_rank r`` per machine, one process each, each with its own save
directory). One launch pair runs ``multinode_scenarios.per_machine_disks`` on both.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from launcher import launch_nodes

pytestmark = pytest.mark.multiprocess

NUM_MACHINES = 2


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    disks = [tmp_path_factory.mktemp(f"machine{rank}") for rank in range(NUM_MACHINES)]
    save_dirs = [disk / "states" for disk in disks]
    # Machine 1 looks for the "latest" state in an empty directory, as a machine that
    # replaced a failed one would.
    latest_save_dirs = [save_dirs[0], disks[1] / "replaced"]
    specs_per_machine = [
        [
            (
                "run",
                "per_machine_disks",
                {
                    "save_dir": str(save_dirs[rank]),
                    "other_save_dir": str(save_dirs[1 - rank]),
                    "latest_save_dir": str(latest_save_dirs[rank]),
                },
            )
        ]
        for rank in range(NUM_MACHINES)
    ]
    launches = launch_nodes(specs_per_machine, disks, timeout=240)
    for rank, launch in enumerate(launches):
        assert launch.returncode is not None, f"machine {rank} hung:\n{launch.output}"
        assert launch.returncode == 0, f"machine {rank} failed:\n{launch.output}"
    return [launch.results[0]["run"] for launch in launches]


def test_every_machine_finishes_and_prunes_its_part_of_each_state(
    machines: list[dict[str, Any]],
) -> None:
    # 4 epoch-end saves of 2 updates each, the newest 2 kept: on every machine, with no
    # "state-N.incomplete" left behind on the machine that is not the main process's.
    for result in machines:
        assert result["states"] == ["state-000000006", "state-000000008"]


def test_resume_latest_on_machines_that_found_different_states_fails_on_every_machine(
    machines: list[dict[str, Any]],
) -> None:
    # Machine 0 finds a state, machine 1 none: machine 0 would resume while machine 1
    # started afresh. One error, the same on both, instead.
    errors = [result["latest"] for result in machines]
    assert errors[0] == errors[1]
    assert errors[0].startswith("RuntimeError: The processes found different training states")
    assert "process 0" in errors[0] and "state-000000008" in errors[0]
    assert "process 1" in errors[0] and "none" in errors[0]
    assert "storage every machine" in errors[0]


def test_a_state_each_machine_holds_part_of_is_refused_on_every_machine(
    machines: list[dict[str, Any]],
) -> None:
    errors = [result["by_name"] for result in machines]
    # The same error, naming each machine's own path to the state.
    assert re.sub(r"machine\d+", "machine", errors[0]) == re.sub(
        r"machine\d+", "machine", errors[1]
    )
    assert "process 0 (host" in errors[0] and "does not see trainer_state_1.pt" in errors[0]
    assert "every process must see the whole state" in errors[0]


def test_a_state_copied_whole_onto_every_machine_resumes_exactly(
    machines: list[dict[str, Any]],
) -> None:
    for result in machines:
        assert result["resumed_weights"] == result["weights"]
