"""RunHistory: recording, reading, prefixes and epochs."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import make_dataset, make_trainer

from trainwright import InMemoryRunHistory, RunHistory, StopTrainingError, TrainerCallback
from trainwright.tracking import MetricNotFoundError, format_metric_value


def test_record_and_read():
    history = InMemoryRunHistory()
    history.update_metric("loss", 1.0)
    history.update_metric("loss", 0.5)
    assert history.get_metric_values("loss") == [1.0, 0.5]
    assert history.get_latest_metric("loss") == 0.5
    assert history.get_metric_names() == {"loss"}
    history.get_metric_values("loss").append(3)  # a copy: the history is unchanged
    assert history.get_metric_values("loss") == [1.0, 0.5]


def test_reading_an_unknown_metric_raises_listing_the_recorded_ones_and_creates_nothing():
    history = InMemoryRunHistory()
    history.update_metric("train_loss_epoch", 1.0)
    history.update_metric("accuracy", 0.5)
    for read in (history.get_metric_values, history.get_latest_metric, history.delete_metric):
        with pytest.raises(
            MetricNotFoundError, match="Recorded metrics: accuracy, train_loss_epoch"
        ):
            read("eval_loss")
    assert history.get_metric_names() == {"train_loss_epoch", "accuracy"}
    with pytest.raises(KeyError):  # also a KeyError, for code that expects one
        InMemoryRunHistory().get_latest_metric("x")


def test_delete_epoch_and_reset():
    history = InMemoryRunHistory()
    assert history.current_epoch == 1
    history.update_metric("a", 1)
    history.increment_epoch()
    assert history.current_epoch == 2
    history.delete_metric("a")
    assert history.get_metric_names() == set()
    history.update_metric("b", 2)
    history.reset()
    assert history.get_metric_names() == set()
    assert history.current_epoch == 1


def test_metric_name_prefix():
    history = InMemoryRunHistory()
    history.set_metric_name_prefix("ema_model_")
    history.update_metric("eval_loss_epoch", 0.1)
    history.set_metric_name_prefix()
    with history.metric_name_prefix_as("val_"):
        assert history.metric_name_prefix == "val_"
        history.update_metric("accuracy", 0.9)
    history.update_metric("accuracy", 0.8)
    assert history.get_metric_names() == {"ema_model_eval_loss_epoch", "val_accuracy", "accuracy"}


def test_state_round_trip():
    history = InMemoryRunHistory()
    history.update_metric("a", 1.5)
    history.increment_epoch()
    restored = InMemoryRunHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.get_metric_values("a") == [1.5]
    assert restored.current_epoch == 2


def test_run_history_is_abstract():
    with pytest.raises(TypeError):
        RunHistory()


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (1e-06, "1e-06"),
        (19469.574, "19470"),
        (9999.96, "10000"),  # rounds up to 5 digits: still no exponent
        (-123456.7, "-123500"),
        (0.0969366, "0.09694"),
        (0.75, "0.75"),
        (0.0001, "0.0001"),
        (0.0, "0"),
        (12, "12"),
        (2.5e17, "2.5e+17"),
        (float("nan"), "nan"),
        (torch.tensor(0.125), "0.125"),
    ],
)
def test_metric_values_print_to_four_significant_digits(value, printed):
    assert format_metric_value(value) == printed


def test_format_metric_value_takes_a_number_of_digits():
    assert format_metric_value(3.14159265, significant_digits=2) == "3.1"


def test_current_epoch_is_progress_epoch_plus_one_plus_the_epochs_kept_from_earlier_runs(tmp_path):
    class Epochs(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []  # (progress.epoch, current_epoch)

        def on_training_run_epoch_end(self, trainer, **kwargs):
            self.seen.append((trainer.progress.epoch, trainer.run_history.current_epoch))
            if len(self.seen) == 4:  # the 2nd epoch of the 2nd train(): save, then stop
                trainer.save_training_state(tmp_path / "state")
                raise StopTrainingError("interrupted")

    epochs = Epochs()
    trainer = make_trainer(callbacks=[epochs])
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=4)
    trainer.train(make_dataset(8), num_epochs=3, per_device_batch_size=4, reset_run_history=False)
    assert epochs.seen == [(0, 1), (1, 2), (0, 3), (1, 4)]
    resumed = Epochs()
    make_trainer(callbacks=[resumed]).train(
        make_dataset(8), num_epochs=3, per_device_batch_size=4, resume_from=tmp_path / "state"
    )
    assert resumed.seen == [(2, 5)]  # both continue after a resume
