"""Issue 12 item 11: a script that used the blocking API exits cleanly on CPython 3.11, 3.12 and 3.13.

At exit the background loop cancels its live runs (``source="shutdown"``) and stores them. CPython 3.12+
forbids new threads late in shutdown (and 3.12.0-3.12.2 in every exit hook, gh-113964), while storing a
run may need a thread: the run must be stored all the same and nothing printed. The other interpreters
come from ``make test`` (``.venv-other/3.12``, ``.venv-other/3.13``: pyenv's builds on this machine).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
import time
from tether import Agent
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

agent = Agent(name="a", model=ScriptedModel(["hi"], stall=30), storage=SqliteStorage(sys.argv[1]))
print(Agent(model=ScriptedModel(["ok"])).run("x").content)
stream = agent.run("go", stream=True, run_id="at-exit")
next(iter(stream))  # a live run on the background loop when the interpreter exits
time.sleep(float(sys.argv[2]))  # long enough, and the storage's idle worker thread is gone
print("exiting")
"""


def interpreter(version: str) -> str:
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable
    path = ROOT / ".venv-other" / version / "bin" / "python"
    if not path.exists():
        message = f"no CPython {version} venv at {path} (make test builds it from pyenv's {version})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_a_script_with_a_live_sync_run_exits_cleanly_and_stores_it(version: str, tmp_path: Path) -> None:
    python = interpreter(version)
    for idle in ("0", "3"):  # the thread a write needs is alive already, or must start at exit
        db = tmp_path / f"runs-{idle}.db"
        done = subprocess.run(
            [python, "-W", "error", "-c", SCRIPT, str(db), idle], capture_output=True, text=True, timeout=30
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "ok\nexiting\n", "")
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT status, cancel_source FROM tether_runs WHERE run_id = 'at-exit'"
            ).fetchone()
        assert row == ("CANCELLED", "shutdown")


READER_AT_EXIT = """
import sys, threading
from tether import Agent
from tether.testing import ScriptedModel

agent = Agent(model=ScriptedModel([f"w{i} " for i in range(1000)], delay=0.01))
started = threading.Event()

def reader():
    events = []
    try:
        for event in agent.run("bg", stream=True):
            events.append(event.event.value)
            started.set()
        sys.__stderr__.write(f"ended {events[-1]}\\n")
    except BaseException as exc:
        sys.__stderr__.write(f"raised {exc!r} after {events[-1]}\\n")
    sys.__stderr__.flush()

threading.Thread(target=reader, daemon=True).start()
started.wait()
"""


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_a_thread_reading_a_sync_stream_at_interpreter_exit_ends_cleanly(version: str) -> None:
    python = interpreter(version)
    done = subprocess.run(
        [python, "-W", "error", "-c", READER_AT_EXIT], capture_output=True, text=True, timeout=30
    )
    assert "raised" not in done.stderr, done.stderr
