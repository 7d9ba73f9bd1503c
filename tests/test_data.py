"""Default DataLoader settings: workers from the CPUs per process, pinning only with CUDA."""

from __future__ import annotations

import os

import torch
from conftest import make_dataset, make_trainer

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
