"""Event filters: every N updates / epochs / seconds, once; exact firing steps, resume, and
no call when not due."""

from __future__ import annotations

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import (
    CallbackHandler,
    EventFilter,
    ExperimentTrackerCallback,
    LearningRateMonitorCallback,
    SaveTrainingStateCallback,
    StepBasedEvaluationCallback,
    due_check,
    every,
    filtered,
    once,
)


class EveryTwoUpdates(TrainerCallback):
    def __init__(self) -> None:
        self.fired: list[tuple[int, int, int]] = []  # (epoch, step, updates)

    @every(n_updates=2)
    def on_train_step_end(self, trainer, step, **kwargs):
        self.fired.append((trainer.progress.epoch, step, trainer.progress.num_update_steps))


def train(callbacks, num_epochs=2, **kwargs):
    trainer = make_trainer(callbacks=callbacks)
    # 10 samples, 2 per batch: 5 batches per epoch; accumulation 2: updates at steps 1, 3, 4.
    trainer.train(
        make_dataset(10),
        num_epochs=num_epochs,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        train_dataloader_kwargs={"shuffle": False},
        **kwargs,
    )
    return trainer


def test_every_n_updates_fires_at_the_steps_that_performed_them_across_epochs():
    callback = EveryTwoUpdates()
    train([callback])
    # Updates 1..6 happen at (epoch, step) (0,1) (0,3) (0,4) (1,1) (1,3) (1,4).
    assert callback.fired == [(0, 3, 2), (1, 1, 4), (1, 4, 6)]


def fired_around_a_resume(make_callback, stop_step, tmp_path):
    """What callbacks from ``make_callback()`` fire in 3 uninterrupted epochs, then in a run
    saved and stopped at epoch 1, step ``stop_step``, and in its resumed continuation."""
    uninterrupted = make_callback()
    train([uninterrupted], num_epochs=3)

    class SaveAndStop(TrainerCallback):
        order = 1  # after the filtered callback has seen the step

        def on_train_step_end(self, trainer, step, **kwargs):
            if trainer.progress.epoch == 1 and step == stop_step:
                trainer.save_training_state(tmp_path / "state")
                raise StopTrainingError("interrupted")

    first_part = make_callback()
    train([first_part, SaveAndStop()], num_epochs=3)
    second_part = make_callback()
    train([second_part], num_epochs=3, resume_from=tmp_path / "state")
    return uninterrupted, first_part, second_part


def test_every_n_updates_continues_exactly_after_a_resume(tmp_path):
    # Epoch 1, step 2: mid accumulation window, right after update 4 fired.
    uninterrupted, first_part, second_part = fired_around_a_resume(EveryTwoUpdates, 2, tmp_path)
    assert first_part.fired == uninterrupted.fired[:2]
    assert second_part.fired == uninterrupted.fired[2:]
    assert uninterrupted.fired[-1] == (2, 3, 8)


def test_a_filtered_method_is_not_called_when_not_due_and_others_are_not_wrapped():
    calls = []

    class Counted(TrainerCallback):
        @every(n_updates=3)
        def on_train_step_end(self, trainer, **kwargs):
            calls.append(trainer.progress.num_update_steps)

        def on_train_epoch_end(self, trainer, **kwargs):
            calls.append("epoch end")

    callback = Counted()
    handler = train([callback]).callback_handler
    assert calls == [3, "epoch end", 6, "epoch end"]
    # The unfiltered event method sits in the table as is: nothing added on its path.
    assert handler._dispatch["on_train_epoch_end"] == (callback.on_train_epoch_end,)
    assert handler._dispatch["on_train_step_end"][0] is not callback.on_train_step_end


def test_every_n_epochs_once_and_seconds():
    class Mixed(TrainerCallback):
        def __init__(self) -> None:
            self.epochs: list[int] = []
            self.first: list[int] = []
            self.timed: list[int] = []
            self.never: list[int] = []

        @every(n_epochs=2)
        def on_training_run_epoch_end(self, trainer, **kwargs):
            self.epochs.append(trainer.progress.epoch)

        @once
        def on_train_step_end(self, trainer, step, **kwargs):
            self.first.append(step)

        @every(seconds=1e-9)
        def on_train_epoch_end(self, trainer, **kwargs):
            self.timed.append(trainer.progress.epoch)

        @every(seconds=1e9)
        def on_train_epoch_start(self, trainer, **kwargs):
            self.never.append(trainer.progress.epoch)

    callback = Mixed()
    train([callback], num_epochs=5)
    assert callback.epochs == [1, 3]
    assert callback.first == [0]
    assert callback.timed == [0, 1, 2, 3, 4]
    assert callback.never == []


