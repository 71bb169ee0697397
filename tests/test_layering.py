"""The engine (``tether._run``) imports none of what is built on it (issue 12: one lifecycle, no cycles).

Checked statically, lazy imports inside functions and ``TYPE_CHECKING`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tether"
BUILT_ON_THE_ENGINE = (
    "tether._agent",
    "tether._background_loop",
    "tether._cancel",
    "tether._sync",
    "tether.cli",
    "tether.client",
    "tether.distributed",
    "tether.server",
    "tether.storage",  # the engine defines the Storage protocol it needs (_run/_store.py)
    "tether.testing",
)


def imported_modules(path: Path) -> set[str]:
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted((SRC / "_run").glob("*.py")), ids=lambda p: p.name)
def test_the_engine_does_not_import_what_is_built_on_it(path: Path) -> None:
    bad = sorted(
        module
        for module in imported_modules(path)
        if any(module == top or module.startswith(top + ".") for top in BUILT_ON_THE_ENGINE)
    )
    assert bad == [], f"{path.name} imports {bad}"


def test_the_resolver_sees_relative_and_lazy_imports() -> None:
    found = imported_modules(SRC / "_run" / "_persist.py")
    assert "tether._run._store" in found and "tether._run._registry" in found
