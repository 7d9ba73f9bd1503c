"""Plots of the run history (matplotlib, Agg rendering) and SavePlotCallback."""

from __future__ import annotations

import sys

import pytest
from helpers.tiny import make_dataset, make_trainer

from trainwright import InMemoryRunHistory
from trainwright.callbacks import SavePlotCallback

pytest.importorskip("matplotlib")


def history_with(**metrics):
    history = InMemoryRunHistory()
    for name, values in metrics.items():
        for value in values:
            history.update_metric(name, value)
    return history


def test_plot_draws_losses_on_shared_axes_and_other_metrics_apart():
    history = history_with(
        train_loss_epoch=[1.0, 0.8, 0.6],
        eval_loss_epoch=[1.1, 0.9, 0.85],
        accuracy=[0.5, 0.6, 0.7],
        note=["a", "b", "c"],  # not numeric: left out
    )
    figure = history.plot()
    visible = [axes for axes in figure.axes if axes.get_visible()]
    assert len(visible) == 2
    loss_axes, accuracy_axes = visible
    assert sorted(line.get_label() for line in loss_axes.get_lines()) == [
        "eval_loss_epoch",
        "train_loss_epoch",
    ]
    (accuracy_line,) = accuracy_axes.get_lines()
    assert list(accuracy_line.get_xdata()) == [1, 2, 3]
    assert list(accuracy_line.get_ydata()) == [0.5, 0.6, 0.7]


def test_plot_without_numeric_metrics_says_so():
    with pytest.raises(ValueError, match="No numeric metric to plot"):
        history_with(note=["a"]).plot()


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match="pip install matplotlib"):
        history_with(loss=[1.0]).plot()


def test_save_plot_callback_writes_a_png_at_the_end_of_training(tmp_path):
    path = tmp_path / "plots" / "history.png"
    trainer = make_trainer(callbacks=[SavePlotCallback(path)])
    trainer.train(
        make_dataset(8), num_epochs=2, eval_dataset=make_dataset(4), per_device_batch_size=4
    )
    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 1000


def test_a_plot_renders_itself_as_png_for_jupyter():
    # IPython shows a cell's value through _repr_png_ (no pyplot, no %matplotlib inline)
    png = history_with(train_loss_epoch=[1.0, 0.5]).plot()._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
