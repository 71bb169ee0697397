"""Every way the ``tether`` command fails is one line on stderr and an exit code, never a traceback.

Real processes: ``python -m tether`` against a loopback OpenAI-compatible server, sent SIGINT or
given a pipe its reader closes; ``tether serve`` against unreachable storage, a port in use, a
missing extra.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.testing import LoopbackServer, Reply, story_chunks

HIDDEN = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TETHER_STORAGE_URL",
    "TETHER_REDIS_URL",
    "TETHER_SECURITY_KEY",
    "TETHER_SSE_KEEPALIVE",
)
ENV = {k: v for k, v in os.environ.items() if k not in HIDDEN}
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pipes")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command runs in a folder of its own: a default ``tether.db`` lands there."""
    monkeypatch.chdir(tmp_path)


def tether(*args: str, env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "tether", *args],
        env={**ENV, **(env or {})},
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def endpoint() -> Iterator[LoopbackServer]:
    with LoopbackServer(Reply(chunks=story_chunks(400), pace=0.005)) as server:
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_reader_that_closes_the_pipe_stops_the_run_one_line_exit_141(endpoint: LoopbackServer) -> None:
    read_end, write_end = os.pipe()
    proc = tether("run", "Tell me a story", "--base-url", endpoint.base_url, "--model", "m",
                  stdout=write_end, stderr=subprocess.PIPE)  # fmt: skip
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        head = reader.read(150)  # like `| head -c 150`, then the reader goes away
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 141, err
    lines = err.splitlines()
    assert lines[0] == f"tether: model m at {endpoint.base_url}"
    assert len(lines) == 2 and lines[1].startswith("tether: stopped run "), err
    assert lines[1].endswith(" chars") and ": the output was closed; kept " in lines[1]
    kept = int(lines[1].rsplit(" ", 2)[1])
    assert len(head) == 150 and kept >= 150
    wait_for(lambda: endpoint.requests and endpoint.requests[0].outcome == "disconnected")
    assert endpoint.requests[0].chunks_sent < 400  # the model stream was closed, not read to its end


def test_ctrl_c_while_the_model_connects_stops_the_run_and_exits_130(endpoint: LoopbackServer) -> None:
    endpoint.default = Reply(chunks=["never", " sent"], header_delay=30)
    proc = tether("run", "hi", "--base-url", endpoint.base_url, "--model", "m",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(lambda: len(endpoint.requests) == 1)  # the run started and is waiting for the model
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert out == ""
    lines = [line for line in err.splitlines() if line]
    assert lines[0] == f"tether: model m at {endpoint.base_url}"
    assert lines[1].startswith("--- run ") and lines[1].endswith(": CANCELLED")
    assert lines[2] == "--- cancelled by user (interrupted from the terminal); kept 0 chars"
    assert len(lines) == 3 and "Traceback" not in err


def test_ctrl_c_between_start_and_run_is_never_a_traceback(endpoint: LoopbackServer) -> None:
    """SIGINT right after the first line, before or after the run's own handler is in place."""
    endpoint.default = Reply(chunks=["x"], header_delay=30)
    proc = tether("run", "hi", "--base-url", endpoint.base_url, "--model", "m",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # printed in main, before the agent exists
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert first == f"tether: model m at {endpoint.base_url}\n"
    assert "Traceback" not in err
    assert err.splitlines()[-1] in (
        "tether: interrupted",
        "--- cancelled by user (interrupted from the terminal); kept 0 chars",
    )


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = tether("serve", *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_serve_with_an_unreachable_postgres_is_one_line_exit_3() -> None:
    port = closed_port()
    proc = serve("--storage", f"postgresql://postgres@127.0.0.1:{port}/test", "--port", str(closed_port()))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == (
        f"tether: could not connect to PostgreSQL at 127.0.0.1:{port}/test: "
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})\n"
    )


def test_serve_with_workers_and_an_unreachable_postgres_is_one_line_exit_3() -> None:
    port = closed_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    proc = serve("--storage", url, "--workers", "2", "--port", str(closed_port()))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"tether: could not connect to PostgreSQL at 127.0.0.1:{port}/test")


def test_serve_on_a_port_in_use_is_one_line_exit_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--port", str(port))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == f"tether: cannot listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "http://redis.example"], "tether: ValueError: Redis URL must specify one of the"),
        (["--storage", "sqlite:////no/such/folder/x.db"], "tether: the folder of SQLite file "),
    ],
)
def test_serve_with_a_bad_url_is_one_line(args: list[str], message: str) -> None:
    proc = serve(*args, "--port", str(closed_port()))
    assert proc.returncode in (2, 3), proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr


