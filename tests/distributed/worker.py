"""Runs scenarios of ``distributed_scenarios``, ``resume_scenarios`` and
``sharding_scenarios`` in every process of a ``torchrun`` launch.

Usage: ``torchrun --nproc_per_node 2 worker.py OUT_DIR SPECS_JSON``, where ``SPECS_JSON`` is a
list of ``[key, scenario_name, kwargs]``. Each process writes ``OUT_DIR/rank<r>.json``, a
dictionary of results by key, rewritten after every scenario so that what finished before a
failure is kept, and ``OUT_DIR/pid.rank<r>`` (its process id, to kill it if it hangs).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The scenarios share runs with the single-process tests (resume_job, accumulation_cases),
# which live in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distributed_scenarios import SCENARIOS


def main(out_dir: str, specs_json: str) -> None:
    rank = int(os.environ["RANK"])
    results_path = Path(out_dir) / f"rank{rank}.json"
    # Lets the launcher kill this process if the run hangs.
    (Path(out_dir) / f"pid.rank{rank}").write_text(str(os.getpid()))
    scenarios = _all_scenarios()
    results: dict[str, object] = {}
    for key, scenario_name, kwargs in json.loads(specs_json):
        results[key] = scenarios[scenario_name](**kwargs)
        results_path.write_text(json.dumps(results))


def _all_scenarios() -> dict[str, Callable[..., dict[str, Any]]]:
    from multinode_scenarios import MULTINODE_SCENARIOS
    from resume_scenarios import RESUME_SCENARIOS
    from sharding_scenarios import SHARDING_SCENARIOS

    return {**SCENARIOS, **RESUME_SCENARIOS, **SHARDING_SCENARIOS, **MULTINODE_SCENARIOS}


if __name__ == "__main__":
    main(*sys.argv[1:])
