"""Declared callback order: run_after / run_before, metric readers and writers, cycles, and
the execution plan."""

from __future__ import annotations

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import (
    ALL_METRICS,
    CallbackHandler,
    CallbackOrderError,
    EarlyStoppingCallback,
    PrintMetricsCallback,
    SaveTrainingStateCallback,
    TerminateOnNaNCallback,
)


class Named(TrainerCallback):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def on_train_epoch_end(self, trainer, **kwargs):
        self.log.append(self.name)


def names(handler: CallbackHandler) -> list[str]:
    return [getattr(callback, "name", type(callback).__name__) for callback in handler.callbacks]


def test_unconstrained_callbacks_keep_order_then_given_order():
    class Early(Named):
        order = -1

    log: list[str] = []
    handler = CallbackHandler(
        [Named(log, "a"), Early(log, "early"), Named(log, "b"), Named(log, "c")]
    )
    assert names(handler) == ["early", "a", "b", "c"]
    handler.call_event("on_train_epoch_end", None)
    assert log == ["early", "a", "b", "c"]


def test_run_after_and_run_before_win_over_order_and_move_nothing_else():
    class First(Named):
        order = -5
        run_after = ("Last",)  # by name

    class Last(Named):
        order = 5

    class BeforeA(Named):
        run_before = (Named,)  # by class: every Named instance, subclasses included

    log: list[str] = []
    handler = CallbackHandler(
        [Named(log, "a"), First(log, "first"), Named(log, "b"), Last(log, "last")]
    )
    assert names(handler) == ["a", "b", "last", "first"]

    # BeforeA is itself a Named: a callback is never constrained against itself.
    handler = CallbackHandler([Named(log, "a"), Named(log, "b"), BeforeA(log, "before")])
    assert names(handler) == ["before", "a", "b"]


def test_names_of_absent_callbacks_are_ignored():
    class AfterSomething(Named):
        run_after = ("NotHere", EarlyStoppingCallback)

    handler = CallbackHandler([AfterSomething([], "x"), Named([], "y")])
    assert names(handler) == ["x", "y"]


def test_a_cycle_is_rejected_with_an_error_naming_it():
    class A(TrainerCallback):
        run_before = ("B",)
        run_after = ("C",)

    class B(TrainerCallback):
        run_before = ("C",)

    class C(TrainerCallback):
        pass

    class Bystander(TrainerCallback):
        pass

    with pytest.raises(CallbackOrderError, match="cycle") as info:
        CallbackHandler([Bystander(), A(), B(), C()])
    message = str(info.value)
    assert "A (A.run_before) -> B (B.run_before) -> C (A.run_after) -> A." in message
    assert "Bystander" not in message


class Accuracy(TrainerCallback):
    writes_metrics = ("accuracy",)

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", 0.5)


class AccuracyPrinter(TrainerCallback):
    """Reads the metric in the same event that writes it: the order matters."""

    reads_metrics = ("accuracy",)

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_eval_epoch_end(self, trainer, **kwargs):
        self.seen.append(trainer.run_history.get_latest_metric("accuracy"))


def test_a_metric_reader_placed_before_its_writer_is_detected():
    # The seed's warning: a callback that updates a metric placed after one that reads it.
    with pytest.raises(CallbackOrderError) as info:
        make_trainer(callbacks=[AccuracyPrinter(), Accuracy()])
    message = str(info.value)
    assert "AccuracyPrinter reads 'accuracy', written by Accuracy, but runs before it" in message
    assert "reorder_metric_readers=True" in message


def test_reordering_readers_when_allowed():
    printer = AccuracyPrinter()
    trainer = make_trainer(callbacks=[printer, Accuracy()], reorder_metric_readers=True)
    assert [type(c) for c in trainer.callback_handler.callbacks] == [Accuracy, AccuracyPrinter]
    trainer.train(
        make_dataset(4), num_epochs=2, eval_dataset=make_dataset(4), per_device_batch_size=2
    )
    assert printer.seen == [0.5, 0.5]


def test_a_reader_after_its_writer_is_accepted_and_undeclared_writers_cannot_be_checked():
    handler = CallbackHandler([Accuracy(), AccuracyPrinter()])
    assert [type(c) for c in handler.callbacks] == [Accuracy, AccuracyPrinter]

    class Undeclared(TrainerCallback):
        pass

    CallbackHandler([AccuracyPrinter(), Undeclared()])


def test_readers_of_every_metric_run_after_every_writer():
    class LateWriter(Accuracy):
        order = 20  # would run after PrintMetricsCallback (order 10) by order alone

    class EverythingReader(TrainerCallback):
        reads_metrics = (ALL_METRICS,)
        writes_metrics = ("summary",)

    handler = CallbackHandler([PrintMetricsCallback(), LateWriter(), EverythingReader()])
    ordered = [type(c) for c in handler.callbacks]
    assert ordered.index(LateWriter) < ordered.index(PrintMetricsCallback)
    # Two readers of every metric do not wait for each other, even when one writes: their
    # order decides.
    assert ordered.index(EverythingReader) < ordered.index(PrintMetricsCallback)


def test_monitoring_callbacks_read_their_watched_metric():
    early_stopping = EarlyStoppingCallback(watch_metric="accuracy")
    assert early_stopping.reads_metrics == ("accuracy",)
    with pytest.raises(CallbackOrderError, match="EarlyStoppingCallback reads 'accuracy'"):
        CallbackHandler([early_stopping, Accuracy()])
    CallbackHandler([Accuracy(), EarlyStoppingCallback(watch_metric="accuracy")])


def test_training_states_are_saved_after_stopping_decisions(tmp_path):
    class EarlyStopper(EarlyStoppingCallback):
        order = 60  # after the saver by order alone

    saver = SaveTrainingStateCallback(tmp_path)
    handler = CallbackHandler([saver, EarlyStopper(), TerminateOnNaNCallback()])
    assert handler.callbacks[-1] is saver


def test_a_failing_add_leaves_the_handler_unchanged():
    handler = CallbackHandler([Accuracy()])
    with pytest.raises(CallbackOrderError):
        handler.add_callback(type("Reader", (AccuracyPrinter,), {"run_before": ("Accuracy",)}))
    assert [type(c) for c in handler.callbacks] == [Accuracy]
    handler.add_callback(AccuracyPrinter)  # the class may still be added in a valid position


def test_describe_prints_the_plan_per_event(capsys):
    class Stopper(TrainerCallback):
        def on_train_step_end(self, trainer, **kwargs):
            raise StopTrainingError("never reached")

    handler = make_trainer(callbacks=[Accuracy(), AccuracyPrinter(), Stopper()]).callback_handler
    plan = handler.describe()
    assert capsys.readouterr().out.strip() == plan
    lines = plan.splitlines()
    assert lines[0] == "callback order: Accuracy, AccuracyPrinter, Stopper"
    assert "on_eval_epoch_end: Accuracy -> AccuracyPrinter" in lines
    assert "on_train_step_end: Stopper" in lines
    assert not any(line.startswith("on_train_epoch_start") for line in lines)
    assert handler.describe(print_plan=False) == plan
    assert capsys.readouterr().out == ""
