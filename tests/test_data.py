"""DataLoader settings (workers from the CPUs per process, pinning only with CUDA, the user's
kwargs, collate_fn and samplers merged in), and data randomness that a resume replays exactly."""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import pytest
import torch
from helpers import resume_job
from helpers.resume_job import assert_same_run
from helpers.tiny import make_dataset, make_model, make_trainer
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
    default_collate,
)

import trainwright.data
from trainwright import Trainer
from trainwright.data import (
    BatchedTensorDataset,
    create_dataloader,
    default_dataloader_kwargs,
    default_num_workers,
    seeded_dataloader,
    seeded_epoch,
)


def test_workers_come_from_the_cpus_available_per_local_process():
    cpus = len(os.sched_getaffinity(0))
    for processes in (1, 2, 4):
        workers = default_num_workers(processes)
        expected = min(cpus // processes - 1, 4)
        assert workers == (expected if expected >= 2 else 0)
        assert workers <= max(cpus // processes - 1, 0)  # never every CPU for each process


def test_pinning_only_with_cuda():
    cpu = default_dataloader_kwargs(shuffle=True, device=torch.device("cpu"))
    assert cpu["pin_memory"] is False and cpu["shuffle"] is True
    cuda = default_dataloader_kwargs(shuffle=False, device=torch.device("cuda"))
    assert cuda["pin_memory"] is True and cuda["shuffle"] is False


def test_the_trainer_uses_the_defaults_and_the_overrides():
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    used = trainer.run_config.train_dl_kwargs
    assert used["num_workers"] == 0  # a TensorDataset: read in memory, whatever the CPUs
    assert used["pin_memory"] is False
    overrides = {"num_workers": 1, "persistent_workers": True}
    trainer.train(
        make_dataset(8), num_epochs=1, per_device_batch_size=4, train_dataloader_kwargs=overrides
    )
    assert trainer.run_config.train_dl_kwargs["num_workers"] == 1
    assert trainer.run_config.train_dl_kwargs["persistent_workers"] is True


@pytest.fixture
def eight_cpus(monkeypatch):
    """A machine with 8 CPUs (CI has 2): the defaults then use 4 workers."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)


def test_persistent_workers_follow_the_workers_after_the_users_kwargs(eight_cpus):
    # in train(), evaluate() and predict()
    assert default_num_workers(1) == 4
    trainer = make_trainer()
    no_workers = {"num_workers": 0}  # what pytorch-accelerated's HF example passes
    trainer.train(
        make_dataset(8),
        num_epochs=1,
        eval_dataset=make_dataset(4),
        per_device_batch_size=4,
        train_dataloader_kwargs=no_workers,
        eval_dataloader_kwargs=no_workers,
    )
    assert trainer.run_config.train_dl_kwargs["persistent_workers"] is False
    trainer.evaluate(make_dataset(4), dataloader_kwargs=no_workers)
    assert len(trainer.run_history.get_metric_values("evaluation_loss")) == 1
    predictions = trainer.predict(make_dataset(4), dataloader_kwargs=no_workers)
    assert predictions.shape == (4, 3)
    dataloader = trainer.create_train_dataloader(4)  # a TensorDataset, read in memory
    assert dataloader.num_workers == 0 and dataloader.persistent_workers is False
    trainer.collate_fn = default_collate  # sample by sample: workers help
    dataloader = trainer.create_train_dataloader(4)  # not iterated: no workers start
    assert dataloader.num_workers == 4 and dataloader.persistent_workers is True


def test_a_tensor_dataset_is_read_in_memory_on_a_machine_with_many_cpus(eight_cpus):
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.run_config.train_dl_kwargs["num_workers"] == 0
    assert trainwright.data.is_read_in_memory(trainer.train_dataloader)
    asked = {"num_workers": 2, "persistent_workers": False}  # workers asked for: kept
    trainer.train(
        make_dataset(8), num_epochs=1, per_device_batch_size=4, train_dataloader_kwargs=asked
    )
    assert trainer.train_dataloader.num_workers == 2
    assert not trainwright.data.is_read_in_memory(trainer.train_dataloader)


def test_workers_asked_for_on_a_small_machine_persist(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    trainer = make_trainer()
    trainer.train_dataset = make_dataset(8)
    dataloader = trainer.create_train_dataloader(4, {"num_workers": 1})
    assert dataloader.persistent_workers is True
    dataloader = trainer.create_train_dataloader(4, {"num_workers": 1, "persistent_workers": False})
    assert dataloader.persistent_workers is False


def test_a_sampler_replaces_the_default_shuffling():
    dataset = make_dataset(8)
    sampler = WeightedRandomSampler([0.0] * 7 + [1.0], num_samples=8)  # always sample 7
    seen = []

    def collect(batch):
        seen.extend(index for index, _ in batch)
        return torch.stack([dataset[index][0] for index, _ in batch]), torch.stack(
            [dataset[index][1] for index, _ in batch]
        )

    indexed = [(index, index) for index in range(8)]
    trainer = make_trainer()
    trainer.train(
        indexed,
        num_epochs=1,
        per_device_batch_size=4,
        collate_fn=collect,
        train_dataloader_kwargs={"sampler": sampler, "num_workers": 0},
    )
    assert seen == [7] * 8


def test_a_batch_sampler_replaces_the_default_batching():
    batches = BatchSampler(SequentialSampler(range(10)), batch_size=3, drop_last=False)
    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=1,
        per_device_batch_size=8,
        train_dataloader_kwargs={"batch_sampler": batches, "num_workers": 0},
    )
    assert trainer.run_config.train_dataloader_len == 4
    assert trainer.run_config.train_per_device_batch_size == 3


class _DropLastTrainer(Trainer):
    def get_default_train_dl_kwargs(self, batch_size):
        return {"batch_size": batch_size, "shuffle": True, "drop_last": True, "num_workers": 0}


def test_an_overridden_train_default_keeps_collate_fn_and_stays_out_of_evaluation():
    calls = []

    def collate(samples):
        calls.append(len(samples))
        return torch.utils.data.default_collate(samples)

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = _DropLastTrainer(model, torch.nn.CrossEntropyLoss(), optimizer, callbacks=())
    trainer.train(
        make_dataset(8),
        num_epochs=1,
        eval_dataset=make_dataset(5),
        per_device_batch_size=4,
        collate_fn=collate,
    )
    # train()'s check of one evaluation batch, training (drop_last is training's own), then
    # all 5 evaluation samples
    assert calls == [4, 4, 4, 4, 1]
    assert trainer.run_config.train_dl_kwargs["drop_last"] is True
    assert trainer.run_config.eval_dl_kwargs["drop_last"] is False
    assert trainer.run_config.eval_dataloader_len == 2


def test_two_different_collate_functions_are_refused():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="Two collate functions"):
        trainer.train(
            make_dataset(8),
            num_epochs=1,
            collate_fn=torch.utils.data.default_collate,
            train_dataloader_kwargs={"collate_fn": lambda samples: samples},
        )


# ---------------------------------------------------------------------------------------------
# Data randomness: exact resume with random augmentation and workers, persistent or not
# ---------------------------------------------------------------------------------------------


class AugmentedDataset(Dataset):
    """Random augmentation drawn from the global RNGs, as torchvision's transforms do."""

    num_loaded = 0  # read by resume_job.summary

    def __init__(self, num_samples: int = 22, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(num_samples, 6, generator=generator)
        self.targets = torch.randint(0, 3, (num_samples,), generator=generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        inputs = self.inputs[index] + 0.3 * torch.randn(6)
        if random.random() < 0.5:
            inputs = -inputs
        return inputs, self.targets[index]


def train_augmented(loader_kwargs=None, stop_at=None, resume_from=None):
    """resume_job's 3 epochs (dropout, accumulation 2, a scheduler) on augmented data."""
    callbacks = [] if stop_at is None else [resume_job.StopAfter(*stop_at)]
    trainer, _ = resume_job.build(extra_callbacks=callbacks)
    torch.rand(5), random.random()  # a resume must not depend on the RNGs before it
    trainer.train(
        AugmentedDataset(),
        num_epochs=3,
        eval_dataset=AugmentedDataset(8, seed=1),
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2),
        train_dataloader_kwargs=loader_kwargs,
        eval_dataloader_kwargs=loader_kwargs,
        resume_from=resume_from,
    )
    return trainer


@pytest.fixture(scope="module")
def augmented_reference():
    return resume_job.summary(train_augmented({"num_workers": 0}), AugmentedDataset())


@pytest.mark.parametrize(
    "loader_kwargs",
    [None, {"num_workers": 0}, {"num_workers": 2, "persistent_workers": False}],
    ids=["default loader with 3 CPUs: 2 persistent workers", "no workers", "2 workers"],
)
def test_a_resumed_run_with_random_augmentation_is_bit_identical(
    tmp_path, monkeypatch, augmented_reference, loader_kwargs
):
    monkeypatch.setattr(trainwright.data, "_cpus_available", lambda: 3)  # a many-core machine
    stopped = train_augmented(loader_kwargs, stop_at=(2, 2, tmp_path))  # mid accumulation window
    if loader_kwargs is None:
        used = stopped.run_config.train_dl_kwargs
        assert used["num_workers"] == 2 and used["persistent_workers"] is True
    resumed = train_augmented(loader_kwargs, resume_from=tmp_path / "state")
    # the same as the uninterrupted run, which loaded its data in the main process
    assert_same_run(resume_job.summary(resumed, AugmentedDataset()), augmented_reference)


def test_runs_with_the_same_seed_are_identical_and_other_seeds_differ():
    def weights(seed: int) -> list[torch.Tensor]:
        trainer = make_trainer(model=make_model(num_features=6))
        torch.manual_seed(seed)
        trainer.train(AugmentedDataset(), num_epochs=2, per_device_batch_size=4)
        return [parameter.detach().clone() for parameter in trainer.get_model().parameters()]

    first, again, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def _batches(dataloader) -> list:
    return [tuple(batch) for batch in dataloader]


def _assert_same_batches(expected: list, actual: list) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert len(want) == len(got)
        for a, b in zip(want, got):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            assert a.stride() == b.stride()  # contiguous, as default_collate's stacks


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_fetching_gives_the_batches_of_the_plain_loader(num_workers):
    dataset = TensorDataset(
        torch.randn(21, 3), torch.arange(21), torch.randn(5, 21).t(), torch.rand(21) > 0.5
    )
    kwargs = {"batch_size": 4, "shuffle": True, "num_workers": num_workers}
    torch.manual_seed(7)
    plain = DataLoader(dataset, **kwargs)
    plain_batches = _batches(plain)
    torch.manual_seed(7)
    batched = create_dataloader(dataset, **kwargs)
    assert isinstance(batched.dataset, BatchedTensorDataset)
    assert batched.dataset.tensors == dataset.tensors and batched.dataset.source is dataset
    first = next(iter(batched))
    assert type(first) is type(next(iter(plain))) is list  # default_collate's type
    torch.manual_seed(7)
    _assert_same_batches(plain_batches, _batches(batched))


def test_batched_fetching_reads_any_indices_a_sampler_gives_as_the_plain_loader():
    # Read with one index tensor when it can be, else as a list index (negative indices,
    # numpy or tensor integers, a range); the same batches either way.
    dataset = TensorDataset(torch.randn(10, 3), torch.arange(10), torch.randn(4, 10).t())
    batches = [[3, 1, 4], [-1, 0, -10], [np.int64(2), 5], [torch.tensor(7)], range(2, 6), [9]]
    plain = DataLoader(dataset, batch_sampler=batches)
    _assert_same_batches(
        _batches(plain), _batches(create_dataloader(dataset, batch_sampler=batches))
    )
    for out_of_range in ([10], [-11]):
        with pytest.raises(IndexError):
            _batches(create_dataloader(dataset, batch_sampler=[out_of_range]))
    # Plain indices are read with index_select, through one index tensor for all tensors.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        _batches(create_dataloader(dataset, batch_sampler=[[3, 1, 4]]))
    ops = [event.name for event in profile.events()]
    assert ops.count("aten::index_select") == 3 and "aten::index" not in ops


class Doubled(TensorDataset):
    def __getitem__(self, index):
        return tuple(2 * tensor[index] for tensor in self.tensors)


class AlreadyBatched(TensorDataset):
    def __getitems__(self, indices):
        return [self[i] for i in indices]


def test_batched_fetching_only_where_exact():
    dataset = TensorDataset(torch.randn(8, 3))
    assert isinstance(create_dataloader(dataset, batch_size=2).dataset, BatchedTensorDataset)
    assert create_dataloader(dataset, batch_size=2, collate_fn=default_collate).dataset is dataset
    assert create_dataloader(dataset, batch_size=None).dataset is dataset
    for custom in (Doubled(torch.randn(8, 3)), AlreadyBatched(torch.randn(8, 3))):
        assert create_dataloader(custom, batch_size=2).dataset is custom
    _assert_same_batches(
        _batches(DataLoader(Doubled(dataset.tensors[0]), batch_size=3)),
        _batches(create_dataloader(Doubled(dataset.tensors[0]), batch_size=3)),
    )


class _NoisyTensors(TensorDataset):
    def __getitem__(self, index):
        inputs, targets = super().__getitem__(index)
        return inputs + torch.randn_like(inputs), targets


def test_only_data_that_draws_no_random_numbers_is_fetched_without_seeding():
    def seeded(dataset, **kwargs):
        return seeded_dataloader(DataLoader(dataset, batch_size=4, **kwargs)).dataset

    assert seeded(make_dataset(8)).draws_no_random_numbers  # a TensorDataset, default_collate
    batched = seeded_dataloader(create_dataloader(make_dataset(8), batch_size=4))
    assert batched.dataset.draws_no_random_numbers  # batched fetching
    noisy = _NoisyTensors(*make_dataset(8).tensors)
    assert not seeded(noisy).draws_no_random_numbers  # a subclass may augment: seeded
    assert not seeded(make_dataset(8), collate_fn=lambda s: s).draws_no_random_numbers
    # Seeded or not, an epoch's batches are the same for the same data seed.
    loader = seeded_dataloader(DataLoader(noisy, batch_size=4))
    first = [batch[0] for batch in seeded_epoch(loader, 7)]
    second = [batch[0] for batch in seeded_epoch(loader, 7)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _prepared(dataset, accelerator, device_placement=False, skip=0, **kwargs):
    loader = accelerator.prepare_data_loader(
        seeded_dataloader(create_dataloader(dataset, **kwargs)), device_placement=device_placement
    )
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def _epoch_and_states(loader, seed, gradient_state):
    """Every batch of two epochs, with the end-of-data flags seen at each batch, and the
    loader's and Accelerate's gradient state after each epoch."""
    seen = []
    for _ in range(2):
        for batch in seeded_epoch(loader, seed):
            seen.append((tuple(batch), loader.end_of_dataloader, gradient_state.end_of_dataloader))
        seen.append((loader.iteration, loader.remainder, gradient_state.active_dataloader))
        seed += 1
    return seen


def _dataloader_iterator_ran(loader, seed) -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        list(seeded_epoch(loader, seed))
    return any("DataLoaderIter" in event.name for event in profile.events())


IN_MEMORY_CASES = {
    "shuffled": {"batch_size": 4, "shuffle": True},
    "in order, last batch dropped": {"batch_size": 4, "drop_last": True},
    "a batch sampler": {"batch_sampler": BatchSampler(SequentialSampler(range(21)), 5, False)},
    "resumed after 2 batches": {"batch_size": 3, "shuffle": True, "skip": 2},
    "placed on the device": {"batch_size": 4, "device_placement": True},
    "a generator of the user's": {
        "batch_size": 4,
        "shuffle": True,
        "generator": torch.Generator().manual_seed(5),
    },
    "a sampler drawing from the global RNG": {
        "batch_size": 4,
        "sampler": WeightedRandomSampler([1.0] * 21, num_samples=21),
    },
}


@pytest.mark.parametrize("case", IN_MEMORY_CASES)
def test_in_memory_tensors_are_read_as_the_dataloader_reads_them(case):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    dataset = TensorDataset(torch.randn(21, 3), torch.arange(21), torch.randn(5, 21).t())
    kwargs = IN_MEMORY_CASES[case]
    in_memory = _prepared(dataset, accelerator, **kwargs)
    if "generator" in kwargs:  # its own, in the same state
        kwargs = {**kwargs, "generator": torch.Generator().manual_seed(5)}
    per_sample = _prepared(dataset, accelerator, collate_fn=default_collate, **kwargs)
    assert trainwright.data.is_read_in_memory(in_memory)
    assert not trainwright.data.is_read_in_memory(per_sample)
    expected = _epoch_and_states(per_sample, 11, accelerator.gradient_state)
    actual = _epoch_and_states(in_memory, 11, accelerator.gradient_state)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        if isinstance(want[0], tuple):  # a batch and its flags
            _assert_same_batches([want[0]], [got[0]])
            assert got[1:] == want[1:]
        else:
            assert got == want
    assert not _dataloader_iterator_ran(in_memory, 3)
    assert _dataloader_iterator_ran(per_sample, 3)


def test_loaders_with_workers_or_pinned_memory_are_iterated():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    dataset = make_dataset(8)
    assert not trainwright.data.is_read_in_memory(
        _prepared(dataset, accelerator, batch_size=2, num_workers=1)
    )
    pinned = accelerator.prepare_data_loader(
        seeded_dataloader(create_dataloader(dataset, batch_size=2, pin_memory=True))
    )
    assert not trainwright.data.is_read_in_memory(pinned)
    assert not trainwright.data.is_read_in_memory(create_dataloader(dataset, batch_size=2))


def test_the_trainer_reads_a_tensor_dataset_in_memory_with_the_plain_loop_weights():
    trainers = {}
    for collate_fn in (None, default_collate):
        torch.manual_seed(3)
        trainer = make_trainer()
        trainer.train(
            make_dataset(30), num_epochs=2, per_device_batch_size=4, collate_fn=collate_fn
        )
        trainers[collate_fn] = trainer
    assert trainwright.data.is_read_in_memory(trainers[None].train_dataloader)
    assert not trainwright.data.is_read_in_memory(trainers[default_collate].train_dataloader)
    for a, b in zip(
        trainers[None].model.parameters(), trainers[default_collate].model.parameters()
    ):
        assert torch.equal(a, b)
