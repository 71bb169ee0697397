"""``tether serve`` as real processes: demo, module targets, auth, SIGTERM, ``--workers``, bad targets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tether import RunOutput, RunStatus
from tether.storage import SqliteStorage

from .conftest import frames_of

HIDDEN = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TETHER_STORAGE_URL",
    "TETHER_SECURITY_KEY",
    "TETHER_SERVE_TARGET",
    "TETHER_SSE_KEEPALIVE",
)
ENV = {k: v for k, v in os.environ.items() if k not in HIDDEN}
STARTUP = 20.0

MODULE = """
from tether import Agent
from tether.server import create_app
from tether.storage import SqliteStorage
from tether.testing import ScriptedModel

quick = Agent(name="Quick", description="Answers at once",
              model=ScriptedModel(["Hello", " from", " a", " module."], delay=0.01))
slow = Agent(name="Slow", description="Tells a long story",
             model=ScriptedModel([f"word{i} " for i in range(3000)], delay=0.01))
stalled = Agent(name="Stalled", model=ScriptedModel(["Hel", "lo"], stall=60, stall_at=1))
agents = [quick, slow]
app = create_app(Agent(name="Appy", model=ScriptedModel(["From", " the", " app."])),
                 storage=SqliteStorage("app.db"), security_key="app-key")
