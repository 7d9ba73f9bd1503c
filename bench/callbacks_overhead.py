"""What the default callbacks cost per step, callback by callback.

Usage (from the repository root)::

    python -m bench.callbacks_overhead [--rounds 9] [--workload mlp] [--quick]

One process runs trainwright on a workload (the overhead-bound ``mlp`` by default, or the
compute-bound ``cnn``) with several callback lists, interleaved round-robin (each round starts
one further along), each run on a freshly built workload. It prints, per callback list, the
median wall-clock and CPU time per step and their ratios to the bare trainer
(``callbacks=()``): as a ratio of medians, and as the median of the ratios of runs taken next to
each other in the same round, which cancels slow drifts of a shared machine.
``run_bench.py`` measures the same lists in fresh processes beside the hand-written loops; this
one isolates the callbacks, with less noise per minute of machine time.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from bench.workloads import DATALOADER_KWARGS, WORKLOAD_BUILDERS
from trainwright import Trainer
from trainwright.callbacks import (
    DEFAULT_CALLBACKS,
    MoveModulesToDeviceCallback,
    PrintMetricsCallback,
    PrintProgressCallback,
    ProgressBarCallback,
    TerminateOnNaNCallback,
)

CALLBACK_LISTS: dict[str, Sequence] = {
    "bare": (),
    "defaults": DEFAULT_CALLBACKS,
    "TerminateOnNaN only": (TerminateOnNaNCallback,),
    "ProgressBar only": (ProgressBarCallback,),
    "the others": (MoveModulesToDeviceCallback, PrintProgressCallback, PrintMetricsCallback),
}


def timed_run(callbacks: Sequence, workload_name: str, quick: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds of one ``train()`` on a fresh workload, and its number of steps."""
    workload = WORKLOAD_BUILDERS[workload_name](quick)
    trainer = Trainer(workload.model, workload.loss_func, workload.optimizer, callbacks=callbacks)
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer.train(
        train_dataset=workload.dataset,
        num_epochs=workload.num_epochs,
        per_device_batch_size=workload.batch_size,
        train_dataloader_kwargs=dict(DATALOADER_KWARGS),
    )
    return time.perf_counter() - start, time.process_time() - start_cpu, workload.num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--workload", default="mlp", choices=list(WORKLOAD_BUILDERS))
    parser.add_argument("--quick", action="store_true", help="a short run per list, 2 rounds")
    parser.add_argument(
        "--lists", nargs="+", default=list(CALLBACK_LISTS), choices=list(CALLBACK_LISTS)
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = 2 if args.quick else args.rounds
    names = ["bare", *(name for name in args.lists if name != "bare")]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    # Warm-up: first-call costs (imports, allocator) go here.
    timed_run((), args.workload, quick=True)
    num_steps = 1
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            # Progress and metrics lines go to stderr / /dev/null, as in a job's log.
            with open(os.devnull, "w") as devnull:
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    wall_s, cpu_s, num_steps = timed_run(
                        CALLBACK_LISTS[name], args.workload, args.quick
                    )
                finally:
                    sys.stdout = stdout
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)

    def per_step_us(seconds: list[float]) -> float:
        return statistics.median(seconds) / num_steps * 1e6

    def paired_ratio(times: dict[str, list[float]], name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times["bare"]))

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"`{args.workload}`: {num_steps} steps per run, {rounds} interleaved rounds, "
        f"load average {load}\n"
    )
    print(
        "| callbacks | wall µs/step | CPU µs/step | wall ratio to bare (of medians / paired) "
        "| CPU ratio to bare (of medians / paired) |"
    )
    print("|---|---:|---:|---|---|")
    for name in names:
        wall_ratio = statistics.median(wall[name]) / statistics.median(wall["bare"])
        cpu_ratio = statistics.median(cpu[name]) / statistics.median(cpu["bare"])
        print(
            f"| {name} | {per_step_us(wall[name]):.1f} | {per_step_us(cpu[name]):.1f} "
            f"| {wall_ratio:.3f} / {paired_ratio(wall, name):.3f} "
            f"| {cpu_ratio:.3f} / {paired_ratio(cpu, name):.3f} |"
        )


if __name__ == "__main__":
    main()
