"""pytorch-accelerated 0.1.61's public API shapes, one test per item of the port (the
example scripts in ``test_ported_examples.py`` exercise them together)."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.tiny import make_dataset, make_model, make_trainer
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, StepLR

import trainwright
from trainwright import RunConfig, Trainer, TrainerPlaceholderValues, TrainerRunConfig
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    ProgressBarCallback,
    SaveBestModelCallback,
    SaveTrainingStateCallback,
    WSDCheckpointCallback,
    get_default_callbacks,
)
from trainwright.checkpointing import training_states
from trainwright.ema import ModelEma
from trainwright.finetuning import ModelFreezer
from trainwright.schedulers import CosineLrScheduler, WSDLrScheduler
from trainwright.tracking import InMemoryRunHistory, MetricNotFoundError
from trainwright.trainer import TrainerWithTimmScheduler
from trainwright.utils import (
    local_process_zero_first,
    local_process_zero_only,
    remove_padding,
    worker_init_fn,
    world_process_zero_first,
    world_process_zero_only,
)

# 1. create_scheduler(self) without an argument, reading self.create_scheduler_fn


class NoArgumentCreateScheduler(Trainer):
    def create_scheduler(self):
        return self.create_scheduler_fn(optimizer=self.optimizer, step_size=2)


def test_create_scheduler_override_without_argument_reads_create_scheduler_fn():
    model = make_model()
    trainer = NoArgumentCreateScheduler(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1.0), callbacks=()
    )
    trainer.train(
        make_dataset(8),
        num_epochs=1,
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(StepLR, gamma=0.5),
    )
    assert isinstance(trainer.scheduler, StepLR)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.25  # 4 updates, halved every 2


def test_create_scheduler_receives_the_factory_with_placeholders_resolved():
    seen = []

    class WithArgument(Trainer):
        def create_scheduler(self, create_scheduler_fn):
            seen.append(create_scheduler_fn is self.create_scheduler_fn)
            return super().create_scheduler(create_scheduler_fn)

    model = make_model()
    trainer = WithArgument(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1.0), callbacks=()
    )
    factory = functools.partial(LambdaLR, lr_lambda=lambda step: 1.0)
    trainer.train(
        make_dataset(4), num_epochs=1, per_device_batch_size=2, create_scheduler_fn=factory
    )
    assert seen == [True]


# 2. trainer._accelerator; assignable _train_dataloader / _eval_dataloader


def test_private_aliases_read_and_assign():
    trainer = make_trainer()
    assert trainer._accelerator is trainer.accelerator
    loader = torch.utils.data.DataLoader(make_dataset(4), batch_size=2)
    trainer._train_dataloader = loader
    trainer._eval_dataloader = loader
    assert trainer.train_dataloader is loader and trainer.eval_dataloader is loader


# 3. ModelFreezer: unfreeze() per layer group, get_layers(), LayerGroup fields


def test_model_freezer_shapes():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    freezer = ModelFreezer(model)
    freezer.freeze()  # all but the last group
    groups = freezer.get_layer_groups()
    assert [group.layer_group_idx for group in groups] == [(0, -3), (1, -2), (2, -1)]
    assert [group.is_frozen for group in groups] == [True, True, False]
    assert all(group.module is model[index] for group, index in zip(groups, (0, 2, 3)))
    layers = freezer.get_layers()
    assert [layer.module for layer in layers] == [model[0], model[2], model[3]]
    assert [layer.is_frozen for layer in layers] == [True, True, False]

    unfrozen = freezer.unfreeze(set_modules_as_training=True)
    assert {index: group["params"] for index, group in unfrozen.items()} == {
        0: [model[0].weight, model[0].bias],
        1: [model[2].weight, model[2].bias],
    }
    assert not any(group.is_frozen for group in freezer.get_layer_groups())


# 5. RunConfig: TrainerRunConfig and pytorch-accelerated's field names


def test_run_config_reads_pytorch_accelerated_names():
    trainer = make_trainer()
    trainer.train(
        make_dataset(12),
        num_epochs=1,
        eval_dataset=make_dataset(4),
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
    )
    config = trainer.run_config
    assert TrainerRunConfig is RunConfig and isinstance(config, TrainerRunConfig)
    assert config.num_local_update_steps_per_epoch == config.num_update_steps_per_epoch == 3
    assert config["num_local_update_steps_per_epoch"] == 3
    assert config.eval_total_batch_size == config["eval_total_batch_size"] == 2
    assert "eval_total_batch_size" not in dict(config)  # iteration stays the real fields


# 6. load_checkpoint's dict, get_model, gather, utils, launchers, timm trainer


def test_load_checkpoint_returns_the_checkpoint(tmp_path):
    trainer = make_trainer()
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    trainer.save_checkpoint(tmp_path / "model.pt", checkpoint_kwargs={"epoch": 3})
    checkpoint = make_trainer(model=make_model(seed=1)).load_checkpoint(tmp_path / "model.pt")
    assert checkpoint["epoch"] == 3
    assert set(checkpoint["model_state_dict"]) == set(trainer.get_model().state_dict())


def test_get_model_keep_torch_compile():
    model = make_model()
    trainer = make_trainer(model=torch.compile(model))
    assert trainer.get_model() is model
    assert trainer.get_model(keep_torch_compile=True) is trainer.model


def test_gather_with_padding_value_and_remove_padding():
    trainer = make_trainer()
    gathered = trainer.gather(torch.tensor([[1, 2], [3, 4]]), padding_value=-1)
    assert torch.equal(gathered, torch.tensor([[1, 2], [3, 4]]))  # one process: no padding
    padded = torch.tensor([[1, 2], [-1, -1], [5, -1]])
    assert torch.equal(remove_padding(padded, pad_value=-1), torch.tensor([[1, 2], [5, -1]]))
    assert torch.equal(remove_padding(torch.tensor([3, -1, 4]), -1), torch.tensor([3, 4]))


def test_process_decorators_run_on_the_only_process():
    calls = []

    @local_process_zero_only
    def on_local_zero(value):
        calls.append(("local", value))
        return value

    @world_process_zero_only
    def on_world_zero(value):
        calls.append(("world", value))
        return value

    @local_process_zero_first
    def local_first():
        calls.append("local first")

    @world_process_zero_first
    def world_first():
        calls.append("world first")

    assert on_local_zero(1) == 1 and on_world_zero(2) == 2
    local_first()
    world_first()
    assert calls == [("local", 1), ("world", 2), "local first", "world first"]
    assert on_local_zero.__name__ == "on_local_zero"


def test_get_default_callbacks():
    assert get_default_callbacks() == DEFAULT_CALLBACKS
    assert get_default_callbacks(progress_bar=False) == tuple(
        callback for callback in DEFAULT_CALLBACKS if callback is not ProgressBarCallback
    )


def test_worker_init_fn_seeds_workers_from_torch_without_reseeding_torch():
    dataset = torch.utils.data.TensorDataset(torch.arange(4))

    def numpy_draws():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=2,
            num_workers=1,
            worker_init_fn=worker_init_fn,
            collate_fn=lambda batch: __import__("numpy").random.rand(),
        )
        return list(loader)

    assert numpy_draws() == numpy_draws()  # from the user's seed
    torch.manual_seed(0)
    state = torch.get_rng_state()
    worker_init_fn(0)
    assert torch.equal(torch.get_rng_state(), state)


def test_top_level_names():
    from accelerate import notebook_launcher

    assert trainwright.notebook_launcher is notebook_launcher
    assert issubclass(TrainerWithTimmScheduler, Trainer)


# 9. ModelEma as an nn.Module


def test_model_ema_is_a_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5)
    assert isinstance(ema, nn.Module)
    assert ema.to(torch.float64) is ema and ema.module[0].weight.dtype == torch.float64
    ema.to(torch.float32)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.set(model)
    assert torch.equal(ema.module[0].weight, model[0].weight)
    assert torch.equal(ema(torch.ones(2, 2)), ema.module(torch.ones(2, 2)))

    # a weights-only state dict (as pytorch-accelerated's ModelEma saves) loads
    weights_only = {f"module.{key}": value for key, value in model.state_dict().items()}
    fresh = ModelEma(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.5)
    fresh.load_state_dict(weights_only)
    assert torch.equal(fresh.module[0].weight, model[0].weight)
    assert fresh.num_updates == 0
    # and the full state dict round-trips the counters
    ema.update(model)
    restored = ModelEma(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert (restored.num_updates, restored.decay) == (1, 0.5)


def test_model_ema_buffers_are_copied_not_averaged():
    model = nn.BatchNorm1d(2)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.running_mean.fill_(4.0)
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.equal(ema.module.running_mean, model.running_mean)  # copied
    assert torch.equal(ema.module.weight, torch.full((2,), 2.0))  # (1 + 3) / 2


# 4. Schedulers: pytorch-accelerated's arguments, defaults, WSD placement and getters


def make_optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_accepts_pytorch_accelerated_arguments():
    scheduler = CosineLrScheduler(
        make_optimizer(0.1),
        total_num_epochs=2,
        num_update_steps_per_epoch=5,
        num_warmup_epochs=1,
        warmup_starting_lr=0.0,
        lr_min=0.01,
    )
    assert (scheduler.total_num_steps, scheduler.num_warmup_steps) == (10, 5)
    assert scheduler.get_lr(0) == [0.0] and scheduler.get_lr(5) == [0.1]
    assert scheduler.get_lr(9) == pytest.approx([0.01])
    # its default minimum (an absolute 1e-6) applies with its way of giving the length
    default = CosineLrScheduler(
        make_optimizer(0.1), total_num_epochs=1, num_update_steps_per_epoch=4
    )
    assert default.get_lr(3) == pytest.approx([1e-6])
    assert CosineLrScheduler(make_optimizer(0.1), 4).get_lr(3) == pytest.approx([0.005])
    ratio = CosineLrScheduler(make_optimizer(0.1), 4, min_lr_ratio=0.5)
    assert ratio.get_lr(3) == pytest.approx([0.05])
    with pytest.raises(ValueError, match="not both"):
        CosineLrScheduler(make_optimizer(), 4, total_num_epochs=1, num_update_steps_per_epoch=4)
    with pytest.raises(ValueError, match="need num_update_steps_per_epoch"):
        CosineLrScheduler(make_optimizer(), total_num_epochs=2)


def test_wsd_accepts_pytorch_accelerated_arguments_and_places_checkpoints_geometrically():
    scheduler = WSDLrScheduler(
        make_optimizer(1.0), total_steps=1000, num_checkpoints=3, use_inverse_sqrt_decay=False
    )
    assert scheduler.get_checkpoint_steps() == [250, 500, 1000]
    assert scheduler.decay_shape == "inverse_proportional"
    assert scheduler.lr_min_ratios == [1e-6]  # its default lr_min, a ratio there too
    by_epochs = WSDLrScheduler(
        make_optimizer(), num_epochs=4, num_update_steps_per_epoch=25, num_warmup_epochs=1
    )
    assert (by_epochs.total_num_steps, by_epochs.num_warmup_steps) == (100, 25)
    even = WSDLrScheduler(make_optimizer(), 1000, num_checkpoints=3, checkpoint_spacing="even")
    assert even.checkpoint_steps == [333, 666, 1000]
    with pytest.raises(ValueError, match="resume_from"):
        WSDLrScheduler(make_optimizer(), 100, is_continuation_from_checkpoint=True)


def test_wsd_getters():
    scheduler = WSDLrScheduler(
        make_optimizer(1.0), 100, num_warmup_steps=10, decay_phase_ratio=0.1, num_checkpoints=2
    )
    assert scheduler.get_decay_info() == [
        {"period_start": 0, "period_end": 50, "decay_steps": 5, "pre_decay_step": 45},
        {"period_start": 50, "period_end": 100, "decay_steps": 10, "pre_decay_step": 90},
    ]
    assert scheduler.get_phase_info(50)["period_end"] == 50
    assert scheduler.get_phase_info(51)["period_end"] == 100
    assert scheduler.get_phase_info(500)["period_end"] == 100
    assert scheduler.get_current_step() == -1
    assert scheduler.get_current_phase_info()["phase"] == "warmup"
    phases = []
    for _ in range(100):
        scheduler.step()
        phases.append(scheduler.get_current_phase_info()["phase"])
    assert scheduler.get_current_step() == 99
    # phases[i]: the phase of the next update after i + 1 updates
    assert phases[43:45] == ["stable", "decay"]  # update 45 starts the first decay
    assert phases[48:50] == ["decay", "stable"]  # the second segment starts stable
    assert phases[-1] == "finished"


def test_scheduler_state_saved_by_pytorch_accelerated_loads():
    scheduler = CosineLrScheduler(make_optimizer(0.1), 20, num_warmup_steps=4)
    saved = {  # pytorch-accelerated 0.1.61's CosineLrScheduler.state_dict() after 7 steps
        "total_iterations": 20,
        "lr_min_ratio": None,
        "lr_min": 1e-6,
        "warmup_iterations": 4,
        "warmup_lr_init": 1e-6,
        "warmup_lr_ratio": None,
        "k_decay": 1.0,
        "num_cooldown_iterations": 0,
        "num_updates": 6,  # its count starts at -1
    }
    scheduler.load_state_dict(saved)
    assert scheduler.update_step == 7
    assert scheduler.optimizer.param_groups[0]["lr"] == scheduler.get_lr(7)[0]
    scheduler.step()
    assert scheduler.update_step == 8
    older = CosineLrScheduler(make_optimizer(0.1), 20)
    older.load_state_dict({"current_iteration_number": 5, "base_lr_values": [0.1]})
    assert older.update_step == 5
    # its WSDLrScheduler saves no count: said, not silently guessed
    wsd = WSDLrScheduler(make_optimizer(0.1), 20)
    with pytest.warns(UserWarning, match="holds no update count"):
        wsd.load_state_dict({"total_steps": 20, "base_lr_values": [0.1], "lr_min": 1e-6})
    assert wsd.update_step == 0


def test_scheduler_factory_with_pytorch_accelerated_arguments_in_the_trainer():
    trainer = make_trainer()
    factory = WSDLrScheduler.create_scheduler_fn(
        total_num_epochs=TrainerPlaceholderValues.NUM_EPOCHS,
        num_update_steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        num_warmup_steps=None,
    )
    trainer.train(
        make_dataset(8), num_epochs=2, per_device_batch_size=2, create_scheduler_fn=factory
    )
    assert trainer.scheduler.total_num_steps == trainer.run_config.num_update_steps == 8
    assert trainer.scheduler.update_step == 8
    cosine = CosineLrScheduler.create_scheduler_fn(num_warmup_epochs=1)  # as in its docs
    trainer.train(
        make_dataset(8), num_epochs=2, per_device_batch_size=2, create_scheduler_fn=cosine
    )
    assert (trainer.scheduler.total_num_steps, trainer.scheduler.num_warmup_steps) == (8, 4)
    assert trainer.scheduler.get_lr(7) == pytest.approx([1e-6])  # its default lr_min


# 7. Saving callbacks: save_scheduler, usable as classes, pytorch-accelerated's state names


def test_save_best_model_without_the_scheduler(tmp_path):
    callback = SaveBestModelCallback(tmp_path / "best.pt", save_scheduler=False)
    trainer = make_trainer(callbacks=[callback])
    trainer.train(
        make_dataset(8),
        num_epochs=1,
        eval_dataset=make_dataset(4),
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(StepLR, step_size=1),
    )
    assert "scheduler_state_dict" not in torch.load(tmp_path / "best.pt", weights_only=True)


def test_saving_callbacks_given_as_classes_use_pytorch_accelerated_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = make_trainer(callbacks=[SaveTrainingStateCallback, WSDCheckpointCallback])
    trainer.train(
        make_dataset(8),
        num_epochs=1,
        per_device_batch_size=2,
        create_scheduler_fn=WSDLrScheduler.create_scheduler_fn(),
    )
    assert [path.name for path in (tmp_path / "training_states").iterdir()] == ["state-000000004"]
    assert (tmp_path / "checkpoints" / "post-decay-000000004.pt").is_file()


def test_resume_from_a_directory_in_pytorch_accelerated_layout(tmp_path):
    def run(resume_from=None, num_epochs=2):
        trainer = make_trainer(model=make_model(seed=3))
        trainer.train(
            make_dataset(8),
            num_epochs=num_epochs,
            per_device_batch_size=2,
            resume_from=resume_from,
        )
        return trainer

    first = run(num_epochs=2)
    states = tmp_path / "states"
    first.save_training_state(states / "epoch_2")
    first.save_training_state(states / "final")
    first.save_training_state(states / "step_8")  # the newest, but "final" ends the run
    assert [path.name for path in training_states(states)] == ["final", "step_8", "epoch_2"]
    resumed = run(resume_from=states, num_epochs=2)
    assert resumed.progress.num_update_steps == first.progress.num_update_steps == 8


def test_wsd_checkpoint_callback_initial_checkpoint(tmp_path):
    trainer = make_trainer(callbacks=[WSDCheckpointCallback(tmp_path)])
    factory = WSDLrScheduler.create_scheduler_fn()
    trainer.train(
        make_dataset(8), num_epochs=1, per_device_batch_size=2, create_scheduler_fn=factory
    )
    export = tmp_path / "post-decay-000000004.pt"
    continued = make_trainer(
        model=make_model(seed=9),
        callbacks=[WSDCheckpointCallback(tmp_path / "next", initial_checkpoint=export)],
    )
    weights_before = [p.clone() for p in trainer.get_model().parameters()]
    continued.train(
        make_dataset(8),
        num_epochs=1,
        per_device_batch_size=2,
        create_scheduler_fn=factory,
        max_num_train_steps=1,
    )
    # the one update of a one-update WSD run uses the minimum LR, 0: the weights stay the
    # loaded ones, not the seed-9 initialisation
    assert all(
        torch.equal(a, b) for a, b in zip(weights_before, continued.get_model().parameters())
    )
    assert not torch.equal(make_model(seed=9)[0].weight, continued.get_model()[0].weight)
    with pytest.raises(ValueError, match="resume_from"):
        WSDCheckpointCallback(tmp_path, initial_checkpoint=tmp_path)


# 8. RunHistory: unrecorded metrics, evaluate() keeps the history


def test_unrecorded_metric_raises_value_error_and_metric_not_found_error():
    history = InMemoryRunHistory()
    for read in (history.get_latest_metric, history.get_metric_values):
        with pytest.raises(ValueError, match="No metric named 'accuracy'"):
            read("accuracy")
        with pytest.raises(MetricNotFoundError):
            read("accuracy")


def test_evaluate_keeps_the_run_history():
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    trainer.evaluate(make_dataset(4))
    # pytorch-accelerated resets the history in evaluate(); trainwright adds to it
    assert trainer.run_history.get_metric_names() == {"train_loss_epoch", "evaluation_loss"}


# 10. A user's own scheduler step on top of the trainer's per-epoch step


def test_stepping_an_epoch_scheduler_yourself_steps_it_twice():
    class StepsItself(Trainer):
        def eval_epoch_end(self):
            self.scheduler.step()  # as pytorch-accelerated scripts do for epoch schedulers

    model = make_model()
    trainer = StepsItself(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1.0), callbacks=()
    )
    trainer.train(
        make_dataset(4),
        num_epochs=2,
        eval_dataset=make_dataset(4),
        per_device_batch_size=2,
        create_scheduler_fn=functools.partial(StepLR, step_size=1, gamma=0.5),
        scheduler_step_interval="epoch",
    )
    assert trainer.scheduler.last_epoch == 4  # documented in the migration guide


def test_training_state_checkpoint_kwargs_and_save_per_node(tmp_path):
    trainer = make_trainer()
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    trainer.save_training_state(tmp_path / "state", checkpoint_kwargs={"global_step": 2})
    assert make_trainer().load_training_state(tmp_path / "state") == {"global_step": 2}
    trainer.save_checkpoint(tmp_path / "model.pt", save_per_node=True)
    assert (tmp_path / "model.pt").is_file()
