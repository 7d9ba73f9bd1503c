"""Multi-process helpers that can be checked in one process: where Accelerate repeats
samples, the check that every launched process joined, and stop requests deferred to run control."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from accelerate.data_loader import BatchSamplerShard
from helpers.tiny import make_trainer
from torch.utils.data import BatchSampler, SequentialSampler

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import CallbackHandler
from trainwright.distributed import padded_tail


def _shards(num_samples: int, batch_size: int, num_processes: int, split_batches: bool):
    """Each process's batches of sample indices, as Accelerate's prepared dataloaders
    (``even_batches=True``) give them; ``batch_size`` is the total over processes."""
    shards = []
    for rank in range(num_processes):
        sampler = BatchSampler(SequentialSampler(range(num_samples)), batch_size, False)
        shard = BatchSamplerShard(
            sampler,
            num_processes=num_processes,
            process_index=rank,
            split_batches=split_batches,
            even_batches=True,
        )
        shards.append(list(shard))
    return shards


@pytest.mark.parametrize("split_batches", [False, True])
@pytest.mark.parametrize("num_processes", [2, 3])
@pytest.mark.parametrize("num_samples", [1, 2, 5, 7, 10, 12, 13])
def test_padded_tail_leaves_out_exactly_the_repeated_samples(
    num_samples: int, num_processes: int, split_batches: bool
) -> None:
    per_process = 2
    # Without split_batches the sampler's batch is the per-process batch.
    sampler_batch = per_process * num_processes if split_batches else per_process
    shards = _shards(num_samples, sampler_batch, num_processes, split_batches)
    genuine_batches: dict[tuple[int, int], list[int]] = {}
    for rank, batches in enumerate(shards):
        assert len(batches) == len(shards[0])  # even_batches: the same count everywhere
        dataloader = _PreparedDataLoader(
            range(num_samples), per_process * num_processes, len(batches)
        )
        accelerator = SimpleNamespace(num_processes=num_processes, process_index=rank)
        tail = padded_tail(dataloader, accelerator)
        for step, batch in enumerate(batches):
            if tail is not None and step == tail.step:
                batch = batch[: tail.num_genuine_samples]
            genuine_batches[(step, rank)] = batch
    # In global order (step, then rank), the genuine samples are the dataset, each once.
    in_order = [index for key in sorted(genuine_batches) for index in genuine_batches[key]]
    assert in_order == list(range(num_samples))


class _PreparedDataLoader:
    """What ``padded_tail`` reads of a prepared dataloader: its dataset, total batch size
    (over processes) and length (batches per process)."""

    def __init__(self, dataset: range, total_batch_size: int, length: int) -> None:
        self.dataset = dataset
        self.total_batch_size = total_batch_size
        self._length = length

    def __len__(self) -> int:
        return self._length


def test_padded_tail_is_none_on_one_process() -> None:
    dataloader = _PreparedDataLoader(range(5), 2, 3)
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    assert padded_tail(dataloader, accelerator) is None


def test_a_launch_of_several_processes_that_accelerate_did_not_join_fails_fast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # e.g. torchrun on a machine without a GPU, with the CPU explicitly ruled out (by
    # default the Trainer asks Accelerate to join the processes on the CPU itself)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 .* ACCELERATE_USE_CPU=1"):
        make_trainer(accelerator_kwargs={"cpu": False})


def test_a_deferring_handler_hands_every_stop_request_on_and_runs_the_other_callbacks() -> None:
    calls: list[str] = []

    class Stopper(TrainerCallback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_train_epoch_end(self, trainer: Any, **kwargs: Any) -> None:
            calls.append(self.name)
            raise StopTrainingError(self.name)

    handler = CallbackHandler([Stopper("first"), Stopper("second")])
    received: list[StopTrainingError] = []
    with pytest.raises(StopTrainingError, match="first"):
        handler.call_event("on_train_epoch_end", None)
    assert calls == ["first"]

    calls.clear()
    handler.defer_stop_requests_to(received.append)
    handler.call_event("on_train_epoch_end", None)
    assert calls == ["first", "second"]
    assert [str(request) for request in received] == ["first", "second"]

    handler.defer_stop_requests_to(None)  # raising again
    with pytest.raises(StopTrainingError, match="first"):
        handler.call_event("on_train_epoch_end", None)
