"""TorchProfilerCallback: traces for the scheduled steps, a table at the end, then idle."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer
from trainwright.callbacks import TorchProfilerCallback

NO_WORKERS = {"num_workers": 0, "persistent_workers": False}


def test_the_profiler_writes_a_trace_of_the_active_steps_and_prints_the_table(
    tmp_path, capsys
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    profiler = TorchProfilerCallback(tmp_path / "traces", wait=1, warmup=1, active=2, row_limit=5)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[profiler],
    )
    dataset = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    trainer.train(
        dataset, num_epochs=1, per_device_batch_size=8, train_dataloader_kwargs=NO_WORKERS
    )
    (trace,) = (tmp_path / "traces").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    profiler_steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep")}
    assert profiler_steps == {"ProfilerStep#2", "ProfilerStep#3"}  # after 1 wait + 1 warm-up
    assert any("addmm" in e.get("name", "") for e in events)  # the model's own operators
    assert profiler._profiler is None  # stopped once the active steps were recorded
    output = capsys.readouterr().out
    assert "Self CPU" in output and "aten::" in output


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"wait": -1}, "wait"), ({"active": 0}, "active"), ({"warmup": 1.5}, "warmup")],
)
def test_bad_schedules_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        TorchProfilerCallback(**kwargs)
