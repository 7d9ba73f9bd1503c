"""Golden event traces: the complete sequence of events a run fires, with their keywords."""

from __future__ import annotations

import pytest
from helpers.tiny import RecorderCallback, make_dataset, make_trainer

from trainwright import StopTrainingError, Trainer, TrainerCallback

STEP = ("batch", "step")
STEP_OUTPUT = ("batch", "batch_output", "step")


def train_step(update: bool) -> list:
    events = [
        ("on_train_step_start", STEP),
        ("on_before_backward", STEP_OUTPUT),
        ("on_after_backward", STEP_OUTPUT),
    ]
    if update:
        events += [("on_before_optimizer_step", ("step",)), ("on_after_optimizer_step", ("step",))]
    return [*events, ("on_train_step_end", STEP_OUTPUT)]


def eval_epoch(num_batches: int) -> list:
    steps = [("on_eval_step_start", STEP), ("on_eval_step_end", STEP_OUTPUT)] * num_batches
    return [("on_eval_epoch_start", ()), *steps, ("on_eval_epoch_end", ())]


def test_train_trace_with_gradient_accumulation_and_eval():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[recorder])
    # 6 samples / batch 2 = 3 batches; accumulation 2 -> updates after batches 1 and 2 (the
    # epoch's last batch closes a short window). 4 eval samples -> 2 eval batches.
    trainer.train(
        make_dataset(6),
        num_epochs=2,
        eval_dataset=make_dataset(4, seed=1),
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
    )
    epoch = [
        ("on_train_epoch_start", ()),
        *train_step(update=False),
        *train_step(update=True),
        *train_step(update=True),
        ("on_train_epoch_end", ()),
        *eval_epoch(2),
        ("on_training_run_epoch_end", ()),
    ]
    expected = [
        ("on_init_end", ()),
        ("on_training_run_start", ()),
        *epoch,
        *epoch,
        ("on_training_run_end", ()),
    ]
    assert recorder.events == expected
    train_steps = [step for event, step in recorder.steps if event == "on_train_step_end"]
    assert train_steps == [0, 1, 2, 0, 1, 2]
    update_steps = [step for event, step in recorder.steps if event == "on_after_optimizer_step"]
    assert update_steps == [1, 2, 1, 2]


def test_init_end_is_the_first_event():
    recorder = RecorderCallback()
    make_trainer(callbacks=[recorder])
    assert recorder.events == [("on_init_end", ())]


def test_evaluate_trace():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[recorder])
    recorder.events.clear()
    trainer.evaluate(make_dataset(5), per_device_batch_size=2)
    assert recorder.events == [
        ("on_evaluation_run_start", ()),
        *eval_epoch(3),
        ("on_evaluation_run_end", ()),
    ]
    assert "evaluation_loss" in trainer.run_history.get_metric_names()


class StopAtStep(TrainerCallback):
    def on_after_backward(self, trainer, step, **kwargs):
        if trainer.run_history.current_epoch == 2 and step == 1:
            raise StopTrainingError("enough")


def test_stop_trace_mid_epoch():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[StopAtStep(), recorder])
    recorder.events.clear()
    trainer.train(
        make_dataset(6), num_epochs=3, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    epoch_one = [
        ("on_train_epoch_start", ()),
        *train_step(True) * 3,
        ("on_train_epoch_end", ()),
        *eval_epoch(1),
        ("on_training_run_epoch_end", ()),
    ]
    stopped_epoch = [
        ("on_train_epoch_start", ()),
        *train_step(True),
        ("on_train_step_start", STEP),
        ("on_before_backward", STEP_OUTPUT),
        # StopAtStep raises in on_after_backward before the recorder's on_after_backward.
    ]
    assert recorder.events == [
        ("on_training_run_start", ()),
        *epoch_one,
        *stopped_epoch,
        ("on_stop_training_error", ("error",)),
        ("on_training_run_end", ()),
    ]
    assert trainer.run_history.current_epoch == 2
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1


class HookRecordingTrainer(Trainer):
    def __init__(self, *args, log, **kwargs):
        self.log = log
        super().__init__(*args, **kwargs)

    def training_run_start(self):
        self.log.append("hook:training_run_start")

    def train_epoch_start(self):
        super().train_epoch_start()
        self.log.append("hook:train_epoch_start")

    def train_epoch_end(self):
        self.log.append("hook:train_epoch_end")

    def eval_epoch_start(self):
        super().eval_epoch_start()
        self.log.append("hook:eval_epoch_start")

    def eval_epoch_end(self):
        self.log.append("hook:eval_epoch_end")

    def training_run_epoch_end(self):
        self.log.append("hook:training_run_epoch_end")

    def training_run_end(self):
        self.log.append("hook:training_run_end")


class LoggingCallback(TrainerCallback):
    def __init__(self, log):
        self.log = log

    def on_training_run_start(self, trainer, **kwargs):
        self.log.append("event:on_training_run_start")

    def on_train_epoch_start(self, trainer, **kwargs):
        assert trainer.model.training
        self.log.append("event:on_train_epoch_start")

    def on_train_epoch_end(self, trainer, **kwargs):
        # the loss is recorded after the hook and before the event
        assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1
        self.log.append("event:on_train_epoch_end")

    def on_eval_epoch_start(self, trainer, **kwargs):
        assert not trainer.model.training
        self.log.append("event:on_eval_epoch_start")

    def on_eval_epoch_end(self, trainer, **kwargs):
        self.log.append("event:on_eval_epoch_end")

    def on_training_run_epoch_end(self, trainer, **kwargs):
        self.log.append("event:on_training_run_epoch_end")

    def on_training_run_end(self, trainer, **kwargs):
        self.log.append("event:on_training_run_end")


def test_hooks_run_before_the_callbacks_of_the_same_moment():
    from helpers.tiny import make_model

    log: list[str] = []
    model = make_model()
    import torch

    trainer = HookRecordingTrainer(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[LoggingCallback(log)],
        log=log,
    )
    trainer.train(
        make_dataset(4), num_epochs=1, eval_dataset=make_dataset(2), per_device_batch_size=2
    )
    names = [
        "training_run_start",
        "train_epoch_start",
        "train_epoch_end",
        "eval_epoch_start",
        "eval_epoch_end",
        "training_run_epoch_end",
        "training_run_end",
    ]
    expected = []
    for name in names:
        expected += [f"hook:{name}", f"event:on_{name}"]
    assert log == expected


@pytest.mark.parametrize(
    "num_batches,accumulation,updates", [(5, 1, 5), (5, 2, 3), (6, 4, 2), (3, 4, 1)]
)
def test_updates_per_epoch_is_ceil_of_batches_over_accumulation(num_batches, accumulation, updates):
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[recorder])
    trainer.train(
        make_dataset(2 * num_batches),
        num_epochs=2,
        per_device_batch_size=2,
        gradient_accumulation_steps=accumulation,
    )
    num_updates = sum(event == "on_after_optimizer_step" for event, _ in recorder.events)
    assert num_updates == 2 * updates
    assert trainer.run_config.num_update_steps_per_epoch == updates
    assert trainer.run_config.num_update_steps == 2 * updates
