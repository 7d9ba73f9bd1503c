"""Default DataLoader settings (workers from the CPUs per process, pinning only with CUDA),
and data randomness that a resume replays exactly."""

from __future__ import annotations

import functools
import os
import random

import pytest
import resume_job
import torch
from conftest import make_dataset, make_model, make_trainer
from test_resume import assert_same_run
from torch.utils.data import Dataset

import trainwright.data
from trainwright.data import default_dataloader_kwargs, default_num_workers


def test_workers_come_from_the_cpus_available_per_local_process():
    cpus = len(os.sched_getaffinity(0))
    for processes in (1, 2, 4):
        workers = default_num_workers(processes)
        expected = min(cpus // processes - 1, 4)
        assert workers == (expected if expected >= 2 else 0)
        assert workers <= max(cpus // processes - 1, 0)  # never every CPU for each process


def test_pinning_only_with_cuda_and_persistent_workers_only_with_workers():
    cpu = default_dataloader_kwargs(shuffle=True, device=torch.device("cpu"))
    assert cpu["pin_memory"] is False and cpu["shuffle"] is True
    assert cpu["persistent_workers"] == (cpu["num_workers"] > 0)
    cuda = default_dataloader_kwargs(shuffle=False, device=torch.device("cuda"))
    assert cuda["pin_memory"] is True and cuda["shuffle"] is False


def test_the_trainer_uses_the_defaults_and_the_overrides():
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    used = trainer.run_config.train_dl_kwargs
    assert used["num_workers"] == default_num_workers(1)
    assert used["pin_memory"] is False
    overrides = {"num_workers": 1, "persistent_workers": True}
    trainer.train(
        make_dataset(8), num_epochs=1, per_device_batch_size=4, train_dataloader_kwargs=overrides
    )
    assert trainer.run_config.train_dl_kwargs["num_workers"] == 1
    assert trainer.run_config.train_dl_kwargs["persistent_workers"] is True


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
