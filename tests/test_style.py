"""The code base is ruff clean (lint and format), as CI requires."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*arguments: str) -> subprocess.CompletedProcess:
    executable = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    return subprocess.run([executable, *arguments], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    result = ruff("check", "src", "tests", "examples", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = ruff("format", "--check", "src", "tests", "examples", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
