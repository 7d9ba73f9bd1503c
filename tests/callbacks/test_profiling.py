"""Profiling callbacks: time per callback and event, per step, and the table at the end."""

from __future__ import annotations

import time

from helpers.tiny import make_dataset, make_trainer

from trainwright import TrainerCallback

SLEEP_S = 0.02


class Slow(TrainerCallback):
    def on_train_epoch_end(self, trainer, **kwargs):
        time.sleep(SLEEP_S)


class Fast(TrainerCallback):
    def __init__(self) -> None:
        self.num_steps = 0

    def on_train_step_end(self, trainer, **kwargs):
        self.num_steps += 1


def test_the_table_attributes_a_slow_callback_and_counts_every_call(capsys):
    fast = Fast()
    trainer = make_trainer(callbacks=[fast, Slow()], profile_callbacks=True)
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=2)
    profiler = trainer.callback_handler.profiler
    assert profiler.timings[("Slow", "on_train_epoch_end")][0] == 2
    assert profiler.timings[("Slow", "on_train_epoch_end")][1] >= 2 * SLEEP_S
    assert profiler.timings[("Fast", "on_train_step_end")][0] == fast.num_steps == 8
    assert profiler.num_steps == 8
    assert 0 < profiler.step_callback_seconds < profiler.step_seconds

    printed = capsys.readouterr().out
    report = profiler.report()
    assert report in printed
    rows = report.splitlines()
    assert rows[0].startswith("Callback profile")
    assert rows[2].split()[:3] == ["Slow", "on_train_epoch_end", "2"]  # the costliest first
    assert rows[3].split()[:3] == ["Fast", "on_train_step_end", "8"]
    assert rows[-1].startswith("training steps: 8, ")


def test_profiling_is_off_by_default_and_adds_nothing_to_the_table():
    fast = Fast()
    handler = make_trainer(callbacks=[fast]).callback_handler
    assert handler.profiler is None
    assert handler._dispatch["on_train_step_end"] == (fast.on_train_step_end,)
    assert handler._dispatch["on_train_step_start"] == ()
