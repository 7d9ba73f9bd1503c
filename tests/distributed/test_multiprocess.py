"""Two CPU processes (torchrun, gloo) against one: same weights, metrics, counts and stops.

All 2-process runs except the failing one happen in one ``torchrun`` launch (a module-scoped
fixture), since starting the processes costs more than the runs themselves; each test
compares its part with the same scenario run here in the test process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_scenarios import (
    batch_size_unlike_the_loaders,
    batched_fetch,
    control_on_one_process,
    early_stop_counts_the_epoch,
    equivalence,
    loss_metrics_with_tails,
    make_dataset,
    padded_last_batch,
    stop_on_one_process,
    tiny_datasets,
    uneven_batch_sampler,
)
from helpers.accumulation_cases import make_token_dataset, reference_token_steps, token_weighted_run
from launcher import NUM_PROCESSES, launch, run_scenarios

from trainwright.run_control import DEFAULT_VOTE_INTERVAL, GLOO_VOTE_INTERVAL

pytestmark = pytest.mark.multiprocess

ACCUMULATION_STEPS = (1, 3)
COUNTING_ACCUMULATION_STEPS = (1, 2)
PREDICT_SIZES = (5, 11)
# (event, step, epoch) at which the last process alone raises StopTrainingError.
STOP_MOMENTS = (
    ("on_train_step_end", 1, 0),
    ("on_train_step_start", 2, 1),  # before the backward pass and its gradient all-reduce
    ("on_train_epoch_end", None, 0),
    ("on_eval_step_end", 0, 1),
)
# How many steps apart the processes vote on the requests in the stop and control runs: one
# that acts mid-epoch, and the default (longer than the runs' epochs).
VOTE_INTERVALS = (3, DEFAULT_VOTE_INTERVAL)
# (gradient accumulation, vote interval) of the control runs (6 steps an epoch).
CONTROL_CASES = ((1, 2), (2, 2), (1, DEFAULT_VOTE_INTERVAL))
COUNTED_VOTE_INTERVALS = (1, 4, DEFAULT_VOTE_INTERVAL)


def agreed_step(step: int, vote_interval: int) -> int:
    """The step at whose end the processes act on a request made during ``step``, as
    ``Trainer.vote_interval`` documents it (the epoch's steps may end before)."""
    return vote_interval * (step // vote_interval + 1)


def acting_step(step: int, num_processes: int, vote_interval: int) -> int:
    """The step at whose end a run acts on a request made during ``step``: that step itself
    with one process."""
    return step if num_processes == 1 else agreed_step(step, vote_interval)


# 24 sequences of random lengths, 4 per step over all processes, accumulation 3: 2 windows.
TOKEN_MAX_GRAD_NORMS = (None, 0.05)


def _token_run(max_grad_norm: float | None) -> dict[str, Any]:
    return {
        "num_sequences": 24,
        "total_batch_size": 4,
        "gradient_accumulation_steps": 3,
        "max_grad_norm": max_grad_norm,
    }


def _stop_key(event: str, step: int | None, epoch: int, vote_interval: int) -> str:
    return f"stop:{event}:{step}:{epoch}:{vote_interval}"


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    control_dir = tmp_path_factory.mktemp("control_states")
    helpers_dir = tmp_path_factory.mktemp("process_helpers")
    specs: list[tuple[str, str, dict[str, Any]]] = [
        *(
            (f"equivalence:{k}", "equivalence", {"gradient_accumulation_steps": k})
            for k in ACCUMULATION_STEPS
        ),
        ("loss_metrics_with_tails", "loss_metrics_with_tails", {}),
        *(
            (f"update_counting:{k}", "update_counting", {"gradient_accumulation_steps": k})
            for k in COUNTING_ACCUMULATION_STEPS
        ),
        *(
            (
                _stop_key(*moment, vote_interval),
                "stop_on_one_process",
                dict(zip(("event", "step", "epoch", "vote_interval"), (*moment, vote_interval))),
            )
            for moment in STOP_MOMENTS
            for vote_interval in VOTE_INTERVALS
        ),
        *(
            (
                f"nan_loss_on_one_process:{n}",
                "nan_loss_on_one_process",
                {"check_every_n_steps": n, "vote_interval": 1 if n == 1 else None},
            )
            for n in (1, 100)
        ),
        *(
            (
                f"control:{k}:{n}",
                "control_on_one_process",
                {
                    "gradient_accumulation_steps": k,
                    "save_dir": str(control_dir / f"{k}-{n}"),
                    "vote_interval": n,
                },
            )
            for k, n in CONTROL_CASES
        ),
        ("process_helpers", "process_helpers", {"shared_dir": str(helpers_dir)}),
        ("pytorch_accelerated_utils", "pytorch_accelerated_utils", {}),
        ("sync_batchnorm_on_cpu", "sync_batchnorm_on_cpu", {}),
        ("tiny_datasets", "tiny_datasets", {}),
        ("indivisible_split_batch", "indivisible_split_batch", {}),
        *((f"predictions:{n}", "predictions", {"num_samples": n}) for n in PREDICT_SIZES),
        ("learning_rate_finder", "learning_rate_finder", {}),
        ("tracker_that_cannot_start", "tracker_that_cannot_start", {}),
        ("early_stop_counts_the_epoch", "early_stop_counts_the_epoch", {}),
        *(
            (f"token_weighted:{max_grad_norm}", "token_weighted_run", _token_run(max_grad_norm))
            for max_grad_norm in TOKEN_MAX_GRAD_NORMS
        ),
        ("batched_fetch", "batched_fetch", {}),
        *(
            (f"collectives:{n}", "collectives_per_step", {"vote_interval": n})
            for n in COUNTED_VOTE_INTERVALS
        ),
        (
            "collectives:num_items",
            "collectives_per_step",
            {"vote_interval": DEFAULT_VOTE_INTERVAL, "returns_num_items": True},
        ),
        ("collectives:default", "collectives_per_step", {"num_steps": GLOO_VOTE_INTERVAL + 2}),
        *(
            (
                f"padded_last_batch:{split}",
                "padded_last_batch",
                {"num_processes": NUM_PROCESSES, "split_batches": split},
            )
            for split in (False, True)
        ),
        ("uneven_batch_sampler", "uneven_batch_sampler", {}),
        ("batch_size_unlike_the_loaders", "batch_size_unlike_the_loaders", {}),
    ]
    return run_scenarios(specs, tmp_path_factory.mktemp("two_processes"))


def _assert_close(actual: Any, expected: Any) -> None:
    assert torch.allclose(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-6,
    ), (actual, expected)


@pytest.mark.parametrize("gradient_accumulation_steps", ACCUMULATION_STEPS)
def test_two_processes_train_like_one_with_twice_the_batch(
    two_process_results: list[dict[str, Any]], gradient_accumulation_steps: int
) -> None:
    reference = equivalence(gradient_accumulation_steps)
    for rank_results in two_process_results:
        result = rank_results[f"equivalence:{gradient_accumulation_steps}"]
        assert result["num_updates"] == reference["num_updates"]
        _assert_close(result["weights"], reference["weights"])
        for metric in ("train_loss_epoch", "eval_loss_epoch", "evaluation_loss"):
            _assert_close(result[metric], reference[metric])


@pytest.mark.parametrize("max_grad_norm", TOKEN_MAX_GRAD_NORMS)
def test_token_weighted_updates_on_two_processes_equal_one_step_on_all_tokens(
    two_process_results: list[dict[str, Any]], max_grad_norm: float | None
) -> None:
    # Each process holds half of every batch, with its own number of target tokens: every
    # update must still be one step on the mean over all tokens of the window.
    run = _token_run(max_grad_norm)
    expected = reference_token_steps(
        make_token_dataset(run["num_sequences"]),
        run["total_batch_size"] * run["gradient_accumulation_steps"],
        lr=0.5,
        max_grad_norm=max_grad_norm,
    )
    for rank_results in two_process_results:
        result = rank_results[f"token_weighted:{max_grad_norm}"]
        torch.testing.assert_close(
            torch.tensor(result["weights"]), torch.tensor(expected), rtol=0, atol=1e-5
        )
    # The losses are means over every token too; the 2-process evaluation's last batch is
    # completed with repeats, which are left out.
    reference = token_weighted_run(**run)
    for rank_results in two_process_results:
        result = rank_results[f"token_weighted:{max_grad_norm}"]
        for metric in ("train_loss_epoch", "eval_loss_epoch"):
            _assert_close(result[metric], reference[metric])


def test_loss_metrics_count_every_sample_exactly_once(
    two_process_results: list[dict[str, Any]],
) -> None:
    reference = loss_metrics_with_tails()
    for rank_results in two_process_results:
        result = rank_results["loss_metrics_with_tails"]
        assert set(result) == set(reference)
        for key, expected in reference.items():
            if key.startswith("gathered_"):
                assert result[key] == expected, key  # exact: every sample once, in order
            else:
                _assert_close(result[key], expected)


def test_gather_for_metrics_returns_each_sample_once_in_order() -> None:
    # The reference itself must hold the datasets' samples (so the comparison above is real).
    reference = loss_metrics_with_tails()
    for num_samples in (10, 7, 2):
        dataset = make_dataset(num_samples, seed=num_samples)
        targets = dataset.tensors[1].tolist()
        assert reference[f"gathered_{num_samples}"] == {
            "sample_ids": list(range(num_samples)),
            "targets": targets,
            "doubled": [2 * target for target in targets],
        }


@pytest.mark.parametrize("gradient_accumulation_steps", COUNTING_ACCUMULATION_STEPS)
def test_max_num_train_steps_counts_updates_on_every_process(
    two_process_results: list[dict[str, Any]], gradient_accumulation_steps: int
) -> None:
    # 20 samples, 2 per batch per process: 5 batches per process and epoch.
    updates_per_epoch = math.ceil(5 / gradient_accumulation_steps)
    for rank_results in two_process_results:
        result = rank_results[f"update_counting:{gradient_accumulation_steps}"]
        assert result["num_processes"] == NUM_PROCESSES
        assert result["train_dataloader_len"] == 5
        assert result["train_total_batch_size"] == 2 * NUM_PROCESSES * gradient_accumulation_steps
        assert result["num_update_steps_per_epoch"] == updates_per_epoch
        assert result["num_update_steps"] == 12
        assert result["num_epochs"] == math.ceil(12 / updates_per_epoch)
        assert result["num_epochs_run"] == result["num_epochs"]
        assert result["num_updates"] == result["progress_updates"] == 12
        # The schedule, sized by NUM_UPDATE_STEPS, is stepped once per update and ends on
        # the last one: its final learning rate is OneCycleLR's minimum.
        assert result["scheduler_steps"] == result["scheduler_total_steps"] == 12
        assert result["learning_rates"][-1] == pytest.approx(0.1 / 25 / 1e4)
        assert len(result["learning_rates"]) == 12


@pytest.mark.parametrize("vote_interval", VOTE_INTERVALS)
@pytest.mark.parametrize("moment", STOP_MOMENTS, ids=lambda moment: str(moment))
def test_stop_requested_by_one_process_stops_all_at_the_same_step(
    two_process_results: list[dict[str, Any]],
    moment: tuple[str, int | None, int],
    vote_interval: int,
) -> None:
    first, last = (
        rank_results[_stop_key(*moment, vote_interval)] for rank_results in two_process_results
    )
    for result in (first, last):
        assert result["run_ended"]
        assert result["stop_message"] is not None
        assert "stop requested in " + moment[0] in result["stop_message"]
    assert "process 1 asked to stop" in first["stop_message"]
    for key in (
        "last_step_ended",
        "num_steps_ended",
        "epoch_at_stop",
        "num_updates",
        "weights_sum",
    ):
        assert first[key] == last[key], key
    # The stop takes effect where every process can agree on it: for a request made during a
    # step, at the end of the step the vote_interval rule names (or after the epoch's last
    # step, 4, if that comes first); at once for an epoch-level event.
    event, step, epoch = moment
    is_step_event = event in ("on_train_step_start", "on_train_step_end")
    expected_last_step = [epoch, min(agreed_step(step, vote_interval), 4) if is_step_event else 4]
    assert first["last_step_ended"] == expected_last_step
    # One process stops at once where it raises: the reference shows the runs are not trivial.
    assert stop_on_one_process(*moment)["num_steps_ended"] < 15


def test_nan_loss_on_one_process_stops_all_at_the_same_step(
    two_process_results: list[dict[str, Any]],
) -> None:
    first, last = (
        rank_results["nan_loss_on_one_process:1"] for rank_results in two_process_results
    )
    # Checked every step, voted on every step: the last process sees its NaN at step 2 and
    # the first at step 3 (after the NaN update): both stop at the end of step 3, the step
    # after the first request.
    assert first["last_step_ended"] == last["last_step_ended"] == [0, 3]
    assert first["num_updates"] == last["num_updates"] == 4
    assert "the loss is nan at step 2 of epoch 1" in last["stop_message"]
    assert "the loss is nan" in first["stop_message"]
    # each process records the bad loss of the error it stopped with
    assert last["error_fields"] == [1, 2, "nan"]
    for results in (first, last):
        assert results["recorded"]["non_finite_loss_step"] == [str(results["error_fields"][1])]


def test_nan_loss_checked_at_an_interval_stops_all_before_the_epoch_is_recorded(
    two_process_results: list[dict[str, Any]],
) -> None:
    first, last = (
        rank_results["nan_loss_on_one_process:100"] for rank_results in two_process_results
    )
    # Checked at the epoch's last step (step 4), with the default vote interval: both
    # processes ask to stop there, and the vote after the epoch's steps stops them before
    # train_loss_epoch is recorded.
    assert first["last_step_ended"] == last["last_step_ended"] == [0, 4]
    assert first["num_updates"] == last["num_updates"] == 5
    # each names its own first bad loss exactly: step 2 on the last process, 3 on the first
    assert last["error_fields"] == [1, 2, "nan"]
    assert first["error_fields"] == [1, 3, "nan"]
    assert "the loss is nan at step 2 of epoch 1" in last["stop_message"]
    for results, step in ((first, "3"), (last, "2")):
        assert results["recorded"] == {"non_finite_loss": ["nan"], "non_finite_loss_step": [step]}


def test_error_on_one_process_ends_the_run_instead_of_hanging(tmp_path: Path) -> None:
    result = launch([("error", "error_on_one_process", {})], tmp_path, timeout=60)
    assert result.returncode not in (None, 0), result.output
    assert "deliberate failure on the last process" in result.output
    assert result.results == [{}, {}]


# (gradient accumulation) -> the step whose update is skipped (asked during epoch 0 step 2).
SKIPPED_STEPS = {1: [0, 2], 2: [0, 3]}
LAST_CONTROL_STEP = 5  # 6 steps an epoch


@pytest.mark.parametrize(("gradient_accumulation_steps", "vote_interval"), CONTROL_CASES)
def test_control_requests_by_one_process_apply_on_all_at_the_same_step(
    two_process_results: list[dict[str, Any]],
    gradient_accumulation_steps: int,
    vote_interval: int,
    tmp_path: Path,
) -> None:
    first, last = (
        rank_results[f"control:{gradient_accumulation_steps}:{vote_interval}"]
        for rank_results in two_process_results
    )
    assert first == last  # the same decisions at the same steps: identical runs, weights too
    reference = control_on_one_process(gradient_accumulation_steps, str(tmp_path))
    for result, num_processes in ((reference, 1), (first, NUM_PROCESSES)):
        # Asked at epoch 0 step 1, the evaluation and the save are done at the end of that step
        # with one process; with several, at the end of the step the vote_interval rule
        # names, or after the epoch's last step if that comes first.
        evaluated_at = acting_step(1, num_processes, vote_interval)
        is_mid_epoch = evaluated_at <= LAST_CONTROL_STEP
        expected_first = [0, evaluated_at + 1] if is_mid_epoch else [1, 0]
        assert result["first_step_after_requests"] == expected_first
        assert result["num_evaluations"] == 1
        assert result["skipped_at"] == [SKIPPED_STEPS[gradient_accumulation_steps]]
        assert result["num_skipped_updates"] == 1
        assert result["is_state_unchanged_by_skips"]
        # Asked at epoch 1 step 1: the epoch ends after the step that acts on it, as above
        # (when that step is past the epoch's last, the epoch simply runs to its end).
        ended_at = min(acting_step(1, num_processes, vote_interval), LAST_CONTROL_STEP)
        epoch_1_steps = [step for epoch, step in result["steps_ended"] if epoch == 1]
        assert epoch_1_steps == list(range(ended_at + 1))
        assert [step for epoch, step in result["steps_ended"] if epoch == 0] == list(range(6))
        # Every update but the skipped one steps the scheduler.
        assert result["scheduler_steps"] == result["num_updates"] - 1


@pytest.mark.parametrize("vote_interval", COUNTED_VOTE_INTERVALS)
def test_the_processes_exchange_requests_only_every_vote_interval_steps(
    two_process_results: list[dict[str, Any]], vote_interval: int
) -> None:
    # Between the end of step s and the end of step s + 1: run control's vote, started at the
    # end of step s when (s + 1) is a multiple of the interval, and none at the other steps.
    # The default loader gives every process windows of as many samples, so the window's
    # item count is not all-reduced (trainwright.accumulation). DDP's gradient all-reduce
    # runs in its C++ reducer, outside the count.
    votes = [int((step + 1) % vote_interval == 0) for step in range(15)]
    for rank_results in two_process_results:
        result = rank_results[f"collectives:{vote_interval}"]
        assert result["num_steps"] == 16
        assert result["per_step"] == votes


def test_processes_on_gloo_vote_every_64_steps_by_default(
    two_process_results: list[dict[str, Any]],
) -> None:
    # On gloo a collective costs about a small model's step: by default the vote comes every
    # GLOO_VOTE_INTERVAL (64) steps there, not every DEFAULT_VOTE_INTERVAL (16).
    assert GLOO_VOTE_INTERVAL == 64
    num_steps = GLOO_VOTE_INTERVAL + 2
    votes = [int((step + 1) % GLOO_VOTE_INTERVAL == 0) for step in range(num_steps - 1)]
    for rank_results in two_process_results:
        result = rank_results["collectives:default"]
        assert result["num_steps"] == num_steps
        assert result["per_step"] == votes


def test_windows_weighed_by_num_items_sum_their_items_over_the_processes(
    two_process_results: list[dict[str, Any]],
) -> None:
    # The same run, but the hook returns num_items: every update all-reduces the window's
    # items (one per step without accumulation), besides the votes.
    votes = [int((step + 1) % DEFAULT_VOTE_INTERVAL == 0) for step in range(15)]
    for rank_results in two_process_results:
        result = rank_results["collectives:num_items"]
        assert result["per_step"] == [1 + vote for vote in votes]


@pytest.mark.parametrize("split_batches", [False, True])
def test_windows_of_a_padded_last_batch_need_no_item_count_and_stay_exact(
    two_process_results: list[dict[str, Any]], split_batches: bool
) -> None:
    # 25 samples, 2 per batch and process, accumulation 2: Accelerate completes the last
    # batch with the first samples (split_batches: the batch of 4 before splitting it). The
    # weights equal one process's on those samples, with batches of 4, and no step of an
    # epoch (7 each) calls a collective: only the epoch's end.
    reference = padded_last_batch(NUM_PROCESSES)
    for rank_results in two_process_results:
        result = rank_results[f"padded_last_batch:{split_batches}"]
        _assert_close(result["weights"], reference["weights"])
        per_step = result["per_step"]
        assert per_step[:6] == per_step[7:] == [0] * 6, per_step


def test_a_batch_sampler_of_different_sizes_per_process_sums_the_items_exactly(
    two_process_results: list[dict[str, Any]],
) -> None:
    # Batches of 3 samples on one process and 1 on the other: each update all-reduces the
    # window's items (at steps 1, 3, 5), and the weights equal one process's on batches of 4.
    reference = uneven_batch_sampler()
    for rank_results in two_process_results:
        result = rank_results["uneven_batch_sampler"]
        _assert_close(result["weights"], reference["weights"])
        assert result["per_step"] == [1, 0, 1, 0, 1], result["per_step"]


def test_process_helpers_print_and_run_on_the_main_process_only(
    two_process_results: list[dict[str, Any]],
) -> None:
    main, other = (rank_results["process_helpers"] for rank_results in two_process_results)
    # One machine: print (once per machine) and print_once (once per run) both print on
    # process 0 only; the same holds for the local and global "run on main" helpers.
    assert main["printed"] == ["print", "print_once"]
    assert other["printed"] == []
    assert main["ran"] == [1, {"key": "value"}]
    assert other["ran"] is None
    assert (main["ran_locally"], other["ran_locally"]) == ("ran locally", None)
    # The main process entered first (and saw no marker); the other one waited until the
    # main process had left the block (and saw its marker).
    expected = {"main_process_first": True, "local_main_process_first": True}
    assert main["saw_main_first"] == {name: False for name in expected}
    assert other["saw_main_first"] == expected


def test_padded_gather_and_process_decorators_of_pytorch_accelerated(
    two_process_results: list[dict[str, Any]],
) -> None:
    main, other = (rank["pytorch_accelerated_utils"] for rank in two_process_results)
    # rank 0 has 1 row of 0s, rank 1 2 rows of 1s: rank 0's is padded with a row of -1
    expected = [[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [1.0, 1.0]]
    assert main["gathered"] == other["gathered"] == expected
    assert main["without_padding"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert (main["world_zero_only"], other["world_zero_only"]) == (0, None)
    assert (main["local_zero_only"], other["local_zero_only"]) == (0, None)


def test_sync_batchnorm_conversion_is_refused_on_cpu_processes(
    two_process_results: list[dict[str, Any]],
) -> None:
    for rank_results in two_process_results:
        error = rank_results["sync_batchnorm_on_cpu"]["error"]
        assert error is not None
        assert "SyncBatchNorm cannot train on 'cpu' devices" in error
        assert "2 processes" in error


def test_world_larger_than_the_data_trains_like_one_process_without_duplicates(
    two_process_results: list[dict[str, Any]],
) -> None:
    # 1 training sample for 2 processes, and an evaluation batch larger than the evaluation
    # set: the repeats Accelerate adds are left out of the metrics and of gather_for_metrics,
    # and the update (the mean of two identical gradients) is the single-process one.
    reference = tiny_datasets()
    assert reference["gathered"]["sample_ids"] == [0, 1, 2, 0, 1, 2]  # 2 evaluations of 3
    for rank_results in two_process_results:
        result = rank_results["tiny_datasets"]
        assert result["num_updates"] == reference["num_updates"] == 2
        assert result["gathered"] == reference["gathered"]
        _assert_close(result["weights"], reference["weights"])
        for metric in ("train_loss_epoch", "eval_loss_epoch"):
            _assert_close(result[metric], reference[metric])


def test_split_batches_needs_a_batch_divisible_by_the_process_count(
    two_process_results: list[dict[str, Any]],
) -> None:
    for rank_results in two_process_results:
        result = rank_results["indivisible_split_batch"]
        assert result["error"] is not None
        assert "train batch size (3) is the batch of all 2 processes" in result["error"]
        assert "must be a multiple of 2" in result["error"]
        # A batch of 4 split between 2 processes: 2 each, 4 per update, 12 samples in 3.
        assert result["train_per_device_batch_size"] == 2
        assert result["train_total_batch_size"] == 4
        assert result["train_dataloader_len"] == 3


@pytest.mark.parametrize("num_samples", PREDICT_SIZES)
def test_predict_returns_every_sample_once_in_dataset_order(
    two_process_results: list[dict[str, Any]], num_samples: int
) -> None:
    for rank_results in two_process_results:
        result = rank_results[f"predictions:{num_samples}"]
        assert len(result["logits"]) == num_samples
        _assert_close(result["logits"], result["expected_logits"])
        _assert_close(result["inputs_only_logits"], result["expected_logits"])
        assert result["model_output_type"] == "SequenceClassifierOutput"
        _assert_close(result["model_output_logits"], result["expected_logits"])
        assert result["argmax"] == result["expected_argmax"]


def test_the_learning_rate_finder_agrees_across_processes_and_restores_the_weights(
    two_process_results: list[dict[str, Any]],
) -> None:
    first, second = (rank["learning_rate_finder"] for rank in two_process_results)
    assert first["unchanged"] and second["unchanged"]
    assert first["suggestion"] == second["suggestion"]
    assert first["losses"] == second["losses"]  # the mean over both processes


def test_a_tracker_that_cannot_start_fails_every_process_before_training(
    two_process_results: list[dict[str, Any]],
) -> None:
    for rank_results in two_process_results:  # the main process's failure, on both
        result = rank_results["tracker_that_cannot_start"]
        assert "ConnectionError: tracking server unreachable" in result["error"]
        assert result["metrics"] == []


def test_an_epoch_ended_by_early_stopping_counts_on_every_process(
    two_process_results: list[dict[str, Any]],
) -> None:
    reference = early_stop_counts_the_epoch()
    assert (reference["current_epoch"], reference["epoch"]) == (3, 2)
    for rank_results in two_process_results:
        assert rank_results["early_stop_counts_the_epoch"] == reference


def test_batched_fetching_is_exact_on_every_process(
    two_process_results: list[dict[str, Any]],
) -> None:
    seen = []
    for rank_results in two_process_results:
        runs = rank_results["batched_fetch"]
        assert runs["batched"]["dataset_type"] == "BatchedTensorDataset"
        assert runs["per_sample"]["dataset_type"] == "TensorDataset"
        assert runs["batched"]["read_in_memory"] and not runs["per_sample"]["read_in_memory"]
        assert runs["batched"]["batches"] == runs["per_sample"]["batches"]
        assert runs["batched"]["weights"] == runs["per_sample"]["weights"]  # bit for bit
        seen.append({i for batch in runs["batched"]["batches"][:3] for i in batch})
    assert seen[0].isdisjoint(seen[1])  # each process reads its own shard of the epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_trainer_fetches_batches_whole_with_the_plain_loop_weights(num_workers):
    result = batched_fetch(num_workers)
    batched, per_sample = result["batched"], result["per_sample"]
    assert batched["dataset_type"] == "BatchedTensorDataset"
    assert per_sample["dataset_type"] == "TensorDataset"  # collate_fn=default_collate: off
    assert batched["read_in_memory"] == (num_workers == 0) and not per_sample["read_in_memory"]
    assert batched["batches"] == per_sample["batches"]
    assert batched["weights"] == per_sample["weights"]  # bit for bit
    assert sorted(i for batch in batched["batches"][:8] for i in batch) == list(range(30))


def test_a_batch_size_unlike_the_loaders_is_an_error_not_a_wrong_item_count(
    two_process_results: list[dict[str, Any]],
) -> None:
    # The other processes cannot know this process's window holds fewer items than its
    # loader's batches: a clear error at the first step, before any update; with one
    # process the run trains (its item count is its own).
    for rank_results in two_process_results:
        result = rank_results["batch_size_unlike_the_loaders"]
        assert result["num_updates"] == 0
        assert "returned batch_size=3" in result["error"]
        assert "return 'num_items'" in result["error"]
    assert batch_size_unlike_the_loaders() == {"error": None}


def test_a_script_whose_last_act_is_a_collective_exits_cleanly(tmp_path: Path) -> None:
    # Gloo's thread frees a collective finishing at exit and needs the GIL for it; the
    # trainer's exit pause (GLOO_EXIT_PAUSE) hands it over before the interpreter shuts
    # down. Without it, the launch aborts: "terminate called without an active exception".
    result = launch([("exit", "collective_right_before_exit", {})], tmp_path, timeout=120)
    assert result.returncode == 0, result.output
    assert "terminate called" not in result.output
    assert [rank_results["exit"]["num_updates"] for rank_results in result.results] == [2, 2]
