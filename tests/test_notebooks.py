"""trainwright in a Jupyter notebook, executed headlessly (nbclient, a real IPython kernel):
the run-history plot is an inline image, the progress bar draws without a warning, with
ipywidgets (the ``notebook`` extra) as a widget."""

from __future__ import annotations

import nbclient
import nbformat

TRAIN = """\
import warnings
warnings.simplefilter("always")  # show every warning, tqdm's included

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer

torch.manual_seed(0)
model = nn.Linear(4, 2)
trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
dataset = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
trainer.train(dataset, num_epochs=2, eval_dataset=dataset, per_device_batch_size=8);
"""


def run_notebook(cells: list[str], tmp_path) -> list[list[dict]]:
    """Runs ``cells`` in a fresh kernel; returns each cell's outputs."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return [cell.outputs for cell in notebook.cells]


def stream_text(outputs: list[dict], name: str) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def test_without_ipywidgets_the_plot_is_an_inline_image_and_tqdm_does_not_warn(tmp_path):
    _, train, plot = run_notebook(
        [
            'import sys\nsys.modules["ipywidgets"] = None  # as without the notebook extra',
            TRAIN,
            "trainer.run_history.plot()",
        ],
        tmp_path,
    )
    assert "Tqdm" not in stream_text(train, "stderr")  # no TqdmWarning
    assert "epoch 1" in stream_text(train, "stderr")  # tqdm's terminal bar, which Jupyter draws
    assert "epoch 2: eval_loss_epoch: " in stream_text(train, "stdout")
    (result,) = plot
    assert result["output_type"] == "execute_result"
    assert result["data"]["image/png"]  # shown as an image, not as "<Figure size ...>"


def test_with_ipywidgets_the_bar_is_a_widget(tmp_path):
    (train,) = run_notebook([TRAIN], tmp_path)
    assert "Tqdm" not in stream_text(train, "stderr")
    widgets = [o for o in train if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 4  # one bar per training and evaluation epoch
