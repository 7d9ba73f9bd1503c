"""The scripts in examples/ run for real, briefly, and do what they say.

Each example is imported from its file and its ``main()`` called with a short command
line. The examples import their shared helpers (``digits``, ``metrics``) as a script run
from examples/ would, so that folder is put on ``sys.path`` for the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers.tiny import make_dataset
from torch import nn

from trainwright import TrainerCallback
from trainwright.checkpointing import MODEL_STATE_KEY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def load_example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def test_train_digits_reaches_high_test_accuracy_and_saves_the_best_model(load_example, tmp_path):
    train_digits = load_example("train_digits")

    summary = train_digits.main(["--num-epochs", "30", "--output-dir", str(tmp_path / "run")])

    assert summary["test_accuracy"] >= 0.90
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 30
    checkpoint_path = Path(summary["checkpoint_path"])
    assert checkpoint_path == tmp_path / "run" / "best_model.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    # The saved model is the one with the lowest validation loss.
    assert checkpoint["epoch"] == summary["best_epoch"]
    assert checkpoint["eval_loss_epoch"] == pytest.approx(summary["best_eval_loss"])
    model = train_digits.make_classifier()
    model.load_state_dict(checkpoint[MODEL_STATE_KEY])
    # The run's metrics plot: a real, non-empty PNG.
    plot = Path(summary["plot_path"]).read_bytes()
    assert plot.startswith(b"\x89PNG\r\n\x1a\n") and len(plot) > 10_000


def test_train_digits_logged_to_a_file_has_one_readable_line_per_epoch(tmp_path):
    # As `python examples/train_digits.py > log.txt 2>&1`: no progress-bar frames.
    log_path = tmp_path / "log.txt"
    command = [sys.executable, str(EXAMPLES / "train_digits.py"), "--num-epochs", "3"]
    with log_path.open("w") as log:
        subprocess.run(
            [*command, "--output-dir", str(tmp_path / "run")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # as the fixture above, for speed
            check=True,
            timeout=300,
        )
    log_text = log_path.read_text()
    assert "\r" not in log_text
    epoch_lines = [line for line in log_text.splitlines() if re.match(r"epoch \d+: [a-z]", line)]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1", "epoch 2", "epoch 3"]
    for line in epoch_lines:  # e.g. epoch 1: accuracy: 0.8942 | eval_loss_epoch: 0.4538 | ...
        assert re.fullmatch(
            r"epoch \d: accuracy: [\d.e+-]+ \| eval_loss_epoch: [\d.e+-]+ \| "
            r"train_loss_epoch: [\d.e+-]+",
            line,
        ), line


def test_metrics_callback_records_accuracy_and_confusion_matrix(load_example):
    metrics_callback = load_example("metrics_callback")

    history = metrics_callback.main(["--num-epochs", "2"])

    accuracies = history.get_metric_values("accuracy")
    confusion_matrices = history.get_metric_values("confusion_matrix")
    assert len(accuracies) == len(confusion_matrices) == 2
    num_validation_samples = len(metrics_callback.load_digits_splits().validation)
    for accuracy, confusion_matrix in zip(accuracies, confusion_matrices):
        assert confusion_matrix.shape == (10, 10)
        # Every validation sample is counted once, and the diagonal holds the correct ones.
        assert confusion_matrix.sum().item() == num_validation_samples
        assert accuracy == pytest.approx(confusion_matrix.trace().item() / num_validation_samples)
    assert accuracies[-1] > 0.5


def test_custom_event_reaches_the_callback_for_every_batch(load_example):
    custom_event = load_example("custom_event")

    result = custom_event.main(["--num-epochs", "1"])

    assert result["num_batches_checked"] > 0
    assert result["num_batches_checked"] == result["num_train_batches"]


def test_custom_event_callback_rejects_a_short_last_batch(load_example):
    custom_event = load_example("custom_event")
    model = nn.Linear(4, 3)
    trainer = custom_event.BatchCheckingTrainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=[custom_event.CheckBatchShapesCallback(num_features=4)],
    )

    # 10 samples in batches of 4 leave a last batch of 2 when it is not dropped.
    with pytest.raises(ValueError, match=r"shape \(4, 4\).*got \(2, 4\)"):
        trainer.train(make_dataset(num_samples=10), num_epochs=1, per_device_batch_size=4)


class _Preempt(TrainerCallback):
    """Sends this process a SIGTERM after the second step, as a cluster scheduler would."""

    def on_train_step_end(self, trainer, step, **kwargs):
        if step == 1:
            signal.raise_signal(signal.SIGTERM)


def test_train_digits_exits_non_zero_after_an_interruption(load_example, tmp_path, capsys):
    train_digits = load_example("train_digits")
    argv = ["--num-epochs", "2", "--output-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        train_digits.main(argv, extra_callbacks=[_Preempt()])
    assert exit_info.value.code == 143  # 128 + SIGTERM, as a shell reports a killed job
    assert "Interrupted by SIGTERM" in capsys.readouterr().out
