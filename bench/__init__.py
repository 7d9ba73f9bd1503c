"""Benchmarks comparing trainwright's training loop with hand-written loops and other libraries.

Run ``python bench/run_bench.py --help`` from the repository root; see ``bench/README.md``.
"""
