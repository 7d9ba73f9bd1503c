"""Control from callbacks and hooks on one process: stop requests, ending an epoch early and
skipping an optimizer update (the 2-process behaviour is in tests/distributed/)."""

from __future__ import annotations

import copy
import functools
import logging

import pytest
import torch
from helpers.tiny import RecorderCallback, make_dataset, make_model, make_trainer

from trainwright import Trainer, TrainerCallback
from trainwright.callbacks import (
    AGREED_AT,
    EVENTS,
    EVENTS_OUTSIDE_AGREEMENT,
    SaveTrainingStateCallback,
)
from trainwright.run_control import RunControl


class StepLog(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.num_optimizer_steps = 0

    def on_after_optimizer_step(self, trainer, **kwargs):
        self.num_optimizer_steps += 1

    def on_train_step_end(self, trainer, step, **kwargs):
        self.steps.append((trainer.progress.epoch, step))


def train(trainer: Trainer, num_epochs: int = 2, **kwargs) -> None:
    # 10 samples, 2 per batch: 5 batches per epoch.
    trainer.train(
        make_dataset(10),
        num_epochs=num_epochs,
        per_device_batch_size=2,
        train_dataloader_kwargs={"shuffle": False},
        **kwargs,
    )


def snapshot(trainer: Trainer) -> dict:
    return {
        "weights": copy.deepcopy(trainer.get_model().state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": copy.deepcopy(trainer.scheduler.state_dict()),
    }


def assert_same_state(actual, expected) -> None:
    def flatten(value):
        if isinstance(value, dict):
            return {key: flatten(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [flatten(item) for item in value]
        return value.tolist() if isinstance(value, torch.Tensor) else value

    assert flatten(actual) == flatten(expected)


class SkipThirdUpdate(TrainerCallback):
    """Asks to skip the third update, from the event given, and checks nothing moved."""

    def __init__(self, event: str = "on_before_optimizer_step") -> None:
        self.event = event
        self.before: dict | None = None
        self.after: dict | None = None
        self.gradients_after: list = []

    def _maybe_request(self, trainer, event):
        if event == self.event and trainer.progress.num_update_steps == 2 and not self.before:
            trainer.request_skip_update("third update")
            self.before = snapshot(trainer)

    def on_after_backward(self, trainer, **kwargs):
        self._maybe_request(trainer, "on_after_backward")

    def on_before_optimizer_step(self, trainer, **kwargs):
        self._maybe_request(trainer, "on_before_optimizer_step")

    def on_train_step_end(self, trainer, **kwargs):
        if trainer.progress.num_skipped_updates == 1 and self.after is None:
            self.after = snapshot(trainer)
            self.gradients_after = [p.grad for p in trainer.model.parameters()]


def momentum_trainer(callbacks) -> Trainer:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, torch.nn.CrossEntropyLoss(), optimizer, callbacks=callbacks)


def test_a_skipped_update_leaves_weights_optimizer_and_scheduler_unchanged(caplog):
    skipper, log = SkipThirdUpdate(), StepLog()
    trainer = momentum_trainer([skipper, log])
    with caplog.at_level(logging.INFO, logger="trainwright.trainer"):
        train(
            trainer,
            create_scheduler_fn=functools.partial(
                torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5
            ),
        )
    assert_same_state(skipper.after, skipper.before)
    assert all(gradient is None or not gradient.any() for gradient in skipper.gradients_after)
    assert trainer.progress.num_skipped_updates == 1
    assert trainer.progress.num_update_steps == 10  # the skipped update's slot is used up
    assert log.num_optimizer_steps == 9  # on_after_optimizer_step (EMA) did not run for it
    assert trainer.scheduler.last_epoch == 9
    assert "Skipped optimizer update 3 (epoch 0, step 2): third update" in caplog.text


def test_a_skip_asked_during_the_window_skips_the_window_update():
    skipper = SkipThirdUpdate(event="on_after_backward")
    trainer = momentum_trainer([skipper])
    # Accumulation 2: windows (0, 1) (2, 3) (4); the third update is at step 4.
    train(
        trainer,
        gradient_accumulation_steps=2,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )
    assert_same_state(skipper.after, skipper.before)
    assert trainer.progress.num_skipped_updates == 1
    assert trainer.progress.num_update_steps == 6


def test_ending_the_epoch_early_goes_on_with_evaluation_and_the_next_epoch():
    class EndAtStepTwo(TrainerCallback):
        def __init__(self) -> None:
            self.gradients_at_epoch_end: list = []

        def on_train_step_end(self, trainer, step, **kwargs):
            if trainer.progress.epoch == 0 and step == 2:
                trainer.request_end_epoch()

        def on_train_epoch_end(self, trainer, **kwargs):
            self.gradients_at_epoch_end.append([p.grad for p in trainer.model.parameters()])

    ender, log, recorder = EndAtStepTwo(), StepLog(), RecorderCallback()
    trainer = make_trainer(callbacks=[ender, log, recorder])
    train(trainer, eval_dataset=make_dataset(4), gradient_accumulation_steps=2)
    assert log.steps == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
    # Step 2 opened an accumulation window: its gradients were discarded, not applied.
    assert log.num_optimizer_steps == 1 + 3
    assert all(g is None or not g.any() for g in ender.gradients_at_epoch_end[0])
    events = [event for event, _ in recorder.events]
    assert events.count("on_eval_epoch_end") == events.count("on_training_run_epoch_end") == 2
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 2


def test_an_end_epoch_request_outside_the_steps_is_ignored():
    class EndAtEpochEnd(TrainerCallback):
        def on_train_epoch_end(self, trainer, **kwargs):
            trainer.request_end_epoch()

    log = StepLog()
    train(make_trainer(callbacks=[EndAtEpochEnd(), log]))
    assert len(log.steps) == 10


def test_request_stop_ends_the_run_after_the_current_step():
    class StopAtStepOne(TrainerCallback):
        def __init__(self) -> None:
            self.errors: list[str] = []

        def on_train_step_start(self, trainer, step, **kwargs):
            if step == 1:
                trainer.request_stop("enough")

        def on_stop_training_error(self, trainer, error, **kwargs):
            self.errors.append(str(error))

    stopper, log = StopAtStepOne(), StepLog()
    train(make_trainer(callbacks=[stopper, log]))
    assert log.steps == [(0, 0), (0, 1)]  # the step that asked completes
    assert stopper.errors == ["enough"]


def test_request_stop_from_an_epoch_level_event():
    class StopAfterFirstEpoch(TrainerCallback):
        def on_training_run_epoch_end(self, trainer, **kwargs):
            trainer.request_stop()

    trainer = make_trainer(callbacks=[StopAfterFirstEpoch()])
    train(trainer, num_epochs=3)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1


def test_hooks_can_skip_updates_too():
    class SkipEveryOtherUpdate(Trainer):
        def calculate_train_batch_loss(self, batch):
            if self.progress.step % 2 == 1:
                self.request_skip_update("odd step")
            return super().calculate_train_batch_loss(batch)

    model = make_model()
    trainer = SkipEveryOtherUpdate(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(),
    )
    train(trainer)
    assert trainer.progress.num_skipped_updates == 4
    assert trainer.progress.num_update_steps == 10


class EvaluateAndSaveAtStepOne(TrainerCallback):
    """Asks for an evaluation and a save at step 1 of epoch 0; records, at every step start,
    how many evaluations and states there are."""

    def __init__(self, save_dir) -> None:
        self.save_dir = save_dir
        self.seen: list[tuple[int, int, int]] = []  # (step, evaluations, states)
        self.is_training_at_step_start: list[bool] = []

    def on_train_step_start(self, trainer, step, **kwargs):
        history = trainer.run_history
        num_evaluations = 0
        if "step_eval_loss" in history.get_metric_names():
            num_evaluations = len(history.get_metric_values("step_eval_loss"))
        num_states = len(list(self.save_dir.glob("state-*")))
        self.seen.append((step, num_evaluations, num_states))
        self.is_training_at_step_start.append(trainer.model.training)

    def on_train_step_end(self, trainer, step, **kwargs):
        if (trainer.progress.epoch, step) == (0, 1):
            trainer.request_evaluation()
            trainer.request_save()


def test_evaluation_and_save_requests_run_at_the_end_of_the_step(tmp_path):
    requester = EvaluateAndSaveAtStepOne(tmp_path)
    saver = SaveTrainingStateCallback(tmp_path, save_at_end=False)
    trainer = make_trainer(callbacks=[requester, saver])
    train(trainer, num_epochs=1, eval_dataset=make_dataset(4))
    assert requester.seen == [(0, 0, 0), (1, 0, 0), (2, 1, 1), (3, 1, 1), (4, 1, 1)]
    assert [path.name for path in tmp_path.glob("state-*")] == ["state-000000002"]
    assert all(requester.is_training_at_step_start)  # back in train mode after evaluating


def test_evaluation_and_save_requests_need_their_means():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="needs evaluation data"):
        trainer.request_evaluation()
    with pytest.raises(ValueError, match="SaveTrainingStateCallback"):
        trainer.request_save()


# ---------------------------------------------------------------------------------------------
# The agreement points declared in the event registry (AGREED_AT), against a real run
# ---------------------------------------------------------------------------------------------


class StopAtFirst(RecorderCallback):
    """Records every event; calls ``request_stop`` at the first time ``event`` fires."""

    def __init__(self, event: str | None = None) -> None:
        super().__init__()
        self.event = event
        self.has_asked = False

    def _record(self, event, trainer, kwargs):
        super()._record(event, trainer, kwargs)
        if event == self.event and not self.has_asked:
            self.has_asked = True
            trainer.request_stop(f"asked in {event}")


def recorded_run(event: str | None = None) -> list[str]:
    """The names of the events of 2 epochs of 3 steps with an evaluation epoch of 2 steps;
    a stop requested at the first ``event``."""
    recorder = StopAtFirst(event)
    train(make_trainer(callbacks=[recorder]), eval_dataset=make_dataset(4), num_epochs=2)
    return [name for name, _ in recorder.events]


def test_every_event_is_declared_inside_or_outside_the_agreed_run():
    assert set(AGREED_AT).isdisjoint(EVENTS_OUTSIDE_AGREEMENT)
    assert set(AGREED_AT) | EVENTS_OUTSIDE_AGREEMENT == set(EVENTS)
    for point in AGREED_AT.values():
        assert AGREED_AT[point] == point  # each names an agreement point


def test_the_events_fired_inside_a_training_run_are_those_declared_in_agreed_at():
    events = recorded_run()
    start = events.index("on_training_run_start")
    end = len(events) - events[::-1].index("on_training_run_epoch_end")
    assert set(events[start:end]) == set(AGREED_AT)
    assert set(events[:start] + events[end:]) <= EVENTS_OUTSIDE_AGREEMENT


@pytest.mark.parametrize("event", sorted(AGREED_AT))
def test_a_stop_asked_in_an_event_takes_effect_at_its_declared_agreement_point(event):
    # One process agrees at the same points as several (where a request is raised at once):
    # if an event declared an agreement point is not followed by its agreement in the loop, or
    # an event is fired after the last agreement, the stop comes later or never.
    events = recorded_run(event)
    asked_at = events.index(event)
    assert "on_stop_training_error" in events, f"the stop asked in {event} was dropped"
    stopped_at = events.index("on_stop_training_error")
    point = AGREED_AT[event]
    assert events[stopped_at - 1] == point
    assert point not in events[asked_at + 1 : stopped_at - 1] or point == event
    if point == event:
        assert stopped_at == asked_at + 1


def test_run_control_refuses_to_agree_after_an_event_not_declared_an_agreement_point():
    trainer = make_trainer()
    run_control = RunControl(trainer.accelerator, trainer.callback_handler)
    run_control.agree(after="on_eval_epoch_end")
    with pytest.raises(ValueError, match="'on_eval_step_end' is not an agreement point"):
        run_control.agree(after="on_eval_step_end")


@pytest.mark.parametrize("vote_interval", [0, 2.0, True])
def test_a_vote_interval_that_is_not_a_positive_integer_is_refused_before_training(
    vote_interval,
):
    log = StepLog()
    trainer = make_trainer(callbacks=[log])
    trainer.vote_interval = vote_interval
    with pytest.raises(ValueError, match="vote_interval must be a positive integer"):
        train(trainer)
    assert log.steps == []


def test_one_process_acts_at_the_end_of_the_step_whatever_the_vote_interval():
    class StopAtStepOne(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 1:
                trainer.request_stop()

    log = StepLog()
    trainer = make_trainer(callbacks=[StopAtStepOne(), log])
    trainer.vote_interval = 4
    train(trainer)
    assert log.steps == [(0, 0), (0, 1)]
