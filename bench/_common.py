"""Shared by the bench scripts: the machine line, percentiles, and a loopback server in its own process.

The model server runs in a child process so that it does not share the measured process's GIL: a real
provider is on another machine, and an in-process server thread would add its own work to every figure.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tether.testing import LoopbackServer, RecordedRequest, Reply


def machine() -> str:
    """One line naming what the figures were measured on, and when."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {date.today()}"
    )


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of samples in seconds, as milliseconds; p99 is the nearest-rank value."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


RESULTS = Path(__file__).parent / "results"


def save(name: str, results: dict[str, object]) -> None:
    """Keep a script's figures (bench/results/NAME.json) for ``report.py``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _serve(conn: Connection) -> None:
    with LoopbackServer(conn.recv()) as server:
        conn.send(server.base_url)
        while True:
            command, argument = conn.recv()
            answer = None
            if command == "push":
                server.push(*argument)
            elif command == "default":
                server.default = argument
            elif command == "reset":
                server.reset()
            elif command == "requests":
                answer = [_lean(record) for record in server.requests]
            conn.send(answer)  # every command is answered, so the caller knows it took effect
            if command == "stop":
                return


def _lean(record: RecordedRequest) -> RecordedRequest:
    # The bodies (whole conversations) are not needed by the benches and would cost pickling time.
    record.body, record.reply = {}, None
    return record


class RemoteLoopback:
    """A `LoopbackServer` in a child process, scripted and observed over a pipe.

    ``recorded()`` returns the server's `RecordedRequest` list; its ``time.monotonic()`` stamps are
    comparable with this process's (one CLOCK_MONOTONIC per machine on Linux).
    """

    def __init__(self, reply: Reply) -> None:
        # A plain child process (not multiprocessing's spawn, which re-imports the caller's __main__).
        self._folder = tempfile.TemporaryDirectory()
        address = os.path.join(self._folder.name, "control")
        with Listener(address, family="AF_UNIX") as listener:
            self._process = subprocess.Popen([sys.executable, __file__, address])
            self._conn = listener.accept()
        self._conn.send(reply)
        if not self._conn.poll(30):
            raise RuntimeError("the loopback server process did not start")
        self.base_url: str = self._conn.recv()

    def _call(self, command: str, argument: Any = None) -> Any:
        self._conn.send((command, argument))
        return self._conn.recv()

    def push(self, *replies: Reply) -> None:
        self._call("push", replies)

    def set_default(self, reply: Reply) -> None:
        self._call("default", reply)

    def reset(self) -> None:
        self._call("reset")

    def recorded(self) -> list[RecordedRequest]:
        records: list[RecordedRequest] = self._call("requests")
        return records

    def close(self) -> None:
        if self._process.poll() is None:
            self._conn.send(("stop", None))
            self._conn.poll(10)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()
        self._folder.cleanup()

    def __enter__(self) -> RemoteLoopback:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    _serve(Client(sys.argv[1], family="AF_UNIX"))


def serve(
    folder: Path, target: str, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``tether serve TARGET OPTIONS`` on a free port, run in ``folder`` (the agents' module is there),
    with a SQLite store in it; the process and its URL once ``/health`` answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tether", "serve", target, "--port", str(port),
               "--storage", f"sqlite:///{folder / 'runs.db'}", *options]  # fmt: skip
    proc = subprocess.Popen(
        command,
        cwd=folder,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("tether serve did not start")
