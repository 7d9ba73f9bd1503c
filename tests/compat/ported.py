"""Runs a script written for pytorch-accelerated with only its imports changed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def port(name: str) -> types.ModuleType:
    """Load ``scripts/<name>.py`` with ``pytorch_accelerated`` replaced by ``trainwright`` in
    its import lines, and nothing else changed."""
    path = SCRIPTS / f"{name}.py"
    lines = path.read_text().splitlines(keepends=True)
    ported = "".join(
        line.replace("pytorch_accelerated", "trainwright")
        if line.lstrip().startswith(("from pytorch_accelerated", "import pytorch_accelerated"))
        else line
        for line in lines
    )
    module = types.ModuleType(f"ported_{name}")
    module.__file__ = str(path)
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    exec(compile(ported, str(path), "exec"), module.__dict__)
    return module