def test_decorated_filters_keep_their_state_per_instance():
    first, second = EveryTwoUpdates(), EveryTwoUpdates()
    train([first, second])
    assert first.fired == second.fired == [(0, 3, 2), (1, 1, 4), (1, 4, 6)]


def test_the_wrapper_filters_an_existing_callback_instance():
    class EveryStep(TrainerCallback):
        def __init__(self) -> None:
            self.updates: list[int] = []

        def on_after_optimizer_step(self, trainer, **kwargs):
            self.updates.append(trainer.progress.num_update_steps)

    plain, wrapped = EveryStep(), filtered(EveryStep(), on_after_optimizer_step=every(n_updates=4))
    handler = train([plain, wrapped], num_epochs=3).callback_handler
    assert plain.updates == list(range(1, 10))
    assert wrapped.updates == [4, 8]
    assert "on_after_optimizer_step: EveryStep -> EveryStep [every 4 updates]" in (
        handler.describe(print_plan=False)
    )


@pytest.mark.parametrize(
    "arguments", [{}, {"n_updates": 2, "n_epochs": 1}, {"n_updates": 0}, {"seconds": -1.0}]
)
def test_a_filter_needs_exactly_one_valid_interval(arguments):
    with pytest.raises(ValueError):
        every(**arguments)


def test_the_wrapper_rejects_unknown_events_and_non_filters():
    with pytest.raises(ValueError, match="no event method 'on_nothing'"):
        filtered(TrainerCallback(), on_nothing=once)
    with pytest.raises(TypeError, match="EventFilter"):
        filtered(TrainerCallback(), on_train_step_end=3)
    assert isinstance(once, EventFilter)
    CallbackHandler([filtered(TrainerCallback(), on_train_step_end=once)])


class EveryNUpdatesChecked(TrainerCallback):
    """EveryTwoUpdates with the interval given to the constructor: a `due_check`."""

    def __init__(self, n_updates: int) -> None:
        self.fired: list[tuple[int, int, int]] = []
        self._due = due_check(self, every(n_updates=n_updates))

    def on_train_step_end(self, trainer, step, **kwargs):
        if self._due.is_due(trainer):
            self.fired.append((trainer.progress.epoch, step, trainer.progress.num_update_steps))


def test_a_due_check_fires_as_the_decorated_filter_across_epochs_and_train_calls():
    decorated, checked = EveryTwoUpdates(), EveryNUpdatesChecked(2)
    trainer = train([decorated, checked])
    assert checked.fired == decorated.fired == [(0, 3, 2), (1, 1, 4), (1, 4, 6)]
    # A second train() starts counting from its own position, as the decorated filter does.
    trainer.train(
        make_dataset(10),
        num_epochs=1,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        train_dataloader_kwargs={"shuffle": False},
    )
    assert checked.fired == decorated.fired
    assert checked.fired[3:] == [(0, 3, 2)]


@pytest.mark.parametrize("make_callback", [EveryTwoUpdates, lambda: EveryNUpdatesChecked(2)])
@pytest.mark.parametrize("stop_step", [1, 2])
def test_a_due_check_continues_exactly_after_a_resume_and_never_twice_at_one_count(
    tmp_path, make_callback, stop_step
):
    # Epoch 1, step 1 is the step of update 4, where the filter fired: the resumed run's first
    # step (step 2) performs no update, the count is still 4, and it must not fire again.
    uninterrupted, first_part, second_part = fired_around_a_resume(
        make_callback, stop_step, tmp_path
    )
    assert first_part.fired == uninterrupted.fired[:2] == [(0, 3, 2), (1, 1, 4)]
    assert second_part.fired == uninterrupted.fired[2:]


def test_due_check_needs_a_filter_and_the_built_in_intervals_are_read_only():
    with pytest.raises(TypeError, match="EventFilter"):
        due_check(TrainerCallback(), 3)
    callbacks = [
        (StepBasedEvaluationCallback(eval_every_n_updates=3), "eval_every_n_updates", 3),
        (LearningRateMonitorCallback(log_every_n_updates=4), "log_every_n_updates", 4),
        (LearningRateMonitorCallback(), "log_every_n_updates", None),
        (SaveTrainingStateCallback(save_every_n_steps=5), "save_every_n_steps", 5),
        (ExperimentTrackerCallback([], log_every_n_updates=6), "log_every_n_updates", 6),
    ]
    for callback, name, interval in callbacks:
        assert getattr(callback, name) == interval
        with pytest.raises(AttributeError):  # it would not change the filter: refused
            setattr(callback, name, 10)
