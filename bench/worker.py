"""Run one implementation on one workload in this (fresh) process and print one JSON result line.

The runner (``bench/run_bench.py``) starts one worker per measurement, so no run inherits warm
caches, allocator state or imported modules from another. Usage::

    python -m bench.worker --impl torch --workload mlp [--quick] [--check-dir DIR]

Without ``--check-dir`` the worker times the training run. With it, the worker instead runs the
check pass: it counts host syncs, records the order in which samples are read and saves the final
weights to ``DIR/<impl>.pt``. The counting wrappers slow the loop, so a check pass is never timed;
``--also-time`` (used by ``--quick`` to halve the processes) times a separate run first.
"""

import argparse
import hashlib
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench.syncs import count_host_syncs
from bench.workloads import WORKLOAD_BUILDERS, Workload

RESULT_PREFIX = "BENCH_RESULT "

# An implementation's setup: builds what its loop needs (untimed), returns the timed run.
Setup = Callable[[Workload], Callable[[], nn.Module]]

# name -> (module, setup function). Modules are imported only when selected, so an implementation
# whose library is missing is reported as skipped instead of breaking the others.
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "torch": ("bench.impl_torch", "setup"),
    "torch-batched": ("bench.impl_torch_batched", "setup"),
    "accelerate": ("bench.impl_accelerate", "setup"),
    "trainwright": ("bench.impl_trainwright", "setup_no_callbacks"),
    "trainwright+defaults": ("bench.impl_trainwright", "setup_default_callbacks"),
    "pytorch-accelerated": ("bench.impl_pytorch_accelerated", "setup_no_callbacks"),
    "pytorch-accelerated+defaults": ("bench.impl_pytorch_accelerated", "setup_default_callbacks"),
    "lightning": ("bench.impl_lightning", "setup"),
}


class RecordingDataset(TensorDataset):
    """A ``TensorDataset`` that remembers which indices were read, in order (check pass only)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__(*tensors)
        self.indices_read: list[int] = []

    def __getitem__(self, index: int | list[int]) -> tuple[torch.Tensor, ...]:
        if isinstance(index, list):  # a whole batch (the careful loop)
            self.indices_read.extend(index)
        else:
            self.indices_read.append(int(index))
        return super().__getitem__(index)


def load_setup(impl: str) -> Setup:
    module_name, function_name = IMPLEMENTATIONS[impl]
    return getattr(importlib.import_module(module_name), function_name)


def read_status_kib(field: str) -> int | None:
    """Read a memory figure such as ``VmHWM`` from /proc/self/status (Linux only)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark, so that VmHWM covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def record_first_forward(model: nn.Module) -> list[float]:
    """Return a list that receives the time of the model's first forward call.

    The hook removes itself on that call, so every later step runs exactly as without it.
    """
    first_forward: list[float] = []

    def hook(module: nn.Module, args: Any) -> None:
        first_forward.append(time.perf_counter())
        handle.remove()

    handle = model.register_forward_pre_hook(hook)
    return first_forward


def timed_run(setup: Setup, workload_name: str, quick: bool) -> dict:
    """Build the workload, then time one training run: wall and CPU time, memory, and a hash of
    the final weights."""
    workload = WORKLOAD_BUILDERS[workload_name](quick)
    run = setup(workload)
    first_forward = record_first_forward(workload.model)
    rss_before_kib = read_status_kib("VmRSS")
    has_reset_peak = reset_peak_rss()
    start, start_cpu = time.perf_counter(), time.process_time()
    model = run()
    train_seconds = time.perf_counter() - start
    # CPU time of this process: unlike wall time, barely affected by other processes competing
    # for the cores, so it tells whether a slow run was the loop or a busy machine.
    train_cpu_seconds = time.process_time() - start_cpu
    peak_during_train_kib = read_status_kib("VmHWM") if has_reset_peak else None
    # The timed run's own weights (the check pass reads its data through a recording dataset,
    # which may take another path through a trainer's data loading): compared across runs.
    weights = torch.cat([tensor.detach().flatten() for tensor in model.state_dict().values()])
    return {
        "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        # Set-up inside the timed run (DataLoader, prepare, callbacks) plus the first batch.
        "first_forward_seconds": first_forward[0] - start if first_forward else None,
        "num_samples": len(workload.dataset),
        "num_epochs": workload.num_epochs,
        "num_steps": workload.num_steps,
        # ru_maxrss is in KiB on Linux: the process's peak, imports included.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_rss_growth_mib": (
            (peak_during_train_kib - rss_before_kib) / 1024
            if peak_during_train_kib is not None and rss_before_kib is not None
            else None
        ),
    }


def checked_run(setup: Setup, impl: str, workload_name: str, quick: bool, check_dir: str) -> dict:
    """Build the workload, then train once counting host syncs and recording the data order;
    save the final weights to ``check_dir``."""
    workload = WORKLOAD_BUILDERS[workload_name](quick)
    dataset = RecordingDataset(*workload.dataset.tensors)
    workload.dataset = dataset
    run = setup(workload)
    with count_host_syncs() as counts:
        model = run()
    indices = torch.tensor(dataset.indices_read, dtype=torch.int64)
    weights_path = os.path.join(check_dir, f"{impl}.pt")
    torch.save({name: t.detach().clone() for name, t in model.state_dict().items()}, weights_path)
    return {
        "host_syncs": dict(counts),
        "samples_read": len(indices),
        "data_order_sha256": hashlib.sha256(indices.numpy().tobytes()).hexdigest(),
        "weights_path": weights_path,
        "num_samples": len(workload.dataset),
        "num_epochs": workload.num_epochs,
        "num_steps": workload.num_steps,
    }


def run_worker(
    impl: str, workload_name: str, quick: bool, check_dir: str | None, also_time: bool
) -> dict:
    """Time one run, or run the check pass (``check_dir``), or both (``also_time``, time first)."""
    torch.set_num_threads(1)
    result: dict = {"impl": impl, "workload": workload_name}
    try:
        setup = load_setup(impl)
    except ImportError as error:
        return {**result, "skipped": f"not importable: {error}"}
    if check_dir is None or also_time:
        result.update(timed_run(setup, workload_name, quick))
    if check_dir is not None:
        result.update(checked_run(setup, impl, workload_name, quick, check_dir))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOAD_BUILDERS))
    parser.add_argument("--quick", action="store_true", help="use the small quick-mode workload")
    parser.add_argument("--check-dir", help="run the check pass, saving the weights here")
    parser.add_argument(
        "--also-time",
        action="store_true",
        help="with --check-dir: time a run first, in the same process (the quick smoke test)",
    )
    args = parser.parse_args()
    if args.also_time and args.check_dir is None:
        parser.error("--also-time needs --check-dir")
    result = run_worker(args.impl, args.workload, args.quick, args.check_dir, args.also_time)
    # Libraries may print to stdout too, so the result line carries a prefix the runner looks for.
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
