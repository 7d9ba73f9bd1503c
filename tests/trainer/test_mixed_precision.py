"""Mixed precision: updates skipped by the fp16 gradient scaler are counted, logged and do
not step the scheduler; bf16 on the CPU trains the digits example as well as fp32.

Accelerate gives no gradient scaler on the CPU (fp16 is GPU-only there), so the skip test
installs PyTorch's CPU ``GradScaler`` as the accelerator's ``scaler`` before the trainer
prepares the optimizer: Accelerate then scales the loss and steps through the scaler exactly
as with fp16 on a GPU. ``bench/gpu_check.py`` repeats the check with real fp16 on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState
from helpers.tiny import make_dataset, make_model
from torch import nn

from trainwright import Trainer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OVERFLOW_STEP = 1  # of the first epoch


class OverflowOnceTrainer(Trainer):
    """Scales the loss of one step so far up that its gradients overflow to inf."""

    def backward_step(self, loss: torch.Tensor) -> None:
        if (self.progress.epoch, self.progress.step) == (0, OVERFLOW_STEP):
            loss = loss * 1e38  # times the scaler's 2**16: inf in float32
        super().backward_step(loss)


def _train_with_scaler(trainer: Trainer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        trainer.accelerator.scaler = scaler  # before train() prepares the optimizer
    with warnings.catch_warnings():
        # PyTorch warns that the scaler patched optimizer.step; the order is right.
        warnings.filterwarnings(
            "ignore", message="Seems like `optimizer.step", category=UserWarning
        )
        trainer.train(
            make_dataset(12),
            num_epochs=2,
            per_device_batch_size=4,  # 3 updates per epoch
            create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
            train_dataloader_kwargs={"shuffle": False, "num_workers": 0},
        )


def _make_trainer() -> OverflowOnceTrainer:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return OverflowOnceTrainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=())


def test_an_update_skipped_by_the_gradient_scaler_is_counted_logged_and_not_scheduled(caplog):
    trainer = _make_trainer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with caplog.at_level(logging.INFO, logger="trainwright.trainer"):
        _train_with_scaler(trainer, scaler)

    progress = trainer.progress
    assert progress.num_update_steps == 6
    assert progress.num_scaler_skipped_updates == 1
    assert progress.num_skipped_updates == 0  # requested skips are counted apart
    assert trainer.scheduler.last_epoch == 5  # every update but the skipped one
    assert scaler.get_scale() == 2.0**15  # the scaler halved its scale after the overflow
    assert all(torch.isfinite(p).all() for p in trainer.get_model().parameters())
    messages = [r.getMessage() for r in caplog.records if r.name == "trainwright.trainer"]
    assert messages == [
        "The fp16 gradient scaler skipped 1 optimizer update(s) in epoch 1 (inf or NaN "
        "gradients; the scheduler was not stepped for them), 1 in this run; the loss scale "
        "is now 32768."
    ]


def test_without_a_scaler_every_update_steps_and_nothing_is_reported(caplog):
    trainer = _make_trainer()
    with caplog.at_level(logging.INFO, logger="trainwright.trainer"):
        _train_with_scaler(trainer, scaler=None)

    assert trainer.accelerator.scaler is None
    assert trainer.progress.num_scaler_skipped_updates == 0
    assert trainer.scheduler.last_epoch == 6
    # Without a scaler the huge loss is applied: the overflow test above is not vacuous.
    assert not all(torch.isfinite(p).all() for p in trainer.get_model().parameters())
    assert not [r for r in caplog.records if r.name == "trainwright.trainer"]


def test_bf16_on_the_cpu_trains_the_digits_example_within_2_points_of_fp32(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the example imports its helpers from there
    spec = importlib.util.spec_from_file_location(
        "example_train_digits", EXAMPLES / "train_digits.py"
    )
    train_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_digits)
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: a second thread only adds hand-offs (see test_examples)
    summaries = {}
    try:
        for precision in ("no", "bf16"):
            # Accelerate keeps one precision per process: start each run from a fresh state.
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
            argv = ["--num-epochs", "3", "--mixed-precision", precision]
            output_dir = str(tmp_path / precision)
            summaries[precision] = train_digits.main([*argv, "--output-dir", output_dir])
    finally:
        torch.set_num_threads(num_threads)

    fp32, bf16 = summaries["no"], summaries["bf16"]
    assert fp32["test_accuracy"] >= 0.9
    assert abs(bf16["test_accuracy"] - fp32["test_accuracy"]) <= 0.02
    assert bf16["test_loss"] != fp32["test_loss"]  # bf16 autocast was in effect
