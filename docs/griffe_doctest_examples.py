"""A griffe extension for the API reference: reads an ``Example:`` section that holds doctest
lines (``>>>``) as an ``Examples:`` section, so that the doctests render as code.

Google-style parsing knows only the plural title; the singular one would otherwise become a
note whose ``>>>`` lines render as nested quotes. Docstrings in ``src/`` are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR_EXAMPLE = re.compile(r"^(\s*)Example:(\s*\n\s*>>>)", flags=re.MULTILINE)


class DoctestExamples(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _SINGULAR_EXAMPLE.sub(r"\1Examples:\2", docstring.value)
