"""Exact resume and preemption with 2 CPU processes (torchrun, gloo).

Two launches: the first runs the job uninterrupted, then again saving training states along
the way, then preempted by a SIGTERM sent to one process only; the second, in fresh
processes, resumes from every saved state. Each result is compared, process by process, with
the uninterrupted run (bit for bit: the same process count runs on both sides).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
from launcher import NUM_PROCESSES, run_scenarios

pytestmark = pytest.mark.multiprocess

# (epoch counted from 1, step) whose end a state is saved at; 3 steps per epoch, an update
# after steps 1 and 2 (see resume_scenarios).
SAVE_POINTS = {
    "mid accumulation window": (2, 0),
    "mid-epoch after an update": (2, 1),
    "end of an epoch's last step": (1, 2),
}
# (epoch, step) whose end the SIGTERM reaches the last process at, the step both processes
# stop after, and how many steps apart they vote (None: the Trainer's default, 16): with a
# vote every step, the next step (the processes read each vote one step later); with the
# default, the end of the training epoch (3 steps, shorter than the interval), as when the
# signal came in the epoch's last step.
PREEMPTIONS = {
    "mid-epoch": ((2, 0), (2, 2), None),
    "mid-epoch, voting every step": ((2, 0), (2, 1), 1),
    "in an epoch's last step": ((1, 2), (1, 2), None),
}
COMPARED = (
    "weights",
    "history",
    "current_epoch",
    "lr",
    "steps_seen",
    "best_value",
    "best_model",
    "rng",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    states = tmp_path_factory.mktemp("states")
    num_items_states = tmp_path_factory.mktemp("num_items_states")
    preemption_dirs = {
        case: states / f"preempted-{index}" for index, case in enumerate(PREEMPTIONS)
    }
    first = run_scenarios(
        [
            ("uninterrupted", "uninterrupted", {}),
            # The same job weighing by num_items: item counts all-reduced (see below).
            ("uninterrupted:num_items", "uninterrupted", {"returns_num_items": True}),
            (
                "save_along_the_way:num_items",
                "save_along_the_way",
                {
                    "points": [SAVE_POINTS["mid accumulation window"]],
                    "save_dir": str(num_items_states),
                    "returns_num_items": True,
                },
            ),
            (
                "save_along_the_way",
                "save_along_the_way",
                {"points": list(SAVE_POINTS.values()), "save_dir": str(states)},
            ),
            *(
                (
                    f"preempted:{case}",
                    "preempted",
                    {
                        "epoch": epoch,
                        "step": step,
                        "save_dir": str(preemption_dirs[case]),
                        "vote_interval": vote_interval,
                    },
                )
                for case, ((epoch, step), _, vote_interval) in PREEMPTIONS.items()
            ),
        ],
        tmp_path_factory.mktemp("first_launch"),
    )
    mid_window = SAVE_POINTS["mid accumulation window"]
    resume_dirs = {
        f"resume:{case}": states / f"e{epoch}-s{step}"
        for case, (epoch, step) in SAVE_POINTS.items()
    }
    resume_dirs["resume:epoch end"] = states / "epochs" / "state-000000002"
    # The newest state with the second process's RNG file damaged: both fall back together.
    damaged = states / "damaged"
    shutil.copytree(states / "epochs", damaged)
    rng_file = damaged / "state-000000006" / "random_states_1.pkl"
    data = bytearray(rng_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    rng_file.write_bytes(bytes(data))
    second = run_scenarios(
        [
            ("fallback", "resume_with_fallback", {"resume_from": str(damaged)}),
            (
                "resume:num_items",
                "resume",
                {
                    "resume_from": str(num_items_states / "e{}-s{}".format(*mid_window)),
                    "returns_num_items": True,
                },
            ),
            *(
                (key, "resume", {"resume_from": str(directory)})
                for key, directory in resume_dirs.items()
            ),
            *(
                (f"rerun:{case}", "rerun_after_preemption", {"save_dir": str(directory)})
                for case, directory in preemption_dirs.items()
            ),
        ],
        tmp_path_factory.mktemp("second_launch"),
    )
    return {
        "results": [{**a, **b} for a, b in zip(first, second)],
        "preemption_dirs": preemption_dirs,
    }


def assert_same_run(result: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in COMPARED:
        assert result[key] == reference[key], key  # bit for bit, as floats


def test_the_processes_differ_in_dropout_and_saving_changes_nothing(runs: dict[str, Any]) -> None:
    references = [rank_results["uninterrupted"] for rank_results in runs["results"]]
    # Every process draws its own dropout masks (so restoring each one's RNG matters), and
    # the weights still agree (DDP).
    assert references[0]["rng"] != references[1]["rng"]
    assert references[0]["weights"] == references[1]["weights"]
    assert len(references[0]["history"]["train_loss_epoch"]) == 3
    for rank_results in runs["results"]:
        assert_same_run(rank_results["save_along_the_way"], rank_results["uninterrupted"])


@pytest.mark.parametrize("case", [*SAVE_POINTS, "epoch end"])
def test_resume_in_a_fresh_launch_is_bit_identical(runs: dict[str, Any], case: str) -> None:
    # The job's windows are weighed by batch size from the default loader: their item counts
    # are known without an all-reduce (trainwright.accumulation).
    for rank_results in runs["results"]:
        assert_same_run(rank_results[f"resume:{case}"], rank_results["uninterrupted"])


def test_resume_mid_window_of_all_reduced_item_counts_is_bit_identical(
    runs: dict[str, Any],
) -> None:
    # The hook returns num_items (each batch's size): the windows' item counts are
    # all-reduced, the scale a tensor; the same weights as weighing by batch size.
    for rank_results in runs["results"]:
        reference = rank_results["uninterrupted:num_items"]
        assert_same_run(rank_results["save_along_the_way:num_items"], reference)
        assert_same_run(rank_results["resume:num_items"], reference)
        for name, weights in reference["weights"].items():
            torch.testing.assert_close(
                torch.tensor(weights),
                torch.tensor(rank_results["uninterrupted"]["weights"][name]),
                rtol=1e-6,
                atol=1e-7,
            )


def test_a_damaged_newest_state_makes_every_process_fall_back_to_the_same_one(
    runs: dict[str, Any],
) -> None:
    for rank_results in runs["results"]:
        result = rank_results["fallback"]
        assert len(result["skipped"]) == 1
        assert "state-000000006" in result["skipped"][0]
        assert "random_states_1.pkl" in result["skipped"][0]
        assert_same_run(result, rank_results["uninterrupted"])


@pytest.mark.parametrize("case", PREEMPTIONS)
def test_sigterm_to_one_process_stops_all_after_the_same_step(
    runs: dict[str, Any], case: str
) -> None:
    first, last = (rank_results[f"preempted:{case}"] for rank_results in runs["results"])
    assert (first["sent_signal"], last["sent_signal"]) == (False, True)
    _, stop_step, _ = PREEMPTIONS[case]
    for result in (first, last):
        # The process that got no signal stopped for the same reason, as an interruption.
        assert result["interrupt_signal"] == "SIGTERM"
        assert result["interrupted_by"] == ["SIGTERM"]
        assert result["stop_errors"] == []
        assert result["steps_ended"][-1] == list(stop_step)
        assert result["epochs_ended"] == list(range(1, stop_step[0]))
    assert first["num_updates"] == last["num_updates"]
    # One state, saved by both processes at the same point.
    state_name = f"state-{first['num_updates']:09d}"
    assert first["saved_states"] == last["saved_states"] == [state_name]
    state_dir = runs["preemption_dirs"][case] / state_name
    progress = [
        torch.load(state_dir / f"trainer_state_{rank}.pt", weights_only=True)["progress"]
        for rank in range(NUM_PROCESSES)
    ]
    assert progress[0] == progress[1]
    assert progress[0]["num_update_steps"] == first["num_updates"]
    assert progress[0]["epoch"] == stop_step[0] - 1  # counted from 0
    assert progress[0]["num_batches_done"] == stop_step[1] + 1


@pytest.mark.parametrize("case", PREEMPTIONS)
def test_rerun_after_preemption_continues_exactly(runs: dict[str, Any], case: str) -> None:
    for rank_results in runs["results"]:
        rerun = rank_results[f"rerun:{case}"]
        assert rerun["interrupt_signal"] is None
        assert_same_run(rerun, rank_results["uninterrupted"])
