"""The training loop's numbers: accumulation, clipping, limits, seeding and host syncs."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.host_syncs import HostSyncCounter, UninstallLast
from helpers.tiny import make_dataset, make_model, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainwright import Trainer, TrainerCallback, TrainerPlaceholderValues
from trainwright.callbacks import DEFAULT_CALLBACKS


class GradientProbe(TrainerCallback):
    """Records the largest absolute gradient after backward and before each update."""

    def __init__(self):
        self.after_backward: list[float] = []
        self.before_update: list[float] = []

    @staticmethod
    def _largest(trainer):
        return max(p.grad.abs().max().item() for p in trainer.model.parameters())

    def on_after_backward(self, trainer, **kwargs):
        self.after_backward.append(self._largest(trainer))

    def on_before_optimizer_step(self, trainer, **kwargs):
        self.before_update.append(self._largest(trainer))


def test_clipping_by_value_runs_only_on_update_steps():
    probe = GradientProbe()
    trainer = make_trainer(callbacks=[probe], lr=0.0)
    trainer.train(
        make_dataset(10),
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        gradient_clip_value=1e-3,
    )
    assert len(probe.before_update) == 3  # ceil(5 / 2)
    assert max(probe.before_update) <= 1e-3 + 1e-9
    # gradients of the micro-steps in between are left alone
    assert max(probe.after_backward) > 1e-2


def test_clipping_by_norm_bounds_the_total_norm_on_update_steps():
    class NormProbe(TrainerCallback):
        norms: list[float] = []

        def on_before_optimizer_step(self, trainer, **kwargs):
            grads = [p.grad for p in trainer.model.parameters()]
            self.norms.append(
                torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
            )

    probe = NormProbe()
    trainer = make_trainer(callbacks=[probe])
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2, max_grad_norm=0.01)
    assert len(probe.norms) == 4
    assert max(probe.norms) <= 0.01 * (1 + 1e-5)


@pytest.mark.parametrize("accumulation", [2, 4])
def test_train_loss_epoch_does_not_depend_on_accumulation(accumulation):
    def epoch_losses(steps):
        trainer = make_trainer(lr=0.0)
        torch.manual_seed(3)
        trainer.train(
            make_dataset(14),
            num_epochs=2,
            per_device_batch_size=2,
            gradient_accumulation_steps=steps,
        )
        return trainer.run_history.get_metric_values("train_loss_epoch")

    assert epoch_losses(accumulation) == epoch_losses(1)


def test_accumulated_update_equals_one_update_over_the_concatenated_batches():
    dataset = make_dataset(12)
    loader_kwargs = {"shuffle": False}
    accumulated = make_trainer(lr=0.5)
    accumulated.train(
        dataset,
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=3,
        train_dataloader_kwargs=loader_kwargs,
    )
    large_batch = make_trainer(lr=0.5)
    large_batch.train(
        dataset, num_epochs=1, per_device_batch_size=6, train_dataloader_kwargs=loader_kwargs
    )
    for left, right in zip(
        accumulated.get_model().parameters(), large_batch.get_model().parameters()
    ):
        torch.testing.assert_close(left, right)


def test_max_num_train_steps_performs_exactly_that_many_updates():
    class CountUpdates(TrainerCallback):
        count = 0

        def on_after_optimizer_step(self, trainer, **kwargs):
            self.count += 1

    counter = CountUpdates()
    trainer = make_trainer(callbacks=[counter])
    trainer.train(make_dataset(10), num_epochs=1, per_device_batch_size=2, max_num_train_steps=12)
    assert counter.count == 12
    assert trainer.run_config.num_epochs == 3  # 5 updates per epoch
    assert trainer.run_config.num_update_steps == 12
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 3

    counter.count = 0
    trainer.train(make_dataset(10), num_epochs=50, per_device_batch_size=2, max_num_train_steps=3)
    assert counter.count == 3
    assert trainer.run_config.num_epochs == 1


def test_second_train_without_reset_runs_all_epochs_and_keeps_counting():
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=4)
    assert trainer.run_history.current_epoch == 3
    trainer.train(make_dataset(8), num_epochs=3, per_device_batch_size=4, reset_run_history=False)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 5
    assert trainer.run_history.current_epoch == 6
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    assert trainer.run_history.current_epoch == 2
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1


def test_importing_and_constructing_leave_the_rng_untouched():
    model = make_model()
    state = torch.get_rng_state()
    import importlib

    import trainwright

    importlib.reload(trainwright)
    Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert torch.equal(torch.get_rng_state(), state)


class BatchOrder(TrainerCallback):
    def __init__(self):
        self.first_inputs: list[torch.Tensor] = []

    def on_train_step_start(self, trainer, batch, **kwargs):
        self.first_inputs.append(batch[0][:, 0].clone())


def seeded_run(seed: int, num_workers: int = 0):
    order = BatchOrder()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[order]
    )
    trainer.train(
        make_dataset(24),
        num_epochs=2,
        per_device_batch_size=4,
        train_dataloader_kwargs={"num_workers": num_workers, "persistent_workers": num_workers > 0},
    )
    return [p.detach().clone() for p in trainer.get_model().parameters()], order.first_inputs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_bit_identical_weights(num_workers):
    weights_a, order_a = seeded_run(7, num_workers)
    weights_b, order_b = seeded_run(7, num_workers)
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))
    assert all(torch.equal(a, b) for a, b in zip(order_a, order_b))


def test_different_seeds_give_different_data_orders():
    _, order_a = seeded_run(1)
    _, order_b = seeded_run(2)
    assert not all(torch.equal(a, b) for a, b in zip(order_a, order_b))


def test_zero_host_syncs_per_step_with_default_callbacks():
    counter = HostSyncCounter()
    trainer = make_trainer(callbacks=[*DEFAULT_CALLBACKS, counter, UninstallLast(counter)])
    try:
        trainer.train(
            make_dataset(40),
            num_epochs=2,
            eval_dataset=make_dataset(8),
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            max_grad_norm=1.0,
        )
    finally:
        counter._uninstall()
    assert counter.count == 0
    assert trainer.run_history.get_latest_metric("train_loss_epoch") > 0


def test_host_sync_counter_detects_a_sync():
    class SyncingCallback(TrainerCallback):
        def on_train_step_end(self, trainer, batch_output, **kwargs):
            batch_output["loss"].item()

    counter = HostSyncCounter()
    trainer = make_trainer(callbacks=[counter, SyncingCallback(), UninstallLast(counter)])
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    assert counter.count == 2


def test_placeholders_resolve_in_positional_and_keyword_arguments():
    received = {}

    def make_scheduler(total, optimizer, *, milestones, eval_len, plain):
        received.update(total=total, milestones=milestones, eval_len=eval_len, plain=plain)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    placeholders = TrainerPlaceholderValues
    factory = functools.partial(
        make_scheduler,
        placeholders.NUM_EPOCHS * placeholders.NUM_UPDATE_STEPS_PER_EPOCH + 1,
        milestones=[2 * placeholders.TRAIN_DATALOADER_LEN, placeholders.NUM_UPDATE_STEPS],
        eval_len=placeholders.EVAL_DATALOADER_LEN,
        plain=5,
    )
    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=3,
        eval_dataset=make_dataset(4),
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=factory,
    )
    # 5 batches per epoch, 3 updates per epoch, 2 eval batches
    assert received == {"total": 10, "milestones": [10, 9], "eval_len": 2, "plain": 5}
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_scheduler_steps_once_per_update_and_ends_on_the_last_update():
    factory = functools.partial(
        torch.optim.lr_scheduler.LinearLR,
        start_factor=1.0,
        end_factor=0.0,
        total_iters=TrainerPlaceholderValues.NUM_UPDATE_STEPS,
    )
    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        create_scheduler_fn=factory,
    )
    assert trainer.scheduler.last_epoch == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_dataloader_kwargs_and_collate_fn_are_used():
    seen = []

    def collate(samples):
        seen.append(len(samples))
        inputs = torch.stack([sample[0] for sample in samples])
        targets = torch.stack([sample[1] for sample in samples])
        return inputs, targets

    trainer = make_trainer()
    trainer.train(
        make_dataset(10),
        num_epochs=1,
        per_device_batch_size=4,
        collate_fn=collate,
        train_dataloader_kwargs={"drop_last": True},
    )
    assert seen == [4, 4]
    assert trainer.run_config.train_dl_kwargs["drop_last"] is True
    assert trainer.run_config.train_dataloader_len == 2


def test_checkpoint_round_trip_is_portable(tmp_path):
    trainer = make_trainer()
    factory = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2)
    trainer.train(
        make_dataset(8), num_epochs=1, per_device_batch_size=2, create_scheduler_fn=factory
    )
    path = tmp_path / "model.pt"
    trainer.save_checkpoint(path, checkpoint_kwargs={"epoch": 1, "note": "best"})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "epoch",
        "note",
    }

    other = make_trainer(model=make_model(seed=5))
    other.train(make_dataset(8), num_epochs=1, per_device_batch_size=2, create_scheduler_fn=factory)
    checkpoint = other.load_checkpoint(path)  # the whole checkpoint, as pytorch-accelerated
    assert set(checkpoint) == {
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "epoch",
        "note",
    }
    assert (checkpoint["epoch"], checkpoint["note"]) == (1, "best")
    for left, right in zip(trainer.get_model().parameters(), other.get_model().parameters()):
        assert torch.equal(left, right)
    assert other.scheduler.state_dict() == trainer.scheduler.state_dict()


def test_public_helpers():
    trainer = make_trainer()
    assert trainer.device == torch.device("cpu")
    assert trainer.get_model() is trainer.model
    gathered = trainer.gather(torch.tensor([1.0, 2.0]))
    assert torch.equal(gathered, torch.tensor([1.0, 2.0]))
    trainer.train(
        make_dataset(4), num_epochs=1, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    assert trainer._train_dataloader is trainer.train_dataloader
    assert trainer._eval_dataloader is trainer.eval_dataloader
    assert isinstance(trainer.train_dataloader, DataLoader)


def test_print_prints_on_the_main_process(capsys):
    make_trainer().print("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"


def test_model_outputs_and_batch_are_given_to_eval_callbacks():
    class Collect(TrainerCallback):
        outputs = []

        def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
            assert batch_output["model_outputs"].shape == (len(batch[1]), 3)
            self.outputs.append(batch_output["batch_size"])

    collector = Collect()
    make_trainer(callbacks=[collector]).evaluate(make_dataset(5), per_device_batch_size=2)
    assert collector.outputs == [2, 2, 1]


def test_eval_loss_is_the_sample_weighted_mean():
    dataset = make_dataset(5)
    trainer = make_trainer()
    trainer.evaluate(dataset, per_device_batch_size=2)
    with torch.no_grad():
        inputs, targets = dataset.tensors
        expected = nn.functional.cross_entropy(trainer.model(inputs), targets).item()
    assert trainer.run_history.get_latest_metric("evaluation_loss") == pytest.approx(expected)


def test_tensor_dataset_of_dicts_needs_an_overridden_hook():
    class DictDataset(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"x": torch.randn(4), "y": torch.tensor(0)}

    trainer = make_trainer()
    with pytest.raises(TypeError, match="calculate_train_batch_loss"):
        trainer.train(DictDataset(), num_epochs=1, per_device_batch_size=2)

    class DictTrainer(Trainer):
        def calculate_train_batch_loss(self, batch):
            outputs = self.model(batch["x"])
            return {
                "loss": self.loss_func(outputs, batch["y"]),
                "model_outputs": outputs,
                "batch_size": batch["y"].size(0),
            }

    model = make_model()
    DictTrainer(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), callbacks=()
    ).train(DictDataset(), num_epochs=1, per_device_batch_size=2)


def test_loss_function_module_is_moved_by_default_callbacks():
    weights = torch.ones(3)
    model = make_model()
    trainer = Trainer(
        model, nn.CrossEntropyLoss(weight=weights), torch.optim.SGD(model.parameters(), lr=0.1)
    )
    trainer.train(TensorDataset(*make_dataset(4).tensors), num_epochs=1, per_device_batch_size=2)
    assert trainer.loss_func.weight.device == trainer.device


def test_zero_host_syncs_per_step_with_a_tracker_lr_monitor_and_timing(tmp_path):
    from trainwright.callbacks import (
        ExperimentTrackerCallback,
        LearningRateMonitorCallback,
        TimingCallback,
    )

    pytest.importorskip("tensorboard")
    counter = HostSyncCounter()
    tracker = ExperimentTrackerCallback(
        ["tensorboard"], project_name="syncs", logging_dir=tmp_path, log_every_n_updates=2
    )
    callbacks = [
        *DEFAULT_CALLBACKS,
        tracker,
        LearningRateMonitorCallback(log_every_n_updates=2),
        TimingCallback(),
        counter,
        UninstallLast(counter),
    ]
    trainer = make_trainer(callbacks=callbacks)
    try:
        trainer.train(
            make_dataset(40),
            num_epochs=2,
            eval_dataset=make_dataset(8),
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
        )
    finally:
        counter._uninstall()
    assert counter.count == 0
    assert list((tmp_path / "syncs").glob("events.out.tfevents.*"))  # the tracker did log
    assert trainer.run_history.get_latest_metric("samples_per_s") > 0


def test_zero_host_syncs_per_step_with_the_gradient_norm_monitor(tmp_path):
    from trainwright.callbacks import ExperimentTrackerCallback, GradientNormMonitorCallback

    pytest.importorskip("tensorboard")
    counter = HostSyncCounter()
    tracker = ExperimentTrackerCallback(
        ["tensorboard"], project_name="norms", logging_dir=tmp_path, log_every_n_updates=1
    )
    callbacks = [
        *DEFAULT_CALLBACKS,
        GradientNormMonitorCallback(),
        tracker,
        counter,
        UninstallLast(counter),
    ]
    trainer = make_trainer(callbacks=callbacks)
    for max_grad_norm in (None, 1.0):  # computed by the monitor, then reused from clipping
        try:
            trainer.train(
                make_dataset(40),
                num_epochs=2,
                per_device_batch_size=4,
                gradient_accumulation_steps=2,
                max_grad_norm=max_grad_norm,
            )
        finally:
            counter._uninstall()
        assert counter.count == 0
        assert len(trainer.run_history.get_metric_values("gradient_norm_max")) == 2
