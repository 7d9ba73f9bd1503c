"""Two-process comparison: a hand-written DDP loop against trainwright's ``Trainer``.

Usage (from the repository root)::

    python -m bench.ddp [--rounds 3] [--quick]

``python bench/run_bench.py`` runs it too, after the single-process tables.

Each run is a fresh ``torchrun --nproc_per_node 2`` launch on the CPU (gloo), one thread per
process, over the overhead-bound ``mlp`` workload (each process reads every other batch, in
order, as Accelerate shards a loader). Rank 0 reports the training time, the
``torch.distributed`` collectives called from Python per step (DDP's gradient all-reduce runs
in its C++ reducer, one bucket per step for this model, and is not among them), peak RSS and a
hash of the final weights. Prints a markdown table: median seconds, µs per step and the ratio
to the hand-written loop (median of the per-round ratios).
"""

import argparse
import collections
import functools
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


def worker(impl: str, quick: bool) -> None:
    """One process of a run (under torchrun); rank 0 prints the result line."""
    torch.set_num_threads(1)
    workload = WORKLOAD_BUILDERS["mlp"](quick)
    if impl == "ddp":
        dist.init_process_group("gloo")
    counts = _count_collectives()
    if impl == "ddp":
        run = functools.partial(_hand_written_ddp, workload)
    else:
        # The single-process benchmark's set-up: the Trainer is imported and constructed (its
        # Accelerator joins the process group, as the hand-written loop's init_process_group)
        # before the clock starts.
        from bench.worker import load_setup

        run = load_setup(impl)(workload)
    start = time.perf_counter()
    model = run()
    seconds = time.perf_counter() - start
    num_steps = workload.num_epochs * -(-workload.num_steps_per_epoch // 2)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    if dist.get_rank() == 0:
        result = {
            "impl": impl,
            "train_seconds": seconds,
            "num_steps": num_steps,
            "collectives_per_step": sum(counts.values()) / num_steps,
            "collectives": dict(counts),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    # No destroy_process_group(): with a DDP model still alive, destroying the process group
    # here made the exit hang at random (gloo's thread waiting for the GIL to destroy a work
    # while the interpreter shut down); torchrun ends the processes cleanly without it.


def launch(impl: str, quick: bool) -> dict:
    """Runs one 2-process launch; returns rank 0's result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "bench.ddp", "--worker", impl] + (["--quick"] if quick else [])
    output = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    for line in output.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"{impl} failed:\n{output.stdout[-2000:]}\n{output.stderr[-4000:]}")


def ddp_table(rounds: int, quick: bool) -> str:
    """Runs ``rounds`` interleaved rounds of every implementation on 2 processes; returns the
    markdown table (progress on stderr)."""
    runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for round_index in range(rounds):
        shift = round_index % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            runs[impl].append(launch(impl, quick))
        print(f"ddp round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    reference = runs["ddp"]
    num_steps = reference[0]["num_steps"]
    lines = [
        "| implementation (2 processes) | train time median (s) | overhead vs `ddp` (µs/step) "
        "| ratio vs `ddp` (median) | extra collectives/step (Python calls) | peak RSS MiB "
        "(rank 0) | weights bit-identical to `ddp` |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl, results in runs.items():
        seconds = [r["train_seconds"] for r in results]
        ratios = [r["train_seconds"] / ref["train_seconds"] for r, ref in zip(results, reference)]
        overheads = [
            (r["train_seconds"] - ref["train_seconds"]) / num_steps * 1e6
            for r, ref in zip(results, reference)
        ]
        calls = ", ".join(f"{name} {count}" for name, count in results[0]["collectives"].items())
        same = results[0]["weights_sha256"] == reference[0]["weights_sha256"]
        lines.append(
            f"| `{impl}` | {statistics.median(seconds):.3f} | "
            + ("0 (reference)" if impl == "ddp" else f"{statistics.median(overheads):+.0f}")
            + f" | {statistics.median(ratios):.2f} | {results[0]['collectives_per_step']:.3f}"
            + (f" ({calls})" if calls else "")
            + f" | {statistics.median(r['peak_rss_mib'] for r in results):.0f} | "
            + ("reference" if impl == "ddp" else ("yes" if same else "**no**"))
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.quick)
        return
    print(ddp_table(args.rounds, args.quick))


if __name__ == "__main__":
    main()
