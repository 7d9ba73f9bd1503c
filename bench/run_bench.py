"""Benchmark trainwright's training loop against hand-written loops and other libraries.

Run from the repository root with the project's Python::

    python bench/run_bench.py [--rounds 5] [--ddp-rounds 15] [--quick] [--no-ddp]

Each measurement runs in a fresh ``python -m bench.worker`` process; the implementations are
interleaved round-robin within each round, so slow drifts of the machine spread over all of them.
Before the timed rounds, one check pass per implementation counts host syncs, records the order
in which samples are read and saves the final weights, which are compared bit for bit with the
hand-written PyTorch loop's. The tables are printed as markdown on stdout; progress goes to
stderr. Then, unless ``--no-ddp``, the 2-process comparison of ``bench/ddp.py`` (a
hand-written DDP loop against the Trainer, with collectives per step; ``--ddp-rounds``
interleaved rounds in one launch).
See ``bench/README.md`` for what each column means.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script, bench/ is on sys.path but its parent isn't
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.ddp import ddp_table  # noqa: E402
from bench.worker import IMPLEMENTATIONS, RESULT_PREFIX  # noqa: E402
from bench.workloads import WORKLOAD_BUILDERS, WORKLOAD_DESCRIPTIONS  # noqa: E402

REFERENCE = "torch"
# The careful hand-written loop (one indexing call per batch): the second yardstick.
CAREFUL = "torch-batched"
WORKER_TIMEOUT_S = 600


def worker_env() -> dict[str, str]:
    """The workers' environment: the source checkout importable, CPU only, one thread."""
    env = dict(os.environ)
    # Workers run with the repository root as their working directory, so `bench` imports
    # without help; the source checkout is added unless trainwright is installed from it
    # already. Keep sys.path short: Accelerate's optimizer searches it on every step (see
    # README), so each entry adds to the per-step overhead.
    source = str(REPO_ROOT / "src")
    if source not in sys.path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    # One thread everywhere: the benchmark measures the loop around the maths, and a second core
    # would only add noise (the worker also calls torch.set_num_threads(1)).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[variable] = "1"
    env["PYTHONWARNINGS"] = "ignore"  # library warnings would only clutter the captured output
    return env


def run_worker(
    impl: str, workload: str, quick: bool, check_dir: str | None = None, also_time: bool = False
) -> dict:
    """Run one worker process and return its result, or ``{"error": ...}`` if it failed."""
    command = [sys.executable, "-m", "bench.worker", "--impl", impl, "--workload", workload]
    if quick:
        command.append("--quick")
    if check_dir is not None:
        command += ["--check-dir", check_dir]
    if also_time:
        command.append("--also-time")
    try:
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    results = [
        json.loads(line[len(RESULT_PREFIX) :])
        for line in completed.stdout.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    if completed.returncode != 0 or not results:
        last_lines = " | ".join(completed.stderr.strip().splitlines()[-3:])
        return {"impl": impl, "error": f"exit code {completed.returncode}: {last_lines}"}
    return results[-1]


def run_all(tasks: Sequence[tuple], jobs: int) -> list[dict]:
    """Run :func:`run_worker` on each tuple of arguments, ``jobs`` at a time, in order."""
    if jobs == 1:
        return [run_worker(*task) for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda task: run_worker(*task), tasks))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> str:
    versions = ", ".join(
        f"{name} {package_version(name)}"
        for name in ("trainwright", "torch", "accelerate", "pytorch-accelerated", "lightning")
    )
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (each run uses 1 thread), "
        f"Python {platform.python_version()}, {versions}"
    )


def compare_weights(path: str, reference_path: str) -> str:
    """Return "yes" if every tensor is bit-identical (``torch.equal``), else what differs."""
    weights = torch.load(path)
    reference = torch.load(reference_path)
    if weights.keys() != reference.keys():
        return f"no (parameter names differ: {sorted(weights)} vs {sorted(reference)})"
    differences = {
        name: (weights[name].double() - reference[name].double()).abs().max().item()
        for name in reference
        if not torch.equal(weights[name], reference[name])
    }
    if not differences:
        return "yes"
    worst = max(differences, key=differences.get)
    return (
        f"no ({len(differences)}/{len(reference)} tensors differ, "
        f"max abs diff {differences[worst]:.2g} in `{worst}`)"
    )


def format_syncs(check: dict) -> str:
    syncs, num_steps = check["host_syncs"], check["num_steps"]
    total = sum(syncs.values())
    if total == 0:
        return "0"
    detail = ", ".join(f"{name} {count}" for name, count in sorted(syncs.items()))
    return f"{total / num_steps:.3f} ({detail})"


