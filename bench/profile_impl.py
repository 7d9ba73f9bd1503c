"""Profile where an implementation's time per step goes, compared with the hand-written loop.

Usage (from the repository root)::

    python -m bench.profile_impl --impl trainwright [--reference torch] [--workload mlp]
        [--top 20] [--quick]

Runs the reference and the chosen implementation in this process, each under :mod:`cProfile`
for the training run only, and prints three markdown tables in µs per step: the
implementation's top functions by self time, the reference's, and the functions whose self
time differs most between the two (the overhead, function by function). ``--reference
accelerate`` separates what trainwright adds from what Accelerate itself costs. cProfile adds
its own cost to every Python call, so absolute numbers run high; compare rows, not totals
with the timed benchmark.
"""

import argparse
import contextlib
import cProfile
import pstats
import sys

import torch

from bench.worker import IMPLEMENTATIONS, load_setup
from bench.workloads import WORKLOAD_BUILDERS

FunctionKey = tuple[str, int, str]


def profile_run(impl: str, workload_name: str, quick: bool) -> tuple[dict, int, float]:
    """Train once under cProfile: per-function (calls, self s, cumulative s), steps, total s."""
    workload = WORKLOAD_BUILDERS[workload_name](quick)
    run = load_setup(impl)(workload)
    profiler = cProfile.Profile()
    # Progress printed by the loop goes to stderr, keeping stdout a clean markdown report.
    with contextlib.redirect_stdout(sys.stderr):
        profiler.enable()
        run()
        profiler.disable()
    stats = pstats.Stats(profiler)
    functions = {
        key: (primitive_calls, self_seconds, cumulative_seconds)
        for key, (primitive_calls, _, self_seconds, cumulative_seconds, _) in stats.stats.items()
    }
    return functions, workload.num_steps, stats.total_tt


def describe(key: FunctionKey) -> str:
    filename, line, name = key
    if filename == "~":  # a builtin or C method
        return f"`{name}`"
    for marker in ("site-packages/", "/src/", "/lib/python"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"`{name}` ({filename}:{line})"


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def top_table(functions: dict, num_steps: int, top: int) -> str:
    ranked = sorted(functions.items(), key=lambda item: item[1][1], reverse=True)[:top]
    rows = [
        [
            describe(key),
            f"{calls / num_steps:.2f}",
            f"{self_s / num_steps * 1e6:.1f}",
            f"{cumulative_s / num_steps * 1e6:.1f}",
        ]
        for key, (calls, self_s, cumulative_s) in ranked
    ]
    return table(rows, ["function", "calls/step", "self µs/step", "cumulative µs/step"])


def difference_table(functions: dict, reference: dict, num_steps: int, top: int) -> str:
    keys = set(functions) | set(reference)

    def self_us(stats: dict, key: FunctionKey) -> float:
        return stats.get(key, (0, 0.0, 0.0))[1] / num_steps * 1e6

    def calls(stats: dict, key: FunctionKey) -> float:
        return stats.get(key, (0, 0.0, 0.0))[0] / num_steps

    ranked = sorted(
        keys, key=lambda key: abs(self_us(functions, key) - self_us(reference, key)), reverse=True
    )[:top]
    rows = [
        [
            describe(key),
            f"{calls(functions, key):.2f} / {calls(reference, key):.2f}",
            f"{self_us(functions, key):.1f}",
            f"{self_us(reference, key):.1f}",
            f"{self_us(functions, key) - self_us(reference, key):+.1f}",
        ]
        for key in ranked
    ]
    return table(rows, ["function", "calls/step (impl / ref)", "impl µs", "ref µs", "difference"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=sorted(IMPLEMENTATIONS))
    parser.add_argument(
        "--reference", default="torch", choices=sorted(IMPLEMENTATIONS), help="compare with this"
    )
    parser.add_argument("--workload", default="mlp", choices=sorted(WORKLOAD_BUILDERS))
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    parser.add_argument("--quick", action="store_true", help="use the small quick-mode workload")
    parser.add_argument(
        "--only", help="keep only functions whose file path contains this, e.g. trainwright/"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    reference, num_steps, reference_total = profile_run(args.reference, args.workload, args.quick)
    functions, _, total = profile_run(args.impl, args.workload, args.quick)
    if args.only:
        functions = {key: value for key, value in functions.items() if args.only in key[0]}
        reference = {key: value for key, value in reference.items() if args.only in key[0]}
    print(f"## Profile of `{args.impl}` on `{args.workload}` ({num_steps:,} steps, cProfile)")
    print()
    print(
        f"Total under the profiler: `{args.impl}` {total / num_steps * 1e6:.0f} µs/step, "
        f"`{args.reference}` {reference_total / num_steps * 1e6:.0f} µs/step."
    )
    for title, text in (
        (f"Top functions of `{args.impl}` by self time", top_table(functions, num_steps, args.top)),
        (
            f"Top functions of `{args.reference}` by self time",
            top_table(reference, num_steps, args.top),
        ),
        (
            f"Largest differences in self time, `{args.impl}` minus `{args.reference}`",
            difference_table(functions, reference, num_steps, args.top),
        ),
    ):
        print(f"\n### {title}\n\n{text}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
