"""Exact gradient accumulation: every update equals one hand-computed step on the mean loss
over all samples (or ``num_items``, e.g. target tokens) of its window.

The 2-process runs of the token-weighted case are in ``tests/distributed/test_multiprocess.py``.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from helpers.accumulation_cases import (
    EVAL_DATASET,
    TokenTrainer,
    flat_weights,
    make_token_dataset,
    make_token_model,
    make_token_trainer,
    mean_token_loss,
    reference_token_steps,
    token_weighted_run,
)
from helpers.host_syncs import HostSyncCounter, UninstallLast
from helpers.tiny import make_dataset, make_model, make_trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from trainwright import StopTrainingError, TrainerCallback

IN_ORDER = {"shuffle": False, "num_workers": 0, "persistent_workers": False}
LR = 0.5


def reference_sample_steps(dataset, samples_per_update: int, max_grad_norm=None) -> list[float]:
    """One SGD step per ``samples_per_update`` consecutive samples, on their mean loss."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    inputs, targets = dataset.tensors
    for start in range(0, len(dataset), samples_per_update):
        window = slice(start, start + samples_per_update)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[window]), targets[window]).backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    return flat_weights(model)


def assert_weights_close(actual: list[float], expected: list[float]) -> None:
    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), rtol=0, atol=1e-5)


def train_samples(dataset, batch_size: int, accumulation: int, **kwargs: Any):
    trainer = make_trainer(lr=LR)
    trainer.train(
        dataset,
        num_epochs=1,
        per_device_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        train_dataloader_kwargs=IN_ORDER,
        **kwargs,
    )
    return trainer


def test_equal_micro_batches_update_like_one_step_on_the_window():
    dataset = make_dataset(24)
    trainer = train_samples(dataset, batch_size=4, accumulation=3)  # 2 windows of 12
    assert_weights_close(flat_weights(trainer.get_model()), reference_sample_steps(dataset, 12))


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_uneven_micro_batches_update_like_one_step_on_the_window(max_grad_norm):
    # 36 samples, batch 16, accumulation 4: one window of micro-batches of 16, 16 and 4.
    dataset = make_dataset(36)
    trainer = train_samples(dataset, batch_size=16, accumulation=4, max_grad_norm=max_grad_norm)
    assert trainer.progress.num_update_steps == 1
    expected = reference_sample_steps(dataset, 36, max_grad_norm)
    assert_weights_close(flat_weights(trainer.get_model()), expected)


def test_an_uneven_short_last_window_of_an_iterable_dataset_is_exact():
    class Stream(IterableDataset):  # no __len__: the last window's size is known at its end
        def __init__(self, dataset):
            self.dataset = dataset

        def __iter__(self):
            return iter(self.dataset)

    dataset = make_dataset(36)
    # batches of 8: windows of (8, 8, 8) and (8, 4): two updates
    trainer = train_samples(Stream(dataset), batch_size=8, accumulation=3)
    assert trainer.progress.num_update_steps == 2
    assert_weights_close(flat_weights(trainer.get_model()), reference_sample_steps(dataset, 24))


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_token_weighted_windows_update_like_one_step_on_all_their_tokens(max_grad_norm):
    # 24 sequences of random lengths, 4 per micro-batch, accumulation 3: 2 windows of 12.
    result = token_weighted_run(24, 4, 3, max_grad_norm=max_grad_norm, lr=LR)
    expected = reference_token_steps(make_token_dataset(24), 12, LR, max_grad_norm)
    assert_weights_close(result["weights"], expected)


def test_train_and_eval_losses_are_means_over_every_token():
    dataset = make_token_dataset(20)
    result = token_weighted_run(20, 4, 3, lr=0.0)
    assert result["train_loss_epoch"][0] == pytest.approx(mean_token_loss(dataset), rel=1e-6)
    assert result["eval_loss_epoch"][0] == pytest.approx(mean_token_loss(EVAL_DATASET), rel=1e-6)


def test_num_items_in_batch_of_pytorch_accelerated_weighs_like_num_items():
    class PytorchAcceleratedStyle(TokenTrainer):
        num_items_key = "num_items_in_batch"

    trainer = make_token_trainer(LR, trainer_class=PytorchAcceleratedStyle)
    trainer.train(
        make_token_dataset(12),
        num_epochs=1,
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        train_dataloader_kwargs=IN_ORDER,
    )
    expected = reference_token_steps(make_token_dataset(12), 12, LR, None)
    assert_weights_close(flat_weights(trainer.get_model()), expected)


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"num_items": 3, "num_items_in_batch": 3}, "returned both 'num_items'"),
        ({"num_items": torch.ones(2)}, r"num_items=Tensor of shape \(2,\)"),
        ({"num_items": "3"}, "must be an int or a 0-dim tensor"),
        ({"num_items": -1}, "cannot be negative"),
    ],
)
def test_bad_num_items_are_refused_with_a_message(extra, message):
    class BadCounts(TokenTrainer):
        def calculate_train_batch_loss(self, batch):
            output = super().calculate_train_batch_loss(batch)
            del output["num_items"]
            return {**output, **extra}

    trainer = make_token_trainer(trainer_class=BadCounts)
    with pytest.raises(ValueError, match=message):
        trainer.train(make_token_dataset(4), num_epochs=1, per_device_batch_size=4)


