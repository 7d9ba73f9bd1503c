"""The figure class of trainwright's plots; imported once matplotlib is known to be installed
(see `trainwright.plotting.require_matplotlib`)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

__all__ = ["InlineFigure"]


class InlineFigure(Figure):
    """A matplotlib `Figure` that Jupyter shows inline as a PNG image when it is the value
    of a cell (``trainer.run_history.plot()``), with no ``%matplotlib inline`` and no
    ``pyplot``: IPython displays any object with a ``_repr_png_`` method. Where IPython
    already draws matplotlib figures itself (after ``%matplotlib inline``), its own drawing is
    used; either way the figure appears once."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
