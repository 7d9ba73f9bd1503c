"""The callback protocol: event registry, dispatch, order, custom events and errors."""

from __future__ import annotations

import inspect

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import EVENTS, CallbackHandler, PrintProgressCallback
from trainwright.callbacks.naming import callback_name


def test_every_event_has_exactly_one_documented_no_op():
    methods = {name for name in vars(TrainerCallback) if name.startswith("on_")}
    assert methods == set(EVENTS)
    for event in EVENTS:
        method = getattr(TrainerCallback, event)
        assert method.__doc__, f"{event} needs a docstring"
        keywords = {
            name: None
            for name in inspect.signature(method).parameters
            if name not in ("self", "kwargs")
        }
        assert method(TrainerCallback(), **keywords, extra_keyword=1) is None


def test_the_docstring_carries_the_loop_pseudocode():
    for event in EVENTS:
        assert event in TrainerCallback.__doc__


class Log(TrainerCallback):
    def __init__(self, log, name):
        self.log, self.name = log, name

    def on_train_epoch_end(self, trainer, **kwargs):
        self.log.append(self.name)


def test_dispatch_reaches_only_callbacks_that_override_the_event():
    log = []
    handler = CallbackHandler([Log(log, "a"), TrainerCallback(), Log(log, "b")])
    assert len(handler._dispatch["on_train_epoch_end"]) == 2
    assert handler._dispatch["on_train_step_end"] == ()
    handler.call_event("on_train_epoch_end", None)
    assert log == ["a", "b"]


def test_order_then_given_order():
    log = []

    class Early(Log):
        order = -1

    class Late(Log):
        order = 5

    handler = CallbackHandler(
        [Late(log, "late"), Log(log, "first"), Early(log, "early"), Log(log, "second")]
    )
    handler.call_event("on_train_epoch_end", None)
    assert log == ["early", "first", "second", "late"]


def test_add_and_remove_callbacks_rebuild_the_table():
    log = []
    handler = CallbackHandler([])
    added = handler.add_callback(Log(log, "a"))
    handler.call_event("on_train_epoch_end", None)
    handler.remove_callback(added)
    handler.call_event("on_train_epoch_end", None)
    assert log == ["a"]
    handler.add_callback(PrintProgressCallback)
    assert isinstance(handler.pop_callback(PrintProgressCallback), PrintProgressCallback)
    with pytest.raises(ValueError, match="not one of the trainer's callbacks"):
        handler.remove_callback(PrintProgressCallback)


def test_the_callbacks_cannot_be_changed_in_place_only_through_the_trainer():
    class Late(Log):
        order = 5

    log = []
    trainer = make_trainer(callbacks=[PrintProgressCallback])
    with pytest.raises(AttributeError):
        trainer.callback_handler.callbacks.append(Log(log, "ignored"))
    late = trainer.add_callback(Late(log, "late"))
    added = trainer.add_callback(Log(log, "added"))
    assert trainer.callback_handler.callbacks[-1] is late  # ordering rules still apply
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=4)
    assert log == ["added", "late"]  # both received on_train_epoch_end, in order
    assert trainer.pop_callback(Late) is late
    trainer.remove_callback(added)
    assert [type(c) for c in trainer.callback_handler.callbacks] == [PrintProgressCallback]
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=4)
    assert log == ["added", "late"]


def test_callbacks_given_as_classes_are_instantiated():
    handler = CallbackHandler([PrintProgressCallback])
    assert isinstance(handler.callbacks[0], PrintProgressCallback)


def test_custom_events_reach_only_callbacks_that_define_them():
    received = []

    class Verifier(TrainerCallback):
        def verify_batch(self, trainer, xb, yb):
            received.append((trainer, xb, yb))

    handler = CallbackHandler([Verifier(), Log([], "other")])
    handler.call_event("verify_batch", trainer="t", xb=1, yb=2)
    handler.call_event("verify_batch", trainer="t", xb=3, yb=4)
    assert received == [("t", 1, 2), ("t", 3, 4)]
    handler.call_event("nobody_listens", x=1)