def test_fp16_gradient_scaler_keeps_uneven_windows_exact():
    # PyTorch's CPU GradScaler stands in for fp16 on a GPU (see test_mixed_precision):
    # Accelerate scales the loss and unscales in the scaler's step. (It unscales before
    # clipping only with mixed_precision="fp16", a GPU's: bench/gpu_check.py checks that.)
    dataset = make_dataset(36)
    trainer = make_trainer(lr=LR)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Seems like `optimizer.step", category=UserWarning
        )
        trainer.train(
            dataset,
            num_epochs=1,
            per_device_batch_size=16,
            gradient_accumulation_steps=4,
            train_dataloader_kwargs=IN_ORDER,
        )
    assert trainer.progress.num_scaler_skipped_updates == 0
    assert trainer.accelerator.scaler.get_scale() == 2.0**10  # the loss was scaled
    expected = reference_sample_steps(dataset, 36)
    assert_weights_close(flat_weights(trainer.get_model()), expected)


def test_one_item_per_micro_batch_weighs_micro_batches_equally_as_before():
    # The former weighting (each micro-batch 1/window of the update), asked for explicitly.
    class EqualMicroBatches(TokenTrainer):
        def calculate_train_batch_loss(self, batch):
            return {**super().calculate_train_batch_loss(batch), "num_items": 1}

    dataset = make_token_dataset(12)
    trainer = make_token_trainer(LR, trainer_class=EqualMicroBatches)
    trainer.train(
        dataset,
        num_epochs=1,
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        train_dataloader_kwargs=IN_ORDER,
    )
    reference = make_token_model()
    input_ids, labels = dataset.tensors
    mean_of_means = 0
    for start in (0, 4, 8):
        logits = reference(input_ids[start : start + 4])
        mean_of_means = (
            mean_of_means
            + nn.functional.cross_entropy(
                logits.flatten(0, 1), labels[start : start + 4].flatten(), ignore_index=-100
            )
            / 3
        )
    mean_of_means.backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= LR * parameter.grad
    assert_weights_close(flat_weights(trainer.get_model()), flat_weights(reference))


class StopMidWindow(TrainerCallback):
    """Saves a training state after batch 1 of epoch 1 (mid accumulation window), then stops."""

    def __init__(self, directory):
        self.directory = directory

    def on_train_step_end(self, trainer, step, **kwargs):
        if (trainer.progress.epoch, step) == (1, 1):
            trainer.save_training_state(self.directory)
            raise StopTrainingError("saved mid-window")


def test_a_token_weighted_run_resumed_mid_window_is_bit_identical(tmp_path):
    dataset = make_token_dataset(22)  # 6 batches of 4 (the last of 2): windows of 3
    settings = dict(
        num_epochs=2,
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        train_dataloader_kwargs=IN_ORDER,
    )
    uninterrupted = make_token_trainer(LR)
    uninterrupted.train(dataset, **settings)

    stopped = make_token_trainer(LR, callbacks=[StopMidWindow(tmp_path / "state")])
    stopped.train(dataset, **settings)
    assert stopped.progress.num_update_steps == 2  # epoch 1's first window is open

    resumed = make_token_trainer(LR)
    resumed.train(dataset, resume_from=tmp_path / "state", **settings)
    assert flat_weights(resumed.get_model()) == flat_weights(uninterrupted.get_model())
    assert resumed.run_history.get_metric_values(
        "train_loss_epoch"
    ) == uninterrupted.run_history.get_metric_values("train_loss_epoch")


def test_no_host_sync_per_step_in_a_token_weighted_run():
    counter = HostSyncCounter()
    trainer = make_token_trainer(LR, callbacks=[counter, UninstallLast(counter)])
    try:
        trainer.train(
            make_token_dataset(20),
            num_epochs=2,
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            max_grad_norm=1.0,
        )
    finally:
        counter._uninstall()
    assert counter.count == 0


def test_a_window_cut_short_by_request_end_epoch_leaves_no_items_behind():
    class EndFirstEpochEarly(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if (trainer.progress.epoch, step) == (0, 1):  # mid-window: its gradients go
                trainer.request_end_epoch()

    dataset = make_token_dataset(24)
    trainer = make_token_trainer(LR, callbacks=[EndFirstEpochEarly()])
    trainer.train(
        dataset,
        num_epochs=2,
        per_device_batch_size=4,
        gradient_accumulation_steps=3,
        train_dataloader_kwargs=IN_ORDER,
    )
    assert trainer.progress.num_update_steps == 2  # only epoch 1's windows updated
    expected = reference_token_steps(dataset, 12, LR, None)
    assert_weights_close(flat_weights(trainer.get_model()), expected)


def test_windows_of_one_batch_match_a_plain_loop_bit_for_bit():
    # 11 samples in batches of 4: the last batch of 3 is weighed 3/4, then rescaled by 4/3 if
    # weighed at all; a window of one micro-batch is back-propagated as it is instead.
    dataset = make_dataset(11)
    model = make_model()
    reference = copy.deepcopy(model)
    trainer = make_trainer(model=model)
    no_shuffle = {"shuffle": False, "num_workers": 0}
    trainer.train(
        dataset, num_epochs=3, per_device_batch_size=4, train_dataloader_kwargs=no_shuffle
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(3):
        for inputs, targets in DataLoader(dataset, batch_size=4):
            nn.CrossEntropyLoss()(reference(inputs), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
    for trained, expected in zip(model.parameters(), reference.parameters()):
        assert torch.equal(trained, expected)
