"""The documentation builds without warnings, and its code examples run as written.

Conventions for code blocks in ``docs/*.md`` (see also the note on ``docs/index.md``):

- ````` ```python ````` (exactly that fence): a runnable example. Each one runs here, in a
  fresh namespace, with the test's temporary directory as the working directory, so it must
  be self-contained (its own imports and data) and fast (tiny tensors, one or two epochs).
- ````` ```py title="not run" ````` (or any other ``python``/``py`` fence whose title says
  "not run"): an example that cannot run in the test suite: it needs a GPU, a launcher,
  several machines or a network service, or it is a signature sketch. It is still compiled,
  so it must be valid Python.
- ``bash``, ``text``, ``yaml`` and other fences are not executed.

Any other ``python``/``py`` fence is an error, so that a block cannot be skipped by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)


def code_blocks() -> list[tuple[str, str, str]]:
    """(``page:line``, fence info, code) of every fenced block in the docs."""
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{page.relative_to(DOCS)}:{line}"
            blocks.append((where, match.group(1).strip(), match.group(2)))
    return blocks


def is_python(info: str) -> bool:
    return info.split(" ", 1)[0] in ("python", "py", "python3")


RUNNABLE = [(where, code) for where, info, code in code_blocks() if info == "python"]
NOT_RUN = [
    (where, info, code)
    for where, info, code in code_blocks()
    if is_python(info) and info != "python"
]


def test_docs_have_runnable_examples():
    assert len(RUNNABLE) >= 20, [where for where, _ in RUNNABLE]


@pytest.mark.parametrize(("where", "info", "code"), NOT_RUN, ids=[w for w, _, _ in NOT_RUN])
def test_not_run_blocks_are_marked_and_compile(where, info, code):
    assert 'title="not run' in info, (
        f'{where}: a Python block must be ```python (run) or ```py title="not run ..."; '
        f"got ```{info}"
    )
    compile(code, where, "exec")


@pytest.mark.parametrize(("where", "code"), RUNNABLE, ids=[where for where, _ in RUNNABLE])
def test_example_runs(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs_example__"}
    exec(compile(code, where, "exec"), namespace)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The site built once with ``mkdocs build --strict`` (every test here reads it)."""
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_mkdocs_build_strict(built_site):
    assert (built_site / "index.html").is_file()
    assert (built_site / "api" / "trainer" / "index.html").is_file()
    assert (built_site / "huggingface" / "index.html").is_file()


# Sphinx markup that mkdocstrings' Google style shows as it is written
RAW_SPHINX = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):(?:`|<code>)|\w::(?:<|\s|$)")


def test_api_pages_render_cross_references_and_examples(built_site):
    pages = sorted((built_site / "api").rglob("*.html"))
    assert len(pages) >= 10
    raw = {}
    for page in pages:
        found = RAW_SPHINX.findall(page.read_text())
        if found:
            raw[str(page.relative_to(built_site))] = sorted(set(found))
    assert not raw, f"raw Sphinx roles or literal blocks (`Example::`) in the API pages: {raw}"
    callbacks = (built_site / "api" / "callbacks" / "index.html").read_text()
    # cross-references are links, examples are highlighted code
    assert 'href="../trainer/#trainwright.trainer.Trainer.evaluate"' in callbacks
    example = callbacks.index("StopAfterTwoEpochs")  # in a docstring's Example section
    assert callbacks.rfind('<div class="highlight">', 0, example) > callbacks.rfind(
        "</pre>", 0, example
    )


def test_wide_tables_stay_within_the_page(built_site):
    css = (built_site / "stylesheets" / "extra.css").read_text()
    assert "overflow-x: auto" in css
    for page in ("api/trainer/index.html", "performance/index.html"):
        assert "stylesheets/extra.css" in (built_site / page).read_text(), page
