"""Kills the resume job at chosen moments and checks that its restart continues exactly.

    python tests/fault_campaign.py REPORT_JSON [--trials N|all] [--random-kills N] [--seed S]

One process imports torch once (with one thread, so forking is safe) and forks every attempt:

1. a traced run of the job records every file-system call its saves make (`FS_CALLS`);
2. each trial forks a run that SIGKILLs itself just before or just after file-system call
   number K (or that the campaign SIGKILLs after a random delay), then forks a fresh run with
   ``resume_from="latest"`` that must end bit-identical to an uninterrupted run, resume from
   at least the newest state whose save had completed, and leave no leftovers.

The job is tests/resume_job.py with a state every 3 updates and ``max_checkpoints=1``, so its
saves include a first save, saves that prune the previous state, best-model checkpoints, and
the end-of-run re-save of a state of the same name. The report lists every trial and what was
wrong with it.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # no thread pools, so that forked children are safe

import accelerate.utils.other
import resume_job  # a sibling: this file runs as a script
import torch

from trainwright import TrainerCallback
from trainwright.checkpointing import verify_training_state

torch.set_num_threads(1)
SAVE_EVERY_N_STEPS = 3
STATE_NAME = re.compile(r"state-\d+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _opens_for_writing(file, mode="r", *args, **kwargs) -> bool:
    return any(letter in mode for letter in "wax+")


def _os_open_writes(path, flags, *args, **kwargs) -> bool:
    return bool(flags & WRITE_FLAGS)


#: (module, function, which calls count): every way the library and the code it calls
#: (Accelerate, torch, safetensors) change files.
FS_CALLS = [
    (os, "replace", None),
    (os, "rename", None),
    (os, "makedirs", None),
    (os, "mkdir", None),
    (os, "fsync", None),
    (os, "unlink", None),
    (os, "remove", None),
    (os, "rmdir", None),
    (os, "open", _os_open_writes),
    (builtins, "open", _opens_for_writing),
    (io, "open", _opens_for_writing),
    (shutil, "rmtree", None),
    (torch, "save", None),
    (accelerate.utils.other, "safe_save_file", None),
]


class KillSwitch:
    """Counts file-system calls and SIGKILLs this process at call ``kill_at``."""

    def __init__(self, kill_at: int | None = None, when: str = "before") -> None:
        self.kill_at, self.when = kill_at, when
        self.trace: list[tuple[str, str]] = []
        self.originals = []

    def install(self) -> None:
        for module, name, counts in FS_CALLS:
            function = getattr(module, name)
            self.originals.append((module, name, function))
            setattr(module, name, self._wrap(f"{module.__name__}.{name}", function, counts))

    def uninstall(self) -> None:
        for module, name, function in reversed(self.originals):
            setattr(module, name, function)
        self.originals = []

    def _wrap(self, label, function, counts):
        def counted(*args, **kwargs):
            if counts is not None and not counts(*args, **kwargs):
                return function(*args, **kwargs)
            self.trace.append((label, _describe(args)))
            index = len(self.trace)
            if index == self.kill_at and self.when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                return function(*args, **kwargs)
            finally:  # also after a call that raised (os.mkdir of a directory that exists)
                if index == self.kill_at and self.when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

        return counted


def _describe(args) -> str:
    paths = [str(a) for a in args if isinstance(a, (str, os.PathLike))]
    return " ".join(Path(p).name for p in paths) if paths else ""


class ResumePoint(TrainerCallback):
    """Records the number of updates the run starts (or resumes) at."""

    def __init__(self) -> None:
        self.updates = None

    def on_training_run_start(self, trainer, **kwargs):
        self.updates = trainer.progress.num_update_steps


def run_job(work: Path, resume: bool, switch: KillSwitch | None = None) -> dict:
    start = ResumePoint()
    trainer, dataset = resume_job.build(
        work / "states",
        extra_callbacks=[start],
        best_model_path=work / "best" / "best.pt",
        save_every_n_steps=SAVE_EVERY_N_STEPS,
        max_checkpoints=1,
    )
    if switch is not None:
        switch.install()
    try:
        resume_job.train(trainer, dataset, resume_from="latest" if resume else None)
    finally:
        if switch is not None:
            switch.uninstall()
    return {**resume_job.summary(trainer, dataset), "resumed_at": start.updates}


def in_child(function, result_file: Path | None = None, kill_after: float | None = None) -> int:
    """Runs ``function()`` in a forked child; its result (JSON) goes to ``result_file``.
    Returns the child's wait status as a negative signal number or an exit code."""
    sys.stdout.flush()  # else the child inherits, and prints again, what is buffered
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            result = function()
            if result_file is not None:
                result_file.write_text(json.dumps(result))
        except BaseException as error:  # report, never fall back into the campaign's loop
            if result_file is not None:
                result_file.write_text(json.dumps({"error": repr(error)}))
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    waited = (0, 0)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline and waited == (0, 0):
            waited = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.002)
        if waited == (0, 0):
            os.kill(pid, signal.SIGKILL)
    if waited == (0, 0):
        waited = os.waitpid(pid, 0)
    status = waited[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def leftovers(work: Path) -> list[str]:
    """Anything a finished run should not leave: names other than the library's states and
    the best-model file, and states that do not verify."""
    found = []
    for path in sorted((work / "states").iterdir()):
        if not STATE_NAME.fullmatch(path.name):
            found.append(f"states/{path.name}")
            continue
        try:
            verify_training_state(path)
        except ValueError as error:
            found.append(f"states/{path.name}: {error}")
    found += [f"best/{p.name}" for p in (work / "best").iterdir() if p.name != "best.pt"]
    return found


COMPARED = ["weights", "history", "current_epoch", "lr", "steps_seen", "best_value", "best_model"]


def trial(work: Path, reference: dict, kill, published_before) -> dict:
    """One kill and restart; ``kill`` is ``("call", K, when)`` or ``("random", delay)``."""
    if kill[0] == "call":
        _, index, when = kill
        status = in_child(lambda: run_job(work, resume=False, switch=KillSwitch(index, when)))
        expected_from = published_before(index, when)
    else:
        status = in_child(lambda: run_job(work, resume=False), kill_after=kill[1])
        expected_from = 0
    result_file = work / "resumed.json"
    in_child(lambda: run_job(work, resume=True), result_file)
    resumed = json.loads(result_file.read_text())
    result_file.unlink()
    problems = []
    if "error" in resumed:
        problems.append(f"the restart failed: {resumed['error']}")
    else:
        problems += [f"{key} differs" for key in COMPARED if resumed[key] != reference[key]]
        if resumed["resumed_at"] < expected_from:
            problems.append(
                f"resumed at update {resumed['resumed_at']}, but the state of update "
                f"{expected_from} had been saved"
            )
        problems += [f"leftover {name}" for name in leftovers(work)]
    return {"kill": list(kill), "killed": status == -signal.SIGKILL, "problems": problems}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("--trials", default="20", help="kill points to try, or 'all'")
    parser.add_argument("--random-kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    rng = random.Random(args.seed)

    # The uninterrupted reference, and the trace of its file-system calls.
    reference_file = scratch / "reference.json"
    trace_file = scratch / "trace.json"

    def traced_run():
        switch = KillSwitch()
        started = time.monotonic()
        summary = run_job(scratch / "reference", resume=False, switch=switch)
        trace_file.write_text(json.dumps(switch.trace))
        return {**summary, "seconds": time.monotonic() - started}

    run_job(scratch / "warm-up", resume=False)  # lazy imports and set-up, before forking
    (scratch / "reference").mkdir()  # as each trial's directory, so the calls are the same
    in_child(traced_run, reference_file)
    reference = json.loads(reference_file.read_text())
    if "error" in reference:
        raise RuntimeError(f"the reference run failed: {reference['error']}")
    trace = [tuple(call) for call in json.loads(trace_file.read_text())]

    # The call (1-based) after which each state is in place: the rename of its staging dir.
    published = [
        (index, int(re.search(r"state-(\d+)", call[1]).group(1)))
        for index, call in enumerate(trace, start=1)
        if call[0] == "os.replace" and ".incomplete" in call[1].split()[0]
    ]

    def published_before(index: int, when: str) -> int:
        done = [
            updates for at, updates in published if at < index or (at == index and when == "after")
        ]
        return max(done, default=0)

    kill_points = [
        ("call", index, when) for index in range(1, len(trace) + 1) for when in ("before", "after")
    ]
    if args.trials != "all":
        # Renames and deletions decide which states exist: try all of those of the last two
        # state saves (a prune, and the end-of-run re-save of the same name) and of the
        # best-model checkpoints, then a seeded sample of the other calls.
        last_saves_start = published[-2][0]
        decisive = [
            point
            for point in kill_points
            if trace[point[1] - 1][0] in ("os.replace", "shutil.rmtree")
            and (point[1] > last_saves_start or trace[point[1] - 1][1].endswith(" best.pt"))
        ]
        rest = [point for point in kill_points if point not in decisive]
        kill_points = decisive + rng.sample(rest, max(0, int(args.trials) - len(decisive)))
    kill_points += [
        ("random", rng.uniform(0, reference["seconds"])) for _ in range(args.random_kills)
    ]

    trials = []
    for number, kill in enumerate(kill_points):
        work = scratch / f"trial-{number}"
        work.mkdir()
        outcome = trial(work, reference, kill, published_before)
        if kill[0] == "call":
            outcome["call"] = trace[kill[1] - 1]
        trials.append(outcome)
        shutil.rmtree(work)
    report = {"trace": trace, "published": published, "trials": trials}
    Path(args.report).write_text(json.dumps(report, indent=1))
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main(sys.argv[1:])