def test_a_bad_sse_keepalive_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--sse-keepalive", "soon"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --sse-keepalive: must be a number of seconds (got 'soon')\n"
    )
    proc = serve("--port", str(closed_port()), env={"TETHER_SSE_KEEPALIVE": "-3"})
    assert (proc.returncode, proc.stderr) == (
        2,
        "tether: TETHER_SSE_KEEPALIVE must be a number of seconds >= 0 (got '-3')\n",
    )


@pytest.mark.parametrize(
    ("blocked", "args", "line", "code"),
    [
        ("asyncpg", ["--storage", "postgresql://x@127.0.0.1/db"],
         "PostgresStorage needs asyncpg: pip install 'tether[postgres]'", 2),
        ("uvicorn", [], "serve needs the server extra: pip install 'tether[server]' "
         "(import of uvicorn halted; None in sys.modules)", 2),
    ],
)  # fmt: skip
def test_serve_without_an_extra_names_it(blocked: str, args: list[str], line: str, code: int) -> None:
    script = (
        f"import sys; sys.modules[{blocked!r}] = None; from tether.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-W", "error", "-c", script, "serve", *args, "--port", str(closed_port())]
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == f"tether: {line}\n"


def test_serve_with_an_unreachable_redis_says_so_in_one_line_and_serves() -> None:
    import httpx

    redis_url = f"redis://127.0.0.1:{closed_port()}/0"
    port = closed_port()
    proc = tether("serve", "--redis-url", redis_url, "--port", str(port),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if redis_url in line]) == 1, err


def test_tether_demo_into_a_closed_pipe_is_one_line_exit_141() -> None:
    read_end, write_end = os.pipe()
    proc = tether("demo", "--cancel-after", "20", stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read(100).startswith(b"\n\nChapter 1.")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 141, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("tether demo: offline"), err
    assert lines[1].startswith("tether: stopped run demo-") and ": the output was closed; kept " in lines[1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_signal_while_the_storage_connects_stops_at_once(sig: signal.Signals, code: int) -> None:
    """PostgreSQL that accepts the connection and never answers: the signal does not wait for it."""
    connected = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as silent:

        def accept() -> None:
            conn, _ = silent.accept()
            with conn:
                connected.set()
                while conn.recv(1024):  # until the client goes away; never an answer
                    pass

        thread = threading.Thread(target=accept, name="silent-postgres")
        thread.start()
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        proc = tether("serve", "--storage", url, "--port", str(closed_port()),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert connected.wait(20)
        proc.send_signal(sig)
        started = time.monotonic()
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 3  # not the connect timeout
        thread.join(10)
    assert (proc.returncode, err) == (code, "tether: stopped before the server started\n")


@pytest.mark.parametrize(
    "loaded", ["argparse", "asyncio", "tether.cli", "anyio", "pydantic", "tether._agent"]
)
def test_ctrl_c_while_the_command_loads_is_one_line(endpoint: LoopbackServer, loaded: str) -> None:
    """The console script counts Ctrl-C before it imports anything heavy (tether itself loads lazily).

    The signal goes out just after ``loaded`` was imported (Python reports each import as it ends with
    PYTHONPROFILEIMPORTTIME), so each case hits the same point of the start-up however busy the machine
    is. (A Ctrl-C during Python's own start-up, before any of tether runs, is Python's to report.)
    """
    endpoint.default = Reply(chunks=["x"], header_delay=30)
    proc = tether("run", "hi", "--base-url", endpoint.base_url, "--model", "m",
                  env={"PYTHONPROFILEIMPORTTIME": "1"},
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == loaded:
            break
    else:
        raise AssertionError(f"{loaded} was never imported")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 130 and "Traceback" not in err, said
    # Before the run starts: one line; once it runs, Ctrl-C is the run's cancel and says so.
    assert said[-1] == "tether: interrupted" or said[-1].startswith("--- cancelled by user"), said


def test_ctrl_c_while_the_model_answers_is_one_line(endpoint: LoopbackServer) -> None:
    endpoint.default = Reply(chunks=["x"], header_delay=30)
    proc = tether("run", "hi", "--base-url", endpoint.base_url, "--model", "m",
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert endpoint.wait_until(lambda server: len(server.requests) == 1, timeout=20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines()[-1] == "--- cancelled by user (interrupted from the terminal); kept 0 chars"