def run_check_pass(
    workload: str, impls: Sequence[str], quick: bool, jobs: int, notes: list[str]
) -> tuple[dict[str, dict], dict[str, str]]:
    """Run every implementation once with counting on; return the checks of those that worked
    and, for each, whether its final weights are bit-identical to the reference's.

    In quick mode each worker also times a run first (in the same process), which serves as the
    first round.
    """
    log(f"[{workload}] check pass")
    with tempfile.TemporaryDirectory(prefix="trainwright-bench-") as check_dir:
        tasks = [(impl, workload, quick, check_dir, quick) for impl in impls]
        results = run_all(tasks, jobs)
        checks = {}
        for impl, result in zip(impls, results):
            if "skipped" in result:
                notes.append(f"`{impl}` skipped: {result['skipped']}")
            elif "error" in result:
                notes.append(f"`{impl}` failed in the check pass: {result['error']}")
            else:
                checks[impl] = result
        if REFERENCE not in checks:
            raise SystemExit(f"The reference loop `{REFERENCE}` failed: {notes}")
        reference_path = checks[REFERENCE]["weights_path"]
        identical = {
            impl: compare_weights(check["weights_path"], reference_path)
            for impl, check in checks.items()
        }
    return checks, identical


def run_timed_rounds(
    workload: str, checks: dict[str, dict], rounds: int, quick: bool, jobs: int
) -> dict[str, list[dict]]:
    """Time every implementation ``rounds`` times, round-robin; return the results per impl."""
    impls = list(checks)
    timings: dict[str, list[dict]] = {impl: [] for impl in impls}
    if quick:  # the check pass timed the first round
        for impl, check in checks.items():
            timings[impl].append(check)
    for round_index in range(len(timings[impls[0]]), rounds):
        # Rotate the starting implementation each round so none always runs first or last.
        shift = round_index % len(impls)
        order = list(impls[shift:]) + list(impls[:shift])
        results = run_all([(impl, workload, quick, None) for impl in order], jobs)
        for impl, result in zip(order, results):
            if "error" not in result and result.get("train_seconds") is None:
                result = {"impl": impl, "error": result.get("skipped", "no time reported")}
            timings[impl].append(result)
        log(
            f"[{workload}] round {round_index + 1}/{rounds}: "
            + ", ".join(
                f"{impl} {timings[impl][-1]['train_seconds']:.3f} s"
                if "error" not in timings[impl][-1]
                else f"{impl} failed"
                for impl in order
            )
        )
    return timings


def paired_median(
    timings: list[dict],
    reference: list[dict],
    key: str,
    function: Callable[[float, float], float],
) -> float:
    """Median over rounds of ``function(run, reference run)`` for rounds where both succeeded."""
    values = [
        function(run[key], ref[key])
        for run, ref in zip(timings, reference)
        if "error" not in run and "error" not in ref
    ]
    return statistics.median(values) if values else math.nan


def table_row(
    impl: str,
    timings: list[dict],
    reference: list[dict],
    check: dict,
    reference_check: dict,
    identical: str,
    careful: list[dict] | None = None,
) -> list[str]:
    runs = [run for run in timings if "error" not in run]
    seconds = [run["train_seconds"] for run in runs]
    best = min(seconds)
    best_reference = min(run["train_seconds"] for run in reference if "error" not in run)
    num_steps = check["num_steps"]

    def overhead(key: str) -> float:
        return paired_median(timings, reference, key, lambda t, ref: (t - ref) / num_steps * 1e6)

    def ratio(key: str) -> float:
        return paired_median(timings, reference, key, lambda t, ref: t / ref)

    rss = f"{statistics.median(run['peak_rss_mib'] for run in runs):.0f}"
    growth = [run["train_rss_growth_mib"] for run in runs]
    if None not in growth:
        rss += f" (+{statistics.median(growth):.0f})"
    is_same_order = (
        check["data_order_sha256"] == reference_check["data_order_sha256"]
        and check["samples_read"] == reference_check["samples_read"]
    )
    is_reference = impl == REFERENCE
    # The check pass's comparison, and the timed runs' own final weights against the
    # reference's timed runs (every run starts from the same weights and data).
    reference_hashes = {run["weights_sha256"] for run in reference if "error" not in run}
    timed_hashes = {run["weights_sha256"] for run in runs}
    if not is_reference and identical == "yes" and timed_hashes != reference_hashes:
        identical = "**no** (timed runs)"
    return [
        f"`{impl}`",
        f"{statistics.median(seconds):.3f}",
        f"{min(seconds):.3f} to {max(seconds):.3f}",
        f"{statistics.median(run['train_cpu_seconds'] for run in runs):.3f}",
        f"{statistics.median(run['first_forward_seconds'] for run in runs) * 1e3:.1f}",
        "0 (reference)"
        if is_reference
        else f"{overhead('train_seconds'):+.0f} / {(best - best_reference) / num_steps * 1e6:+.0f}"
        f" / {overhead('train_cpu_seconds'):+.0f}",
        f"{ratio('train_seconds'):.2f} / {best / best_reference:.2f}"
        f" / {ratio('train_cpu_seconds'):.2f}",
        "n/a"
        if careful is None
        else f"{paired_median(timings, careful, 'train_seconds', lambda t, ref: t / ref):.2f}",
        rss,
        format_syncs(check),
        "yes" if is_same_order else "**no**",
        "reference" if is_reference else identical,
    ]