number = 42
empty = []
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with ``agents_mod.py`` (agents and an app) and ``broken.py`` (fails on import)."""
    (tmp_path / "agents_mod.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    return tmp_path


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tether(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-W", "error", "-m", "tether", *args]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@contextmanager
def serving(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``tether serve ARGS`` on a free port, up (``/health`` answers); killed with its group at the end."""
    port = free_port()
    log_path = cwd / f"serve-{port}.log"
    with log_path.open("wb") as log:
        command = [sys.executable, "-W", "error", "-m", "tether", "serve", *args, "--port", str(port)]
        # A session of its own: the finally below can kill workers too if the test failed halfway.
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env={**ENV, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        served = Served(proc, port, log_path)
        try:
            _wait_up(served)
            yield served
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _wait_up(served: Served) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"tether serve exited with {served.proc.returncode}:\n{served.log()}")
        with suppress(httpx.TransportError):
            if httpx.get(f"{served.url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"tether serve did not answer /health within {STARTUP} s:\n{served.log()}")


def sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """The client side of SSE: pair each frame's ``event:`` and ``data:`` lines, yield at the blank line."""
    event: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif not line and event is not None:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def start_stream(
    client: httpx.Client, agent_id: str, contents: int
) -> tuple[httpx.Response, Iterator[tuple[str, dict[str, Any]]], str, list[str]]:
    """POST a streaming run as a form (as Agno's client does); read RunStarted and ``contents`` deltas."""
    request = client.build_request(
        "POST", f"/agents/{agent_id}/runs", data={"message": "hi", "stream": "true"}
    )
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    name, started = next(events)
    assert name == "RunStarted"
    deltas: list[str] = []
    for name, data in events:
        assert name == "RunContent", (name, data)
        deltas.append(data["content"])
        if len(deltas) == contents:
            break
    return response, events, started["run_id"], deltas


def finish_stream(
    events: Iterator[tuple[str, dict[str, Any]]], deltas: list[str]
) -> tuple[str, dict[str, Any]]:
    """Read the stream to its end, adding the deltas; the last event."""
    rest = list(events)
    assert rest, "the stream ended without a final event"
    deltas += [data["content"] for name, data in rest if name == "RunContent"]
    return rest[-1]


def stored_run(db: Path, run_id: str) -> RunOutput | None:
    async def read() -> RunOutput | None:
        storage = SqliteStorage(db)
        await storage.open()
        try:
            return await storage.get_run(run_id)
        finally:
            await storage.aclose()

    return anyio.run(read)


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes (spawned by multiprocessing) whose parent is ``parent``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_mode_streams_and_a_second_client_cancels(tmp_path: Path) -> None:
    with serving(cwd=tmp_path) as server:
        log = server.log()
        assert "tether: no MODULE:ATTR given: serving a demo agent on offline" in log
        assert f"tether: serving agents storyteller on http://127.0.0.1:{server.port}\n" in log
        with (
            httpx.Client(base_url=server.url, timeout=15) as client,
            httpx.Client(base_url=server.url) as other,
        ):
            assert client.get("/agents").json() == [
                {"id": "storyteller", "name": "Storyteller", "description": "Writes long stories"}
            ]
            response, events, run_id, deltas = start_stream(client, "storyteller", contents=5)
            with closing(response):
                cancel = other.post(f"/agents/storyteller/runs/{run_id}/cancel", timeout=15)
                assert cancel.status_code == 200, cancel.text
                assert cancel.json() == {"run_id": run_id, "agent_id": "storyteller", "status": "CANCELLED"}
                name, last = finish_stream(events, deltas)
        assert name == "RunCancelled" and last["source"] == "user"
        assert last["content"] == "".join(deltas) and len(deltas) >= 5
        assert (tmp_path / "tether.db").exists()  # the default store, in the current directory


def test_module_agent_with_storage_and_security_key(project: Path) -> None:
    db = project / "runs.db"
    with serving(
        "agents_mod:quick", "--storage", f"sqlite:///{db}", "--security-key", "k", cwd=project
    ) as server:
        assert "tether: serving agents quick on " in server.log()
        with httpx.Client(base_url=server.url, timeout=15) as anonymous:
            assert anonymous.get("/health").status_code == 200
            denied = anonymous.get("/agents")
            assert denied.status_code == 401
            assert denied.json() == {
                "detail": "Authorization header required",
                "error_code": "UNAUTHENTICATED",
            }
            assert anonymous.get("/agents", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with httpx.Client(base_url=server.url, timeout=15, headers={"Authorization": "Bearer k"}) as client:
            assert [a["id"] for a in client.get("/agents").json()] == ["quick"]
            form = {
                "message": (None, "hi"),
                "stream": (None, "false"),
            }  # multipart, as Agno's client may send
            run = client.post("/agents/quick/runs", files=form).json()
            assert run["status"] == "COMPLETED" and run["content"] == "Hello from a module."
            assert client.get(f"/agents/quick/runs/{run['run_id']}").json()["status"] == "COMPLETED"
    stored = stored_run(db, run["run_id"])
    assert stored is not None and stored.status is RunStatus.completed


def test_module_list_of_agents_and_app_from_create_app(project: Path) -> None:
    with serving("agents_mod:agents", cwd=project) as listed, serving("agents_mod:app", cwd=project) as made:
        assert [a["id"] for a in httpx.get(f"{listed.url}/agents").json()] == ["quick", "slow"]
        assert "tether: serving agents appy on " in made.log()
        assert httpx.get(f"{made.url}/agents").status_code == 401  # the app's own security_key
        with httpx.Client(
            base_url=made.url, timeout=15, headers={"Authorization": "Bearer app-key"}
        ) as client:
            assert [a["id"] for a in client.get("/agents").json()] == ["appy"]
            run = client.post("/agents/appy/runs", data={"message": "hi", "stream": "false"}).json()
            assert run["status"] == "COMPLETED" and run["content"] == "From the app."
    assert (project / "app.db").exists()


def test_sigterm_cancels_a_streaming_run_stores_it_and_exits_0(project: Path) -> None:
    db = project / "runs.db"
    with serving("agents_mod:slow", "--storage", f"sqlite:///{db}", cwd=project) as server:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            response, events, run_id, deltas = start_stream(client, "slow", contents=5)
            with closing(response):
                server.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                name, last = finish_stream(events, deltas)
            ended = time.monotonic() - signalled
        assert server.proc.wait(10) == 0
        exited = time.monotonic() - signalled
        log = server.log()
    assert name == "RunCancelled" and last["source"] == "shutdown", last
    assert last["reason"] == "server shutting down" and last["content"] == "".join(deltas)
    assert ended < 2 and exited < 10, (ended, exited)
    assert "Traceback" not in log and "ERROR" not in log, log
    stored = stored_run(db, run_id)
    assert stored is not None and stored.status is RunStatus.cancelled
    assert (stored.cancel_source, stored.cancel_reason) == ("shutdown", "server shutting down")
    assert stored.content == "".join(deltas)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_sigterm_stores_a_background_run_and_a_silent_stream_gets_keep_alives(project: Path) -> None:
    db = project / "runs.db"
    args = ("agents_mod:stalled", "--storage", f"sqlite:///{db}", "--sse-keepalive", "0.05")
    with serving(*args, cwd=project) as server, httpx.Client(base_url=server.url, timeout=15) as client:
        form = {"message": "hi", "stream": "false", "background": "true", "run_id": "r-bg"}
        assert client.post("/agents/stalled/runs", data=form).status_code == 202
        with client.stream("GET", "/agents/stalled/runs/r-bg/events") as response:
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(8)]  # RunStarted and RunContent: 4 lines each
            while seen.count(": keep-alive") < 2:  # the model stalls: the stream gets comments
                seen.append(next(lines))
            server.proc.send_signal(signal.SIGTERM)
            seen += list(lines)
        assert server.proc.wait(10) == 0
    frames = frames_of(seen)
    assert [(f.id, f.event, f.comment) for f in frames if f.comment is None] == [
        (0, "RunStarted", None),
        (1, "RunContent", None),
        (2, "RunCancelled", None),
    ]
    assert (frames[-1].data["source"], frames[-1].data["content"]) == ("shutdown", "Hel")
    stored = stored_run(db, "r-bg")
    assert stored is not None and (stored.status, stored.cancel_source) == (RunStatus.cancelled, "shutdown")


def test_workers_serve_and_sigterm_stops_every_process(tmp_path: Path) -> None:
    with serving("--workers", "2", cwd=tmp_path) as server:
        deadline = time.monotonic() + STARTUP
        while len(workers := worker_pids(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2, server.log()
        for _ in range(4):
            assert [a["id"] for a in httpx.get(f"{server.url}/agents").json()] == ["storyteller"]
        assert "with 2 workers" in server.log()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0, server.log()
        assert not [pid for pid in workers if is_running(pid)]
        assert port_is_free(server.port)


def test_workers_each_cancel_their_streaming_runs_on_sigterm(project: Path) -> None:
    db = project / "runs.db"
    streams = 4  # over 2 workers: the kernel hands connections to whichever worker accepts first
    reading = threading.Barrier(streams + 1, timeout=20)

    def watch(server: Served) -> tuple[str, list[str], tuple[str, dict[str, Any]]]:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            response, events, run_id, deltas = start_stream(client, "slow", contents=3)
            with closing(response):
                reading.wait()
                return run_id, deltas, finish_stream(events, deltas)

    args = ("agents_mod:slow", "--workers", "2", "--storage", f"sqlite:///{db}")
    with serving(*args, cwd=project) as server, ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(watch, server) for _ in range(streams)]
        reading.wait()
        server.proc.send_signal(signal.SIGTERM)
        results = [future.result(timeout=20) for future in futures]
        assert server.proc.wait(15) == 0, server.log()
    for run_id, deltas, (name, last) in results:
        assert name == "RunCancelled" and last["source"] == "shutdown", last
        assert last["content"] == "".join(deltas)
        stored = stored_run(db, run_id)
        assert (
            stored is not None and stored.status is RunStatus.cancelled and stored.cancel_source == "shutdown"
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agents_mod"], "bad target 'agents_mod': expected MODULE:ATTR"),
        (["no_such_module_xyz:agent"], "no module named 'no_such_module_xyz'"),
        (["agents_mod:missing"], "module 'agents_mod' has no attribute 'missing'"),
        (
            ["agents_mod:number"],
            "agents_mod:number must be an Agent, a list of Agents or an app from create_app (got int)",
        ),
        (["agents_mod:empty"], "(got list)"),
        (["broken:agent"], "importing 'broken' failed: RuntimeError: boom"),
        (["agents_mod:app", "--storage", "sqlite:///x.db"], "agents_mod:app is an app from create_app"),
        (["agents_mod:quick", "--storage", "mysql://db"], "unsupported storage URL 'mysql://db'"),
    ],
)
def test_a_bad_target_is_one_line_and_exit_2(project: Path, args: list[str], message: str) -> None:
    proc = tether("serve", *args, "--port", str(free_port()), cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tether: "), proc.stderr
    assert message in proc.stderr
