"""Exact resume from training states, atomic saves, and preemption by signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import resume_job
from helpers.tiny import RecorderCallback, make_dataset, make_trainer

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import SaveTrainingStateCallback

JOB = Path(resume_job.__file__)


def run_job(*arguments: str, timeout: float = 120) -> dict:
    output = arguments[0]
    subprocess.run(
        [sys.executable, str(JOB), *arguments],
        check=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(Path(output).read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The reference: the whole job in one process, with no saving at all."""
    output = tmp_path_factory.mktemp("reference") / "out.json"
    return run_job(str(output))


# (epoch, step) whose end the state is saved at: 6 batches per epoch, accumulation 2, so
# updates happen after steps 1, 3 and 5.
@pytest.mark.parametrize(
    "epoch,step,case",
    [(1, 5, "end of an epoch's last step"), (2, 3, "mid-epoch"), (2, 2, "mid accumulation window")],
)
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, uninterrupted, epoch, step, case):
    trainer, dataset = resume_job.build(
        extra_callbacks=[resume_job.StopAfter(epoch, step, tmp_path)]
    )
    resume_job.train(trainer, dataset)
    resumed = run_job(str(tmp_path / "out.json"), "--resume-from", str(tmp_path / "state"))
    resume_job.assert_same_run(resumed, uninterrupted)
    # No forward pass and no data loading for the batches done before the save: the
    # resumed process loads only the samples of the steps after it (4 per batch, the last
    # batch of each epoch 2) and the eval set (8 per epoch).
    batches_left = [0, 0, 0]
    batches_left[epoch - 1] = 6 - (step + 1)
    for later in range(epoch, 3):
        batches_left[later] = 6
    train_samples = sum(4 * left - (2 if left else 0) for left in batches_left)
    eval_epochs = 3 - epoch + 1
    assert resumed["samples_loaded"] == train_samples
    # (+ 1: train()'s check of the first evaluation batch)
    assert resumed["forwards"] == sum(batches_left) + 2 * eval_epochs + 1


def test_resume_at_an_epoch_boundary_after_the_epoch_end(tmp_path, uninterrupted):
    class StopAtEpochEnd(resume_job.TrainerCallback):
        order = 100

        def on_training_run_epoch_end(self, trainer, **kwargs):
            if trainer.run_history.current_epoch == 2:
                raise StopTrainingError("after two epochs")

    save_dir = tmp_path / "states"
    trainer, dataset = resume_job.build(
        extra_callbacks=[
            SaveTrainingStateCallback(save_dir, save_every_n_epochs=1, save_at_end=False),
            StopAtEpochEnd(),
        ]
    )
    resume_job.train(trainer, dataset)
    assert sorted(p.name for p in save_dir.iterdir()) == ["state-000000003", "state-000000006"]
    resumed = run_job(str(tmp_path / "out.json"), "--resume-from", str(save_dir))
    resume_job.assert_same_run(resumed, uninterrupted)
    assert resumed["forwards"] == 6 + 2 + 1  # + 1: the check of the first eval batch


def test_latest_with_max_checkpoints(tmp_path, uninterrupted):
    save_dir = tmp_path / "states"
    callback = SaveTrainingStateCallback(
        save_dir, save_every_n_steps=2, max_checkpoints=2, save_at_end=False
    )
    trainer, dataset = resume_job.build(
        extra_callbacks=[callback, resume_job.StopAfter(2, 3, tmp_path)]
    )
    resume_job.train(trainer, dataset)
    # updates so far: 3 in epoch 1, 2 in epoch 2 -> saves after updates 2 and 4
    assert sorted(p.name for p in save_dir.iterdir()) == ["state-000000002", "state-000000004"]
    trainer, dataset = resume_job.build(
        extra_callbacks=[
            SaveTrainingStateCallback(
                save_dir, save_every_n_steps=2, max_checkpoints=2, save_at_end=False
            )
        ]
    )
    resume_job.train(trainer, dataset, resume_from="latest")
    resume_job.assert_same_run(resume_job.summary(trainer, dataset), uninterrupted)