TABLE_HEADER = [
    "implementation",
    "train time median (s)",
    "range (s)",
    "CPU time median (s)",
    "time to first forward (ms)",
    "overhead vs `torch` (µs/step: median / best / CPU)",
    "ratio vs `torch` (median / best / CPU)",
    f"ratio vs `{CAREFUL}` (median)",
    "peak RSS MiB (+ during training)",
    "host syncs/step (calls in the loop)",
    "same data order",
    "weights bit-identical to `torch`",
]


def benchmark_workload(
    workload: str, impls: Sequence[str], rounds: int, quick: bool, jobs: int
) -> str:
    """Run the check pass and the timed rounds for one workload; return its markdown table."""
    notes: list[str] = []
    checks, identical = run_check_pass(workload, impls, quick, jobs, notes)
    timings = run_timed_rounds(workload, checks, rounds, quick, jobs)
    reference_check, reference_timings = checks[REFERENCE], timings[REFERENCE]
    if any("error" in run for run in reference_timings):
        notes.append(f"`{REFERENCE}` failed in some rounds; those rounds have no ratio.")
    rows = []
    for impl, check in checks.items():
        errors = [run["error"] for run in timings[impl] if "error" in run]
        if errors:
            notes.append(f"`{impl}` failed in {len(errors)} timed run(s): {errors[0]}")
        if len(errors) < len(timings[impl]):
            rows.append(
                table_row(
                    impl,
                    timings[impl],
                    reference_timings,
                    check,
                    reference_check,
                    identical[impl],
                    timings.get(CAREFUL),
                )
            )
    lines = [
        f"### `{workload}`: {WORKLOAD_DESCRIPTIONS[workload]}",
        "",
        f"{reference_check['num_samples']:,} samples, {reference_check['num_epochs']} epochs, "
        f"{reference_check['num_steps']:,} steps; "
        + (
            f"{rounds} round(s), the first timed in the check pass's process."
            if quick
            else f"{rounds} interleaved rounds, one fresh process per run."
        ),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds per implementation (default 5, 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test in under a minute: small workloads, one round, two runs at a time "
        "(the numbers are not measurements)",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=sorted(IMPLEMENTATIONS),
        default=list(IMPLEMENTATIONS),
        help=f"implementations to run (`{REFERENCE}` is always included)",
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(WORKLOAD_BUILDERS), default=list(WORKLOAD_BUILDERS)
    )
    parser.add_argument(
        "--ddp-rounds",
        type=int,
        default=None,
        help="interleaved rounds of the 2-process comparison (default 15, 1 with --quick)",
    )
    parser.add_argument(
        "--no-ddp",
        action="store_true",
        help="skip the 2-process comparison with a hand-written DDP loop (bench/ddp.py)",
    )
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    impls = [REFERENCE] + [impl for impl in args.impls if impl != REFERENCE]
    # Parallel runs share the cores and disturb each other's timings, so only the smoke test uses
    # them.
    jobs = min(2, os.cpu_count() or 1) if args.quick else 1

    print(
        "## trainwright benchmark"
        + (" (quick mode: a smoke test, not a measurement)" if args.quick else "")
    )
    print()
    print(f"Machine: {machine_description()}")
    for workload in args.workloads:
        print()
        print(benchmark_workload(workload, impls, rounds, args.quick, jobs), flush=True)
    if not args.no_ddp:
        print()
        print("### 2 processes: `mlp` on `torchrun --nproc_per_node 2` (gloo, 1 thread each)")
        print()
        ddp_rounds = args.ddp_rounds if args.ddp_rounds is not None else (1 if args.quick else 15)
        print(ddp_table(max(ddp_rounds, 1), args.quick), flush=True)


if __name__ == "__main__":
    main()
