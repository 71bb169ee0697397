"""pyproject.toml's lower bounds are the versions ``make test-lowest`` installs, and cover the imports."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_EXTRAS = ("postgres", "server", "client", "redis")
# Import name -> distribution, where they differ.
DISTRIBUTIONS = {
    "pydantic_core": "pydantic-core",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "httpx_sse": "httpx-sse",
}


def declared() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{text}: give exactly one lower bound (>=)"
        bounds[requirement.name] = lower[0]
    return bounds


def pinned() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip()] = Version(version.strip())
    return pins


def test_every_declared_dependency_is_pinned_at_its_lower_bound() -> None:
    assert pinned() == declared()


def test_every_third_party_import_is_declared() -> None:
    imported = set()
    for path in (ROOT / "src" / "tether").rglob("*.py"):
        if "testing" in path.parts:  # the test kit may use pytest: it is only loaded by pytest
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "tether"}
    assert {DISTRIBUTIONS.get(name, name) for name in third_party} <= set(declared())
