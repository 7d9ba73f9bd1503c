"""A test that fails in the middle of a launch leaves no trace for the tests after it: the
suite's guard (tests/helpers/environment_guard.py) gives each test the environment it started
with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# What a launch in this process looks like to the tests after it, had it failed half-way:
# the variables torch.distributed reads are set, one the user had is changed, one removed.
FAILED_LAUNCH_THEN_A_CHECK = """
import os

def test_a_launch_that_fails_half_way():
    os.environ.update(WORLD_SIZE="2", RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29555")
    os.environ["TRAINWRIGHT_USER_SETTING"] = "changed"
    del os.environ["TRAINWRIGHT_USER_REMOVED"]
    raise RuntimeError("the launched processes failed")

def test_the_next_test_sees_the_environment_it_started_with():
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert name not in os.environ, name
    assert os.environ["TRAINWRIGHT_USER_SETTING"] == "kept"
    assert os.environ["TRAINWRIGHT_USER_REMOVED"] == "kept"
"""


def test_a_failed_launch_does_not_leak_its_environment_into_later_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRAINWRIGHT_USER_SETTING", "kept")
    monkeypatch.setenv("TRAINWRIGHT_USER_REMOVED", "kept")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    pytester.makepyfile(FAILED_LAUNCH_THEN_A_CHECK)

    # The suite's guard as the only plugin of a session of its own, in a process of its own.
    result = pytester.runpytest_subprocess(
        "-p", "helpers.environment_guard", "-p", "no:cacheprovider"
    )

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the launched processes failed*"])