def test_a_process_killed_mid_save_leaves_the_previous_state_loadable(tmp_path, uninterrupted):
    save_dir = tmp_path / "states"
    output = tmp_path / "out.json"
    ready = Path(str(output) + ".ready")
    process = subprocess.Popen(
        [sys.executable, str(JOB), str(output), "--save-dir", str(save_dir), "--block-in-save"]
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert ready.exists(), "the job never reached its second save"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    names = sorted(p.name for p in save_dir.iterdir())
    assert names == ["state-000000002", "state-000000004.incomplete"]
    resumed = run_job(str(tmp_path / "resumed.json"), "--resume-from", str(save_dir))
    resume_job.assert_same_run(resumed, uninterrupted)


def test_sigterm_mid_epoch_saves_and_the_rerun_continues_exactly(tmp_path, uninterrupted):
    save_dir = tmp_path / "states"
    output = tmp_path / "out.json"
    ready = Path(str(output) + ".ready")
    process = subprocess.Popen(
        [
            sys.executable,
            str(JOB),
            str(output),
            "--save-dir",
            str(save_dir),
            "--wait-for-signal",
            "2:2",
        ]
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0  # a clean exit
    interrupted = json.loads(output.read_text())
    assert interrupted["interrupt_signal"] == "SIGTERM"
    # step 2 of epoch 2 completes (mid accumulation window) and its state is saved
    assert "state-000000004" in {p.name for p in save_dir.iterdir()}
    resumed = run_job(
        str(tmp_path / "resumed.json"), "--save-dir", str(save_dir), "--resume-from", "latest"
    )
    resume_job.assert_same_run(resumed, uninterrupted)


def test_sigterm_to_the_process_group_with_workers_saves_and_the_rerun_continues_exactly(
    tmp_path, uninterrupted
):
    # What SLURM, systemd and `kill -TERM -PGID` do: every process of the job gets the
    # signal, the DataLoader workers (2 for training, 2 for evaluation, persistent) included.
    save_dir = tmp_path / "states"
    output = tmp_path / "out.json"
    ready = Path(str(output) + ".ready")
    command = [sys.executable, str(JOB), str(output), "--save-dir", str(save_dir)]
    process = subprocess.Popen(
        [*command, "--wait-for-signal", "2:2", "--num-workers", "2"],
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert ready.exists(), "the job never reached step 2 of epoch 2"
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=120) == 0  # a clean exit, no "worker exited unexpectedly"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert json.loads(output.read_text())["interrupt_signal"] == "SIGTERM"
    assert "state-000000004" in {p.name for p in save_dir.iterdir()}
    resumed = run_job(
        str(tmp_path / "resumed.json"), "--save-dir", str(save_dir), "--resume-from", "latest",
        "--num-workers", "2",
    )  # fmt: skip
    # The reference loads in the main process: with seeded batches, workers change nothing.
    resume_job.assert_same_run(resumed, uninterrupted)


def test_state_round_trip_in_process_restores_everything(tmp_path):
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    trainer.save_training_state(tmp_path / "state")
    weights = [p.detach().clone() for p in trainer.get_model().parameters()]
    optimizer_state = trainer.optimizer.state_dict()
    losses = trainer.run_history.get_metric_values("train_loss_epoch")
    trainer.train(make_dataset(8, seed=3), num_epochs=2, per_device_batch_size=2)
    assert trainer.run_history.get_metric_values("train_loss_epoch") != losses
    trainer.load_training_state(tmp_path / "state")
    for parameter, saved in zip(trainer.get_model().parameters(), weights):
        assert torch.equal(parameter, saved)
    assert trainer.run_history.get_metric_values("train_loss_epoch") == losses
    assert trainer.run_history.current_epoch == 2
    assert trainer.optimizer.state_dict()["param_groups"] == optimizer_state["param_groups"]


def saved_state(tmp_path) -> Path:
    trainer, dataset = resume_job.build(extra_callbacks=[resume_job.StopAfter(1, 3, tmp_path)])
    resume_job.train(trainer, dataset)
    return tmp_path / "state"


def test_bad_resume_inputs_fail_clearly_and_overwrite_nothing(tmp_path):
    state = saved_state(tmp_path)
    trainer, dataset = resume_job.build()
    before = [p.detach().clone() for p in trainer.get_model().parameters()]

    with pytest.raises(FileNotFoundError, match="No training state directory"):
        resume_job.train(trainer, dataset, resume_from=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No complete training state"):
        resume_job.train(trainer, dataset, resume_from=empty)
    with pytest.raises(ValueError, match="resume_from='latest' needs a SaveTrainingStateCallback"):
        resume_job.train(trainer, dataset, resume_from="latest")

    incomplete = tmp_path / "state-000000009.incomplete"
    incomplete.mkdir()
    with pytest.raises(ValueError, match="incomplete training state"):
        resume_job.train(trainer, dataset, resume_from=incomplete)

    corrupted = tmp_path / "corrupted"
    corrupted.mkdir()
    for file in state.iterdir():
        (corrupted / file.name).write_bytes(file.read_bytes())
    (corrupted / "trainer_state_0.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupted"):
        resume_job.train(trainer, dataset, resume_from=corrupted)

    other_model = make_trainer()
    with pytest.raises(ValueError, match=r"different model.*layers.0.weight"):
        other_model.train(
            make_dataset(22, num_features=6),
            num_epochs=3,
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            resume_from=state,
        )

    with pytest.raises(ValueError, match=r"per_device_batch_size.*4.*now 2"):
        trainer.train(
            dataset,
            num_epochs=3,
            per_device_batch_size=2,
            gradient_accumulation_steps=2,
            resume_from=state,
        )
    with pytest.raises(ValueError, match=r"train dataset length.*22.*now 10"):
        trainer.train(
            resume_job.CountingDataset(10),
            num_epochs=3,
            per_device_batch_size=4,
            gradient_accumulation_steps=2,
            resume_from=state,
        )
    for parameter, original in zip(trainer.get_model().parameters(), before):
        assert torch.equal(parameter, original)


def test_resume_refuses_another_optimizer_type_or_run_length(tmp_path):
    state = saved_state(tmp_path)  # AdamW, 3 epochs of 3 updates
    settings = dict(num_epochs=3, per_device_batch_size=4, gradient_accumulation_steps=2)
    trainer, dataset = resume_job.build()
    sgd = torch.optim.SGD(trainer.get_model().parameters(), lr=0.1)
    other = type(trainer)(trainer.get_model(), torch.nn.CrossEntropyLoss(), sgd, callbacks=())
    with pytest.raises(ValueError, match=r"optimizer=AdamW, now SGD.*Nothing was loaded"):
        other.train(dataset, **settings, resume_from=state)
    trainer, dataset = resume_job.build()
    before = [p.detach().clone() for p in trainer.get_model().parameters()]
    with pytest.raises(ValueError, match=r"num_epochs=3, now 2"):
        trainer.train(dataset, **{**settings, "num_epochs": 2}, resume_from=state)
    with pytest.raises(ValueError, match=r"num_update_steps=9, now 8"):
        trainer.train(dataset, **settings, max_num_train_steps=8, resume_from=state)
    for parameter, original in zip(trainer.get_model().parameters(), before):
        assert torch.equal(parameter, original)


class SendSignal(TrainerCallback):
    def __init__(self, signal_number, at_step, times=1):
        self.signal_number, self.at_step, self.times = signal_number, at_step, times
        self.interrupted_with = None

    def on_train_step_end(self, trainer, step, **kwargs):
        if step == self.at_step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signal_number)

    def on_training_interrupted(self, trainer, signal_name, **kwargs):
        self.interrupted_with = (signal_name, trainer.progress.num_batches_done)


def test_ctrl_c_finishes_the_step_and_returns_cleanly():
    sender = SendSignal(signal.SIGINT, at_step=2)
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[sender, recorder])
    previous_handler = signal.getsignal(signal.SIGINT)
    trainer.train(make_dataset(20), num_epochs=2, per_device_batch_size=2)
    assert trainer.interrupt_signal == "SIGINT"
    assert sender.interrupted_with == ("SIGINT", 3)
    events = [event for event, _ in recorder.events]
    assert events[-3:] == ["on_train_step_end", "on_training_interrupted", "on_training_run_end"]
    assert signal.getsignal(signal.SIGINT) is previous_handler  # handlers restored
    trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)  # trains again
    assert trainer.interrupt_signal is None


