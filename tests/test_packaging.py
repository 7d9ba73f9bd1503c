"""The built wheel carries the license, the type marker and the metadata a package index
shows; the extras are split by what they bring and the test extra is made of them."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the sources (the build leaves files behind)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # The backend runs as pip would run it, minus the isolated environment (the test extra
    # installs a recent enough setuptools).
    build = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    result = subprocess.run(
        [sys.executable, "-c", build], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name = result.stdout.strip().splitlines()[-1]
    return zipfile.ZipFile(source / "dist" / name)


def wheel_metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    return email.message_from_bytes(wheel.read("trainwright-0.1.0.dist-info/METADATA"))


def test_the_wheel_ships_the_license_and_the_type_marker(wheel):
    names = set(wheel.namelist())
    assert "trainwright/py.typed" in names
    assert "trainwright-0.1.0.dist-info/licenses/LICENSE" in names
    license_text = wheel.read("trainwright-0.1.0.dist-info/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_the_metadata_declares_license_classifiers_and_urls(wheel):
    metadata = wheel_metadata(wheel)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression rules
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())


def test_the_metadata_declares_every_extra(wheel):
    extras = set(wheel_metadata(wheel).get_all("Provides-Extra"))
    expected = {"tensorboard", "mlflow", "plot", "rich", "notebook", "loggers", "examples"}
    assert expected | {"bench", "docs", "test"} == extras


def self_referenced_extras(requirements: list[str]) -> set[str]:
    """The extras of trainwright named as ``trainwright[a,b]`` in ``requirements``."""
    named = set()
    for requirement in requirements:
        if requirement.startswith("trainwright["):
            named.update(requirement[len("trainwright[") : requirement.index("]")].split(","))
    return named


def expand(extra: str) -> set[str]:
    """Every requirement ``extra`` brings, through the extras it names."""
    requirements = set()
    for requirement in EXTRAS[extra]:
        if requirement.startswith("trainwright["):
            for named in self_referenced_extras([requirement]):
                requirements |= expand(named)
        else:
            requirements.add(requirement)
    return requirements


def test_each_capability_extra_brings_only_its_own_packages():
    assert EXTRAS["tensorboard"] == ["tensorboard>=2.14"]
    assert EXTRAS["mlflow"] == ["mlflow>=2.10"]
    assert EXTRAS["plot"] == ["matplotlib>=3.7"]
    assert EXTRAS["rich"] == ["rich>=13"]
    assert expand("notebook") == {"ipywidgets>=8", "matplotlib>=3.7"}
    assert self_referenced_extras(EXTRAS["loggers"]) == {"tensorboard", "mlflow", "plot", "rich"}


def test_the_test_extra_is_composed_of_the_others():
    composed = self_referenced_extras(EXTRAS["test"])
    assert {"examples", "loggers", "notebook", "docs"} <= composed
    tested = expand("test")
    for extra in ("tensorboard", "mlflow", "plot", "rich", "notebook", "examples", "docs"):
        assert expand(extra) <= tested, extra
    # what only the tests need is listed beside the extras, not copied from them
    own = {name for name in EXTRAS["test"] if not name.startswith("trainwright")}
    assert not own & set().union(*(expand(extra) for extra in composed))


def test_ci_runs_the_suite_on_the_declared_floors():
    """.ci/run's second environment installs torch, accelerate and tqdm at exactly the floors
    pyproject.toml declares, and the install instructions name the same floors."""
    floors = dict(requirement.split(">=") for requirement in PYPROJECT["project"]["dependencies"])
    assert set(floors) == {"torch", "accelerate", "tqdm"}
    floors_command = next(
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "accelerate==" in line
    )
    for name, floor in floors.items():
        assert f" {name}=={floor}.0 " in floors_command, (name, floors_command)
    assert floors_command.endswith("&& python -m pytest")
    for page in ("README.md", "docs/index.md"):
        text = (ROOT / page).read_text()
        for name, floor in floors.items():
            assert f"`{name}>={floor}`" in text, (page, name)