def test_a_callback_error_propagates_with_a_note_naming_callback_and_event():
    class Broken(TrainerCallback):
        def on_train_epoch_end(self, trainer, **kwargs):
            raise AttributeError("no such thing")

    trainer = make_trainer(callbacks=[Broken()])
    with pytest.raises(AttributeError, match="no such thing") as info:
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)
    assert "raised by callback Broken in 'on_train_epoch_end'" in info.value.__notes__


def test_stop_training_error_from_a_callback_ends_the_run_cleanly():
    class Stop(TrainerCallback):
        def on_train_step_end(self, trainer, step, **kwargs):
            if step == 1:
                raise StopTrainingError("stop here")

    trainer = make_trainer(callbacks=[Stop()])
    trainer.train(make_dataset(10), num_epochs=3, per_device_batch_size=2)
    assert trainer.run_history.get_metric_names() == set()


def test_stop_training_error_from_a_hook_ends_the_run_cleanly():
    from trainwright import Trainer

    class StoppingTrainer(Trainer):
        def training_run_epoch_end(self):
            raise StopTrainingError("one epoch")

    import torch
    from helpers.tiny import make_model

    model = make_model()
    trainer = StoppingTrainer(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(),
    )
    trainer.train(make_dataset(4), num_epochs=5, per_device_batch_size=2)
    assert len(trainer.run_history.get_metric_values("train_loss_epoch")) == 1


@pytest.mark.parametrize("bad", [object(), 3, "PrintProgressCallback", int])
def test_a_callback_must_be_a_trainer_callback(bad):
    with pytest.raises(TypeError, match="TrainerCallback subclasses or instances"):
        make_trainer(callbacks=[bad])


def test_the_same_callback_twice_is_rejected():
    callback = Log([], "a")
    with pytest.raises(ValueError, match="same Log instance was given twice"):
        make_trainer(callbacks=[callback, callback])
    with pytest.raises(ValueError, match="PrintProgressCallback was given twice"):
        make_trainer(callbacks=[PrintProgressCallback, PrintProgressCallback])


def test_distinct_instances_of_one_class_are_allowed():
    log = []
    handler = CallbackHandler([Log(log, "a"), Log(log, "b")])
    handler.call_event("on_train_epoch_end", None)
    assert log == ["a", "b"]


def test_one_name_for_a_callback_in_messages_plans_and_state_keys():
    class Log(TrainerCallback):
        def on_train_epoch_end(self, trainer, **kwargs):
            self.has_run = True

    assert callback_name(Log) == callback_name(Log()) == "Log"
    first, second = Log(), Log()
    handler = CallbackHandler([first, second])
    assert list(handler.state_dict()) == ["Log", "Log#2"]
    assert repr(handler) == "CallbackHandler([Log, Log])"
    assert "on_train_epoch_end: Log -> Log" in handler.describe(print_plan=False)
    with pytest.raises(ValueError) as info:
        CallbackHandler([PrintProgressCallback, PrintProgressCallback])
    assert str(info.value) == (
        "Callback class PrintProgressCallback was given twice. Give it once, or pass distinct "
        "instances (e.g. PrintProgressCallback(...)) to run it several times."
    )


def test_a_method_named_like_an_event_it_is_not_is_reported_with_the_event_meant():
    calls = []

    class Ported(TrainerCallback):
        def on_train_run_begin(self, trainer, **kwargs):  # a typo of on_training_run_start
            calls.append("begin")

        def on_epoch_end(self, trainer, **kwargs):  # Keras's name
            calls.append("epoch")

        def on_checkpoint_written(self, trainer, **kwargs):  # a custom event: not reported
            calls.append("custom")

    with pytest.warns(UserWarning) as record:
        trainer = make_trainer(callbacks=[Ported()])
    messages = sorted(str(warning.message) for warning in record)
    assert len(messages) == 2
    assert messages[0].startswith("Ported.on_epoch_end is not an event the trainer fires")
    assert "Did you mean on_train_epoch_end?" in messages[0]
    assert messages[1].startswith("Ported.on_train_run_begin is not an event")
    assert "Did you mean on_training_run_start?" in messages[1]
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=4)
    assert calls == []  # what the warning said: neither ran
    trainer.callback_handler.call_event("on_checkpoint_written", trainer)
    assert calls == ["custom"]