def test_a_second_ctrl_c_interrupts_at_once():
    trainer = make_trainer(callbacks=[SendSignal(signal.SIGINT, at_step=1, times=2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train(make_dataset(20), num_epochs=1, per_device_batch_size=2)


def test_a_checkpoint_file_as_resume_from_names_load_checkpoint(tmp_path):
    trainer = make_trainer()
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=4)
    trainer.save_checkpoint(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"training-state directory.*load_checkpoint") as error:
        trainer.train(make_dataset(8), num_epochs=1, resume_from=tmp_path / "model.pt")
    assert "model.pt" in str(error.value)


def test_a_resumed_run_says_where_it_resumed(tmp_path, capsys):
    sender = SendSignal(signal.SIGTERM, at_step=2)
    settings = dict(num_epochs=2, per_device_batch_size=2, resume_from="latest")
    first = make_trainer(callbacks=[SaveTrainingStateCallback(tmp_path), sender])
    first.train(make_dataset(10), **settings)
    assert first.interrupt_signal == "SIGTERM"
    capsys.readouterr()
    second = make_trainer(callbacks=[SaveTrainingStateCallback(tmp_path)])
    second.train(make_dataset(10), **settings)
    state = tmp_path / "state-000000003"
    assert f"Resumed from {str(state)!r} at epoch 1, update 3 (3 batches into the epoch)." in (
        capsys.readouterr().out
    )
