"""ConvertSyncBatchNormCallback converts before Accelerate wraps the model (its 2-process
behaviour on the CPU, a clear error, is tested in tests/distributed/test_multiprocess.py)."""

from __future__ import annotations

import torch
from helpers.tiny import make_dataset
from torch import nn

from trainwright import Trainer
from trainwright.callbacks import ConvertSyncBatchNormCallback


def _make_bn_trainer(callbacks: tuple = ()) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks)


def _train(trainer: Trainer) -> list[torch.Tensor]:
    trainer.train(
        make_dataset(16),
        num_epochs=2,
        per_device_batch_size=4,
        train_dataloader_kwargs={"shuffle": False, "num_workers": 0},
    )
    return [tensor.detach().clone() for tensor in trainer.get_model().state_dict().values()]


def test_one_process_leaves_the_model_unchanged_by_default():
    trainer = _make_bn_trainer((ConvertSyncBatchNormCallback(),))

    assert type(trainer.model[1]) is nn.BatchNorm1d


def test_converted_model_trains_like_the_batchnorm_one_on_one_process():
    plain = _make_bn_trainer()
    trainer = _make_bn_trainer((ConvertSyncBatchNormCallback(convert_on_one_process=True),))
    original_parameters = list(trainer.optimizer.param_groups[0]["params"])

    # Converted in on_init_end, before train() lets Accelerate prepare (wrap) the model.
    assert type(trainer.model[1]) is nn.SyncBatchNorm
    assert not any(type(module) is nn.BatchNorm1d for module in trainer.model.modules())
    # The optimizer still holds the model's parameters: the conversion kept them.
    assert [id(p) for p in trainer.model.parameters()] == [id(p) for p in original_parameters]

    weights = _train(trainer)
    reference = _train(plain)

    assert type(trainer.get_model()[1]) is nn.SyncBatchNorm
    assert len(weights) == len(reference)
    for actual, expected in zip(weights, reference):
        torch.testing.assert_close(actual, expected)
    # The running statistics were updated by training (so the comparison covers them).
    assert not torch.equal(trainer.get_model()[1].running_mean, torch.zeros(8))
