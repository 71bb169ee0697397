"""Every example runs (offline, on the loopback model), and so does the ``tether`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=ROOT,
    )


def test_cancel_run_example() -> None:
    proc = run("examples/cancel_run.py", "0.6")
    assert proc.returncode == 0, proc.stderr
    assert "Using offline: no OPENAI_API_KEY, using the built-in loopback model" in proc.stdout
    assert "cancel_run returned True" in proc.stdout
    assert "Status:   CANCELLED" in proc.stdout and "SUCCESS: the run was cancelled" in proc.stdout
    assert "Ember was a young dragon" in proc.stdout


def test_async_cancel_example() -> None:
    proc = run("examples/async_cancel.py", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "-> True" in proc.stdout and "[RunCancelled] status=CANCELLED" in proc.stdout


def test_await_run_example() -> None:
    proc = run("examples/await_run.py", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "status:  CANCELLED (user: took too long)" in proc.stdout
    assert "history: [('user', False), ('assistant', True)]" in proc.stdout


def test_tools_cancel_example() -> None:
    proc = run("examples/tools_cancel.py")
    assert proc.returncode == 0, proc.stderr
    assert "[tool] search_flights('Lisbon') was cancelled mid-flight" in proc.stdout
    assert "[tool] completed with error: Cancelled: user pressed stop" in proc.stdout
    assert "  tool      'Cancelled: user pressed stop'" in proc.stdout
    assert "Next run: COMPLETED: No problem, I stopped the search." in proc.stdout


def test_cli_demo() -> None:
    proc = run("-m", "tether", "demo", "--cancel-after", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "cancel_run returned True" in proc.stderr and ": CANCELLED" in proc.stderr
    assert proc.stdout.startswith("\n\nChapter 1.")


def test_cli_run_completes_against_an_endpoint(loopback_server) -> None:  # type: ignore[no-untyped-def]
    from tether.testing import Reply

    loopback_server.default = Reply(chunks=["Paris", " is", " the", " capital."])
    proc = run(
        "-m", "tether", "run", "Capital of France?", "--base-url", loopback_server.base_url, "--model", "m"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Paris is the capital."
    assert ": COMPLETED" in proc.stderr


def test_cli_run_reports_a_provider_error(loopback_server) -> None:  # type: ignore[no-untyped-def]
    from tether.testing import Reply

    loopback_server.default = Reply(status=503, error_message="try later")
    proc = run("-m", "tether", "run", "hi", "--base-url", loopback_server.base_url)
    assert proc.returncode == 1
    assert "HTTP 503: try later" in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_cli_run_ctrl_c_stops_gracefully_and_exits_130() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "tether", "run", "Tell me a story"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.read(40)  # wait until the answer is streaming
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Chapter 1." in first + out
    assert ": CANCELLED" in err and "interrupted from the terminal" in err and "kept" in err


def test_readme_example_runs(loopback_server) -> None:  # type: ignore[no-untyped-def]
    import re

    from tether.testing import Reply, story_chunks

    loopback_server.default = Reply(chunks=story_chunks(300), pace=0.01)
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None, "README lost its example"
    script = code.group(1).replace("call_later(3,", "call_later(0.3,")
    env = {**ENV, "OPENAI_BASE_URL": loopback_server.base_url}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("characters kept") and "CANCELLED" in proc.stdout
