"""Faults around training states: kills at every file-system call of a save, damaged files,
failing storage and the leftovers of interrupted saves and prunes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from helpers import resume_job

from trainwright import StopTrainingError, TrainerCallback
from trainwright.callbacks import SaveBestModelCallback, SaveTrainingStateCallback
from trainwright.checkpointing import (
    InvalidTrainingStateError,
    find_latest_training_state,
    verify_training_state,
)

CAMPAIGN = Path(__file__).parent / "helpers" / "fault_campaign.py"
#: ``all`` tries every file-system call of the job's saves, before and after, and 20 kills at
#: random moments (a few minutes); a number, that many kill points.
TRIALS = os.environ.get("TRAINWRIGHT_FAULT_TRIALS", "20")
COMPARED = ["weights", "history", "current_epoch", "lr", "steps_seen", "best_value", "best_model"]


def test_killed_at_any_file_system_call_of_a_save_the_restart_continues_exactly(tmp_path):
    report_file = tmp_path / "report.json"
    random_kills = "20" if TRIALS == "all" else "4"
    options = ["--trials", TRIALS, "--random-kills", random_kills]
    subprocess.run(
        [sys.executable, str(CAMPAIGN), str(report_file), *options],
        check=True,
        timeout=3600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    report = json.loads(report_file.read_text())
    trials = report["trials"]
    failed = [t for t in trials if t["problems"] or (t["kill"][0] == "call" and not t["killed"])]
    assert not failed, json.dumps(failed, indent=1)
    # Every kind of save was hit: a prune, the re-save between its two renames, a checkpoint.
    calls = {tuple(t["call"]) for t in trials if t["kill"][0] == "call"}
    names = " | ".join(" ".join(call) for call in calls)
    assert ".removing" in names and ".previous" in names and "best.pt" in names
    resave = report["published"][-1][0]  # the rename of the re-saved state into place
    assert ["call", resave, "before"] in [t["kill"] for t in trials]


# ------------------------------------------------------------------------------------------------
# Damaged states: verified before use, the newest valid one used, clear errors otherwise
# ------------------------------------------------------------------------------------------------


class StopAtUpdate(TrainerCallback):
    order = 100

    def __init__(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def on_train_step_end(self, trainer, **kwargs):
        if trainer.progress.num_update_steps == self.num_updates:
            raise StopTrainingError("simulated interruption")


class ResumedAt(TrainerCallback):
    """Records where the run starts, then (when ``abort``) ends it before any step."""

    def __init__(self, abort: bool = True) -> None:
        self.abort = abort
        self.updates = None

    def on_training_run_start(self, trainer, **kwargs):
        self.updates = trainer.progress.num_update_steps
        if self.abort:
            raise _Aborted


class _Aborted(Exception):
    pass


@pytest.fixture(scope="module")
def reference() -> dict:
    trainer, dataset = resume_job.build()
    resume_job.train(trainer, dataset)
    return resume_job.summary(trainer, dataset)


@pytest.fixture(scope="module")
def saved_states(tmp_path_factory) -> Path:
    """``state-000000002`` and ``state-000000004``, saved by a run stopped after update 4."""
    save_dir = tmp_path_factory.mktemp("saved") / "states"
    trainer, dataset = resume_job.build(save_dir, extra_callbacks=[StopAtUpdate(4)])
    resume_job.train(trainer, dataset)
    assert sorted(p.name for p in save_dir.iterdir()) == ["state-000000002", "state-000000004"]
    return save_dir


@pytest.fixture
def states(saved_states, tmp_path) -> Path:
    copy = tmp_path / "states"
    shutil.copytree(saved_states, copy)
    return copy


def resume(save_dir, resume_from="latest", abort=True, **build_kwargs):
    """Resumes the job; returns (update resumed at, summary or None when aborted)."""
    resumed_at = ResumedAt(abort)
    trainer, dataset = resume_job.build(save_dir, extra_callbacks=[resumed_at], **build_kwargs)
    try:
        resume_job.train(trainer, dataset, resume_from=resume_from)
    except _Aborted:
        return resumed_at.updates, None
    return resumed_at.updates, resume_job.summary(trainer, dataset)


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {
    "missing": lambda path: path.unlink(),
    "one bit flipped": flip_a_bit,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
}
STATE_FILES = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state_0.pt"]


# A flipped bit in the manifest's JSON text may read as another file's checksum: not tried.
@pytest.mark.parametrize(
    "file_name,damage",
    [(name, damage) for name in STATE_FILES for damage in DAMAGES]
    + [("manifest.json", "missing"), ("manifest.json", "truncated")],
)
def test_a_damaged_file_is_named_and_the_previous_valid_state_used(states, file_name, damage):
    newest = states / "state-000000004"
    DAMAGES[damage](newest / file_name)

    with pytest.raises(InvalidTrainingStateError, match=rf"{file_name}.*state-000000004"):
        resume(states, resume_from=newest)
    with pytest.warns(RuntimeWarning, match=rf"Skipping.*state-000000004.*{file_name}"):
        resumed_at, _ = resume(states, resume_from=states)
    assert resumed_at == 2


def test_a_flipped_weight_bit_falls_back_and_the_run_still_continues_exactly(states, reference):
    flip_a_bit(states / "state-000000004" / "model.safetensors")
    with pytest.warns(RuntimeWarning, match="model.safetensors.*checksum"):
        resumed_at, summary = resume(states, abort=False)
    assert resumed_at == 2
    assert {key: summary[key] for key in COMPARED} == {key: reference[key] for key in COMPARED}


def test_when_no_state_is_valid_resume_fails_clearly_instead_of_starting_afresh(states):
    (states / "state-000000004" / "random_states_0.pkl").unlink()
    flip_a_bit(states / "state-000000002" / "optimizer.bin")
    with (
        warnings.catch_warnings(record=True),
        pytest.raises(InvalidTrainingStateError, match=r"None of the 2.*random_states_0"),
    ):
        resume(states)


def test_load_training_state_verifies_the_state_too(states):
    flip_a_bit(states / "state-000000004" / "optimizer.bin")
    trainer, _ = resume_job.build()
    before = [p.detach().clone() for p in trainer.get_model().parameters()]
    with pytest.raises(InvalidTrainingStateError, match=r"optimizer\.bin.*checksum"):
        trainer.load_training_state(states / "state-000000004")
    for parameter, original in zip(trainer.get_model().parameters(), before):
        assert torch.equal(parameter, original)


def test_a_state_without_a_manifest_is_not_used(states):
    (states / "state-000000004" / "manifest.json").unlink()
    with pytest.raises(InvalidTrainingStateError, match=r"manifest\.json is missing"):
        resume(states, resume_from=states / "state-000000004")


def test_the_manifest_lists_every_file_of_a_state_with_its_size_and_sha256(saved_states):
    state = saved_states / "state-000000004"
    manifest = json.loads((state / "manifest.json").read_text())
    files = sorted(p.name for p in state.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files == sorted(STATE_FILES)
    for name, entry in manifest["files"].items():
        data = (state / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------------------------------------
# Re-saving a state of the same name: killed between the two renames
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("named", [False, True], ids=["latest", "the state by name"])
def test_a_re_save_killed_between_its_renames_resumes_from_the_moved_state(states, named):
    # What a SIGKILL between the renames leaves: the old state moved aside, the new one
    # complete but still staged.
    newest = states / "state-000000004"
    shutil.copytree(newest, states / "state-000000004.incomplete")
    newest.rename(states / "state-000000004.previous")
    shutil.rmtree(states / "state-000000002")  # max_checkpoints=1: the only state
    resumed_at, _ = resume(states, newest if named else "latest", max_checkpoints=1)
    assert resumed_at == 4  # not a fresh start
    assert sorted(p.name for p in states.iterdir()) == ["state-000000004"]
    verify_training_state(newest)


# ------------------------------------------------------------------------------------------------
# Storage errors
# ------------------------------------------------------------------------------------------------


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_step_start(self, trainer, **kwargs):
        self.steps += 1


@pytest.mark.parametrize("callback", ["SaveTrainingStateCallback", "SaveBestModelCallback"])
def test_an_unwritable_save_location_fails_before_the_first_step(tmp_path, callback):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a directory should be")
    saver = (
        SaveTrainingStateCallback(blocker / "states", save_every_n_steps=2)
        if callback == "SaveTrainingStateCallback"
        else SaveBestModelCallback(blocker / "best.pt")
    )
    steps = CountSteps()
    trainer, dataset = resume_job.build(extra_callbacks=[steps, saver])
    with pytest.raises(OSError, match=rf"{callback}.*a-file.*cannot be written"):
        resume_job.train(trainer, dataset)
    assert steps.steps == 0


def test_a_prune_that_fails_warns_and_the_run_goes_on(tmp_path, monkeypatch, reference):
    real_rmtree = shutil.rmtree

    def read_only_states(path, *args, **kwargs):
        if "state-000000002" in str(path):  # the oldest state cannot be deleted
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", read_only_states)
    save_dir = tmp_path / "states"
    trainer, dataset = resume_job.build(save_dir, max_checkpoints=1)
    with pytest.warns(RuntimeWarning, match=r"Could not remove.*state-000000002"):
        resume_job.train(trainer, dataset)
    summary = resume_job.summary(trainer, dataset)
    assert {key: summary[key] for key in COMPARED} == {key: reference[key] for key in COMPARED}
    # Pruning renamed it aside first: no partial directory keeps a state's name.
    names = sorted(p.name for p in save_dir.iterdir())
    assert names == ["state-000000002.removing", "state-000000009"]
    assert find_latest_training_state(save_dir).name == "state-000000009"


def test_a_full_disk_is_named_and_the_previous_state_kept(states, monkeypatch):
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if "optimizer.bin" in str(f):
            raise OSError(errno.ENOSPC, "write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    trainer, dataset = resume_job.build(states)
    with pytest.raises(OSError, match=r"No space left on device.*previous state is kept"):
        resume_job.train(trainer, dataset, resume_from="latest")
    assert sorted(p.name for p in states.iterdir()) == ["state-000000002", "state-000000004"]
    verify_training_state(states / "state-000000004")


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_file(tmp_path, monkeypatch):
    trainer, dataset = resume_job.build()
    resume_job.train(trainer, dataset)
    path = tmp_path / "model.pt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", disk_full)
    full = types.SimpleNamespace(total=1 << 30, used=1 << 30, free=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)  # torch's error has no errno
    with pytest.raises(OSError, match=r"No space left on device.*'model\.pt'"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def _mount_tiny_tmpfs(directory: Path, size: str) -> bool:
    directory.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
        )
    except FileNotFoundError:
        return False
    return mounted.returncode == 0


def test_a_really_full_disk_is_named_and_the_previous_state_kept(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tiny_tmpfs(disk, "52k"):
        pytest.skip("mounting a tmpfs needs root; test_a_full_disk_is_named_... covers it")
    try:
        trainer, dataset = resume_job.build(disk / "states", best_model_path=tmp_path / "b.pt")
        with pytest.raises(OSError, match=r"No space left on device.*previous state is kept"):
            resume_job.train(trainer, dataset)  # room for one state only
        assert sorted(p.name for p in (disk / "states").iterdir()) == ["state-000000002"]
        verify_training_state(disk / "states" / "state-000000002")
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # even if a file is open


# ------------------------------------------------------------------------------------------------
# Leftovers of killed saves and prunes
# ------------------------------------------------------------------------------------------------


def make_leftovers(states: Path, best_model_path: Path) -> None:
    """What killed saves, re-saves, prunes and checkpoint writes leave behind."""
    shutil.copytree(states / "state-000000004", states / "state-000000004.previous")
    shutil.copytree(states / "state-000000002", states / "state-000000001.removing")
    (states / "state-000000001.removing" / "model.safetensors").unlink()  # half deleted
    (states / "state-000000006.incomplete").mkdir()
    (states / "state-000000006.incomplete" / "optimizer.bin").write_bytes(b"partial")
    best_model_path.parent.mkdir()
    (best_model_path.parent / f".{best_model_path.name}.k3j9x2aa.tmp").write_bytes(b"part")


def test_a_resume_removes_every_leftover(states, tmp_path):
    best = tmp_path / "best" / "best.pt"
    make_leftovers(states, best)
    resumed_at, _ = resume(states, best_model_path=best)
    assert resumed_at == 4
    assert sorted(p.name for p in states.iterdir()) == ["state-000000002", "state-000000004"]
    assert list(best.parent.iterdir()) == []


def test_the_next_save_removes_every_leftover_and_prunes_only_states(states, tmp_path):
    # A run that does not resume: its saves clean up (and re-save states 2 and 4).
    best = tmp_path / "best" / "best.pt"
    make_leftovers(states, best)
    trainer, dataset = resume_job.build(
        states, extra_callbacks=[StopAtUpdate(6)], best_model_path=best, max_checkpoints=2
    )
    resume_job.train(trainer, dataset)
    assert sorted(p.name for p in states.iterdir()) == ["state-000000004", "state-000000006"]
    assert [p.name for p in best.parent.iterdir()] == ["best.pt"]


# ------------------------------------------------------------------------------------------------
# State names
# ------------------------------------------------------------------------------------------------


def test_only_the_library_s_state_names_are_read_as_update_counts(states):
    shutil.copytree(states / "state-000000002", states / "state-000000001-backup2")
    shutil.copytree(states / "state-000000002", states / "my-state-000000009")
    assert find_latest_training_state(states).name == "state-000000004"
    resumed_at, _ = resume(states, resume_from=states)
    assert resumed_at == 4
