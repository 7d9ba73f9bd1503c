"""Plots of a run history, drawn with matplotlib (an optional dependency, imported only when
a plot is asked for: ``pip install matplotlib`` or ``pip install "trainwright[plot]"``).

The figures are built as a ``matplotlib.figure.Figure`` directly, not with ``pyplot``: no
global figure state, no GUI backend needed, and nothing to close afterwards. In Jupyter, a
figure that is the value of a cell shows inline as an image, without ``%matplotlib inline``.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainwright.tracking import RunHistory

__all__ = ["plot_run_history", "require_matplotlib", "save_run_history_plot"]


def require_matplotlib() -> type:
    """Returns the class of trainwright's figures, a matplotlib ``Figure`` that Jupyter shows
    inline (`trainwright._inline_figure.InlineFigure`), or raises an ``ImportError`` that
    says how to install matplotlib."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ImportError(
            "Plotting a run history needs matplotlib, which is not installed: "
            'pip install matplotlib (or pip install "trainwright[plot]").'
        ) from None
    from trainwright._inline_figure import InlineFigure

    return InlineFigure


def _numeric_series(history: RunHistory, metric_names: Any) -> dict[str, list[float]]:
    names = sorted(history.get_metric_names()) if metric_names is None else list(metric_names)
    series = {}
    for name in names:
        values = history.get_metric_values(name)
        if values and all(_is_number(value) for value in values):
            series[name] = [float(value) for value in values]
    return series


def _is_number(value: Any) -> bool:
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return True
    return hasattr(value, "numel") and value.numel() == 1


def plot_run_history(history: RunHistory, metric_names: Any = None) -> Figure:
    """Draws every numeric metric of ``history`` against the epoch (the n-th value recorded).

    Metrics whose name contains ``"loss"`` (``train_loss_epoch``, ``eval_loss_epoch``, ...)
    share one set of axes, so training and evaluation losses can be compared; every other
    metric gets axes of its own. Metrics holding anything but numbers are left out.

    Args:
        history: the run history to draw.
        metric_names: the metrics to draw; default every numeric one.

    Returns:
        A matplotlib ``Figure``; save it with ``figure.savefig("run.png")``. As the last
        expression of a Jupyter cell it shows inline, as a PNG image.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if there is no numeric metric to draw.

    Example:
        ```python
        figure = plot_run_history(trainer.run_history)   # or trainer.run_history.plot()
        figure.savefig("history.png")
        ```
    """
    figure_class = require_matplotlib()
    series = _numeric_series(history, metric_names)
    if not series:
        recorded = ", ".join(sorted(history.get_metric_names())) or "none"
        raise ValueError(f"No numeric metric to plot (recorded metrics: {recorded}).")
    losses = [name for name in series if "loss" in name]
    panels = ([losses] if losses else []) + [[name] for name in series if name not in losses]
    num_columns = min(len(panels), 2)
    num_rows = math.ceil(len(panels) / num_columns)
    figure = figure_class(figsize=(6 * num_columns, 3.5 * num_rows), layout="constrained")
    axes_grid = figure.subplots(num_rows, num_columns, squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(panels):
            axes.set_visible(False)
            continue
        for name in panels[index]:
            values = series[name]
            axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        axes.set_xlabel("epoch")
        axes.set_title("loss" if panels[index] is losses else panels[index][0])
        axes.grid(alpha=0.3)
        if len(panels[index]) > 1 or panels[index] is losses:
            axes.legend()
    return figure


def save_run_history_plot(
    history: RunHistory, path: str | os.PathLike, metric_names: Any = None, dpi: int = 100
) -> None:
    """Draws `plot_run_history` and saves it to ``path`` (format from the suffix,
    e.g. ``.png`` or ``.pdf``); the directory is created.

    Example:
        ```python
        save_run_history_plot(trainer.run_history, "plots/history.png")
        ```
    """
    figure = plot_run_history(history, metric_names)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    figure.savefig(path, dpi=dpi)
