"""The public API: ``__all__`` is sorted and matches what ``tether`` exports."""

from __future__ import annotations

import tether
import tether.exceptions
import tether.models
import tether.testing

PINNED = {"Agent", "RunEvent", "RunStatus", "RunOutput", "cancel_run", "active_runs"}


def test_all_is_sorted_and_complete() -> None:
    lazy = vars(tether)["_WHERE"]  # tether imports its names when first used
    assert tether.__all__ == sorted(tether.__all__)
    assert set(tether.__all__) - {"__version__"} == set(lazy)
    assert all(getattr(tether, name) is not None for name in tether.__all__)
    for module in (tether.exceptions, tether.models, tether.testing):
        assert module.__all__ == sorted(module.__all__), module.__name__
        public = {name for name in vars(module) if not name.startswith("_")}
        public -= {"annotations"} | {n for n in public if type(vars(module)[n]).__name__ == "module"}
        assert set(module.__all__) - {"__version__"} == public, module.__name__


def test_the_console_script_starts_without_the_heavy_imports() -> None:
    import subprocess
    import sys

    heavy = "('openai', 'pydantic', 'anyio')"
    code = f"import sys, tether.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_pinned_names_and_values() -> None:
    assert set(tether.__all__) >= PINNED
    from tether.models.openai import OpenAIChat

    assert OpenAIChat().id == "gpt-5-mini"
    assert [e.value for e in tether.RunEvent] == [
        "RunStarted",
        "RunContent",
        "ToolCallStarted",
        "ToolCallCompleted",
        "RunCompleted",
        "RunCancelled",
        "RunError",
    ]
    assert [s.value for s in tether.RunStatus] == ["PENDING", "RUNNING", "COMPLETED", "CANCELLED", "ERROR"]


def test_exception_tree() -> None:
    from tether import exceptions as ex

    for name in ex.__all__:
        assert issubclass(getattr(ex, name), ex.TetherError)
        assert name in (ex.__doc__ or ""), f"{name} is missing from the tree in the docstring"
    assert issubclass(ex.ConfigurationError, ValueError)
    for name in ("ModelConnectionError", "ModelTimeoutError", "ModelStatusError", "ModelResponseError"):
        assert issubclass(getattr(ex, name), ex.ModelError)
