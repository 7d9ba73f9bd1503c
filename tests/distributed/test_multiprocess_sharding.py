"""FSDP2 on 2 CPU processes, asked for by ``accelerator_kwargs`` (torchrun) and by
``accelerate launch --use_fsdp``: the model is really sharded, trains like one process,
and its checkpoints and training states save, load and resume exactly.

Two launches: ``torchrun`` runs the sharded run and then resumes it from its saved states in
fresh trainers; ``accelerate launch --use_fsdp --fsdp_version 2`` runs a short training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from launcher import NUM_PROCESSES, free_port, run_scenarios
from sharding_scenarios import SAVE_POINTS, fsdp_run

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out_dir = tmp_path_factory.mktemp("fsdp")
    specs = [
        ("run", "fsdp_run", {"sharded": True, "out_dir": str(out_dir)}),
        ("resume", "fsdp_resume", {"out_dir": str(out_dir)}),
    ]
    return {"results": run_scenarios(specs, tmp_path_factory.mktemp("fsdp_launch"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fsdp_run(sharded=False, out_dir=str(tmp_path_factory.mktemp("one_process")))


def _assert_close(actual: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _assert_close(actual[key], expected[key])
        return
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
    )


def _assert_sharded(result: dict[str, Any]) -> None:
    assert result["distributed_type"] == "FSDP"
    assert result["get_model_is_the_model"]  # FSDP2 shards the user's module in place
    assert all(result["sharded"])  # DTensor parameters: not DDP's full copies
    assert all(local < full for local, full in zip(result["local_numel"], result["numel"]))


def test_accelerator_kwargs_fsdp2_shards_the_model_across_cpu_processes(
    sharded: dict[str, Any],
) -> None:
    results = [rank_results["run"] for rank_results in sharded["results"]]
    for result in results:
        _assert_sharded(result)
    # The shards of every parameter add up to it.
    local_numels = torch.tensor([result["local_numel"] for result in results])
    assert local_numels.sum(0).tolist() == results[0]["numel"]


def test_the_sharded_run_trains_like_one_process(
    sharded: dict[str, Any], reference: dict[str, Any]
) -> None:
    main = sharded["results"][0]["run"]
    for rank_results in sharded["results"]:
        _assert_close(rank_results["run"]["history"], reference["history"])
    # The checkpoint holds the full weights and the full optimizer state, in the layout of a
    # plain optimizer's state_dict() (loads without FSDP).
    checkpoint, expected = main["checkpoint"], reference["checkpoint"]
    assert checkpoint["optimizer_params"] == expected["optimizer_params"] == [[0, 1, 2, 3]]
    _assert_close(checkpoint["weights"], expected["weights"])
    _assert_close(checkpoint["optimizer_state"], expected["optimizer_state"])


def test_a_checkpoint_loads_back_into_the_shards(sharded: dict[str, Any]) -> None:
    main = sharded["results"][0]["run"]
    assert main["reloaded"] == main["checkpoint"]


def test_training_states_are_sharded_and_resume_exactly(sharded: dict[str, Any]) -> None:
    main = sharded["results"][0]
    assert "pytorch_model_fsdp_0" in main["run"]["state_files"]  # Accelerate's sharded save
    for name in SAVE_POINTS:
        for rank_results in sharded["results"]:
            resumed = rank_results["resume"][name]
            assert resumed["history"] == rank_results["run"]["history"], name
        assert main["resume"][name]["checkpoint"] == main["run"]["checkpoint"], name


def test_accelerate_launch_use_fsdp_runs_fsdp2_on_cpu_processes(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--num_processes",
        str(NUM_PROCESSES),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
    ]
    results = run_scenarios(
        [("by_launch", "fsdp_by_launch", {})], tmp_path, launcher_command=command
    )
    for rank_results in results:
        _assert_sharded(rank_results["by_launch"])
