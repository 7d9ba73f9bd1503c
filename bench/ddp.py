"""Two-process comparison: a hand-written DDP loop against trainwright's ``Trainer``.

Usage (from the repository root)::

    python -m bench.ddp [--rounds 15] [--quick]

``python bench/run_bench.py`` runs it too, after the single-process tables.

Every run uses ``torchrun --nproc_per_node 2`` on the CPU (gloo), one thread per process, each
process pinned to a CPU of its own (with gloo's threads, which it starts), over the
overhead-bound ``mlp`` workload (each process reads every other batch, in order, as
Accelerate shards a loader). Two kinds of launch:

- **timing**: one launch runs every implementation ``--rounds`` times, interleaved, in a
  rotating order (after one untimed warm-up run of each), and reports the ratio of the median
  times and the median of the per-round ratios to the hand-written loop. On a machine as noisy
  as a shared 2-core VM, the time of one launch varies by ±20% from one launch to the next;
  runs a second apart in the same processes compare far more steadily than fresh launches
  tens of seconds apart.
- **checks**: one fresh launch per implementation reports the ``torch.distributed``
  collectives called from Python per step (DDP's gradient all-reduce runs in its C++ reducer,
  one bucket per step for this model, and is not among them), peak RSS of rank 0, and a hash
  of the final weights, which every timed run's weights must match too.

Prints a markdown table.
"""

import argparse
import collections
import functools
import gc
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bench.workloads import WORKLOAD_BUILDERS, Workload

IMPLS = ("ddp", "trainwright", "trainwright+defaults")
RESULT_PREFIX = "DDP_RESULT "
# Taken before _count_collectives wraps it: the barrier that starts a timed run is not counted.
_barrier = dist.barrier
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier", "gather")


def _count_collectives() -> collections.Counter:
    counts: collections.Counter = collections.Counter()

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for name in COLLECTIVES:
        setattr(dist, name, counted(name, getattr(dist, name)))
    return counts


def _hand_written_ddp(workload: Workload) -> nn.Module:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = nn.parallel.DistributedDataParallel(workload.model)
    optimizer, loss_func = workload.optimizer, workload.loss_func
    inputs, targets = workload.dataset.tensors
    size = workload.batch_size
    starts = range(rank * size, len(inputs), world * size)  # every world-th batch, in order
    model.train()
    for _ in range(workload.num_epochs):
        for start in starts:
            loss = loss_func(model(inputs[start : start + size]), targets[start : start + size])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.module


def _pin_to_own_cpu() -> None:
    """Pins this process to one CPU of its own (its local rank's), before it starts any thread:
    gloo's threads, started as the process group is made, inherit it. Without pinning, the
    scheduler moves the 2 processes and their gloo threads between the cores at will, and the
    time of a run varies more. Nothing is pinned when there are fewer CPUs than processes."""
    cpus = sorted(os.sched_getaffinity(0))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if len(cpus) >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        os.sched_setaffinity(0, {cpus[local_rank]})


def _start_process() -> None:
    _pin_to_own_cpu()
    torch.set_num_threads(1)
    # The hand-written loop's process group; the Trainer's Accelerator joins it as it is.
    dist.init_process_group("gloo")


def _setup(impl: str, workload: Workload) -> Callable[[], nn.Module]:
    if impl == "ddp":
        return functools.partial(_hand_written_ddp, workload)
    # The single-process benchmark's set-up: the Trainer is imported and constructed before
    # the clock starts.
    from bench.worker import load_setup

    return load_setup(impl)(workload)


def _weights_sha256(model: nn.Module) -> str:
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return hashlib.sha256(weights.numpy().tobytes()).hexdigest()


def _timed(run: Callable[[], nn.Module]) -> tuple[float, nn.Module]:
    gc.collect()  # the previous run's garbage is not collected on this one's clock
    _barrier()  # both processes start together
    start = time.perf_counter()
    model = run()
    return time.perf_counter() - start, model


