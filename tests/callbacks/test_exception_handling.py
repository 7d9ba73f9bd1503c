"""on_exception for any exception escaping train() / evaluate(), and the per-callback error
policy."""

from __future__ import annotations

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback


class Cleanup(TrainerCallback):
    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self.num_run_ends = 0

    def on_exception(self, trainer, exception, **kwargs):
        self.exceptions.append(exception)

    def on_training_run_end(self, trainer, **kwargs):
        self.num_run_ends += 1


def raising_at(event: str, exception: BaseException) -> TrainerCallback:
    def method(self, trainer, **kwargs):
        raise exception

    return type("Raiser", (TrainerCallback,), {event: method})()


def train(trainer, **kwargs) -> None:
    trainer.train(make_dataset(6), num_epochs=2, per_device_batch_size=2, **kwargs)


@pytest.mark.parametrize(
    "exception", [RuntimeError("broken"), KeyboardInterrupt(), MemoryError("out of memory")]
)
def test_on_exception_sees_any_exception_once_before_it_propagates(exception):
    cleanup = Cleanup()
    trainer = make_trainer(callbacks=[raising_at("on_train_step_end", exception), cleanup])
    with pytest.raises(type(exception)) as info:
        train(trainer)
    assert info.value is exception
    assert cleanup.exceptions == [exception]
    assert cleanup.num_run_ends == 0


def test_on_exception_fires_for_hooks_and_for_evaluate_inside_train():
    class EvaluatingCallback(TrainerCallback):
        def on_train_epoch_end(self, trainer, **kwargs):
            trainer.evaluate(make_dataset(4))  # its error reaches train(): reported once

    cleanup = Cleanup()
    failing = raising_at("on_eval_step_end", ValueError("bad eval"))
    trainer = make_trainer(callbacks=[EvaluatingCallback(), failing, cleanup])
    with pytest.raises(ValueError, match="bad eval"):
        train(trainer)
    assert [str(error) for error in cleanup.exceptions] == ["bad eval"]

    cleanup = Cleanup()
    failing = raising_at("on_eval_step_end", ValueError("bad eval"))
    trainer = make_trainer(callbacks=[failing, cleanup])
    with pytest.raises(ValueError):
        trainer.evaluate(make_dataset(4))
    assert len(cleanup.exceptions) == 1


def test_stop_training_error_is_not_an_exception_to_clean_up_after():
    cleanup = Cleanup()
    trainer = make_trainer(
        callbacks=[raising_at("on_train_step_end", StopTrainingError()), cleanup]
    )
    train(trainer)
    assert cleanup.exceptions == []
    assert cleanup.num_run_ends == 1


def test_a_failing_cleanup_does_not_hide_the_original_exception():
    trainer = make_trainer(
        callbacks=[
            raising_at("on_train_step_end", RuntimeError("original")),
            raising_at("on_exception", OSError("cleanup failed")),
        ]
    )
    with (
        pytest.warns(RuntimeWarning, match="OSError in on_exception while handling RuntimeError"),
        pytest.raises(RuntimeError, match="original"),
    ):
        train(trainer)


class FlakyLogger(TrainerCallback):
    error_policy = "warn"

    def __init__(self) -> None:
        self.num_calls = 0

    def on_train_step_end(self, trainer, **kwargs):
        self.num_calls += 1
        if self.num_calls == 2:
            raise ConnectionError("tracking server unreachable")

    def on_train_epoch_end(self, trainer, **kwargs):
        self.num_calls += 100


def test_a_warn_policy_callback_warns_once_and_is_disabled():
    logger, cleanup = FlakyLogger(), Cleanup()
    trainer = make_trainer(callbacks=[logger, cleanup])
    with pytest.warns(RuntimeWarning) as warnings_raised:
        train(trainer)
    messages = [str(warning.message) for warning in warnings_raised]
    assert messages == [
        "Callback FlakyLogger raised ConnectionError: tracking server unreachable in "
        "'on_train_step_end'; it is disabled from now on (its error_policy is 'warn')."
    ]
    assert logger.num_calls == 2  # no further event of any kind
    assert cleanup.num_run_ends == 1  # the others carried on
    assert "disabled: FlakyLogger" in trainer.callback_handler.describe(print_plan=False)


def test_the_default_policy_raises_and_an_unknown_policy_is_rejected():
    class Strict(FlakyLogger):
        error_policy = "raise"

    with pytest.raises(ConnectionError):
        train(make_trainer(callbacks=[Strict()]))

    class Unknown(FlakyLogger):
        error_policy = "ignore"

    with pytest.raises(ValueError, match="error_policy must be 'raise' or 'warn'"):
        make_trainer(callbacks=[Unknown()])