def check_worker(impl: str, quick: bool) -> None:
    """One process of a checks launch (under torchrun); rank 0 prints the result line."""
    _start_process()
    workload = WORKLOAD_BUILDERS["mlp"](quick)
    counts = _count_collectives()
    run = _setup(impl, workload)
    seconds, model = _timed(run)
    num_steps = _num_steps(workload)
    if dist.get_rank() == 0:
        result = {
            "impl": impl,
            "train_seconds": seconds,
            "num_steps": num_steps,
            "collectives_per_step": sum(counts.values()) / num_steps,
            "collectives": dict(counts),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "weights_sha256": _weights_sha256(model),
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    # No destroy_process_group(): with a DDP model still alive, destroying the process group
    # here made the exit hang at random (gloo's thread waiting for the GIL to destroy a work
    # while the interpreter shut down); torchrun ends the processes cleanly without it.


def timing_worker(rounds: int, quick: bool) -> None:
    """One process of the timing launch (under torchrun): every implementation ``rounds``
    times, interleaved in a rotating order, after an untimed warm-up run of each; rank 0
    prints the times and the hashes of the weights."""
    _start_process()
    seconds: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    hashes: dict[str, set[str]] = {impl: set() for impl in IMPLS}
    for round_index in range(-1, rounds):  # -1: the warm-up round
        shift = round_index % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            workload = WORKLOAD_BUILDERS["mlp"](quick)
            elapsed, model = _timed(_setup(impl, workload))
            if round_index >= 0:
                seconds[impl].append(elapsed)
                hashes[impl].add(_weights_sha256(model))
            del model, workload
    if dist.get_rank() == 0:
        result = {
            "seconds": seconds,
            "weights_sha256": {impl: sorted(digests) for impl, digests in hashes.items()},
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)


def _num_steps(workload: Workload) -> int:
    """Steps per process: each reads every world-th batch."""
    world = dist.get_world_size()
    return workload.num_epochs * -(-workload.num_steps_per_epoch // world)


def _launch(worker_args: list[str], quick: bool) -> dict:
    """Runs one 2-process launch of this module with ``worker_args``; returns rank 0's result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "bench.ddp", *worker_args] + (["--quick"] if quick else [])
    output = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    for line in output.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"{worker_args} failed:\n{output.stdout[-2000:]}\n{output.stderr[-4000:]}")


def ddp_table(rounds: int, quick: bool) -> str:
    """Runs the checks launches and the timing launch (``rounds`` interleaved rounds); returns
    the markdown table (progress on stderr)."""
    checks = {impl: _launch(["--worker", impl], quick) for impl in IMPLS}
    print("ddp checks done", file=sys.stderr, flush=True)
    timing = _launch(["--timing-worker", "--rounds", str(rounds)], quick)
    print(f"ddp timing done ({rounds} rounds)", file=sys.stderr, flush=True)
    seconds, num_steps = timing["seconds"], checks["ddp"]["num_steps"]
    reference = seconds["ddp"]
    reference_hash = checks["ddp"]["weights_sha256"]
    lines = [
        f"{rounds} interleaved rounds in one launch; {num_steps} steps per run on each process.",
        "",
        "| implementation (2 processes) | train time median (s) | overhead vs `ddp` (µs/step, "
        "of the medians) | ratio of the medians vs `ddp` | median of the per-round ratios "
        "| extra collectives/step (Python calls) | peak RSS MiB (rank 0) "
        "| weights bit-identical to `ddp` (every run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for impl in IMPLS:
        times, check = seconds[impl], checks[impl]
        median = statistics.median(times)
        ratios = [time_ / ref for time_, ref in zip(times, reference)]
        overhead = (median - statistics.median(reference)) / num_steps * 1e6
        calls = ", ".join(f"{name} {count}" for name, count in check["collectives"].items())
        same = {check["weights_sha256"]} == {reference_hash, *timing["weights_sha256"][impl]}
        lines.append(
            f"| `{impl}` | {median:.3f} | "
            + ("0 (reference)" if impl == "ddp" else f"{overhead:+.0f}")
            + f" | {median / statistics.median(reference):.3f} | {statistics.median(ratios):.3f}"
            + f" | {check['collectives_per_step']:.3f}"
            + (f" ({calls})" if calls else "")
            + f" | {check['peak_rss_mib']:.0f} | "
            + ("reference" if impl == "ddp" and same else ("yes" if same else "**no**"))
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--timing-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        check_worker(args.worker, args.quick)
    elif args.timing_worker:
        timing_worker(args.rounds, args.quick)
    else:
        print(ddp_table(args.rounds, args.quick))


if __name__ == "__main__":
    main()
