"""Cross-worker cancel latency through Redis, next to in-process cancel latency, over HTTP.

Two ``tether serve`` processes share Redis and a SQLite file. A run streams from server A; the cancel
goes to A itself (in-process) or to server B (cross-worker, delivered through Redis). Measured: the
POST cancel is sent -> the stream from A delivers ``RunCancelled``. Needs Redis (TETHER_REDIS_URL).

    .venv/bin/python bench/cross_worker_cancel.py [TRIALS]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _common import machine, percentiles, save, serve

REDIS = os.environ.get("TETHER_REDIS_URL", "redis://127.0.0.1:6379/0")
MODULE = """
from tether import Agent
from tether.testing import ScriptedModel
slow = Agent(name="Slow", model=ScriptedModel([f"w{i} " for i in range(100000)], delay=0.05))
"""


def start(folder: Path, prefix: str) -> tuple[subprocess.Popen[bytes], str]:
    return serve(folder, "bench_agents:slow", "--redis-url", REDIS, env={"TETHER_REDIS_PREFIX": prefix})


def trial(streamer: httpx.Client, canceller: httpx.Client) -> float:
    run_id = uuid.uuid4().hex
    with streamer.stream("POST", "/agents/slow/runs", data={"message": "go", "run_id": run_id}) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: RunContent"):
                break
        sent = time.perf_counter()
        canceller.post(f"/agents/slow/runs/{run_id}/cancel?wait=0")
        for line in lines:
            if line.startswith("event: RunCancelled"):
                return time.perf_counter() - sent
    raise AssertionError("no RunCancelled")


def main(trials: int) -> None:
    folder = Path(tempfile.mkdtemp())
    (folder / "bench_agents.py").write_text(MODULE)
    prefix = f"tether-bench-{uuid.uuid4().hex[:8]}:"
    (a, url_a), (b, url_b) = start(folder, prefix), start(folder, prefix)
    try:
        with (
            httpx.Client(base_url=url_a, timeout=30) as client_a,
            httpx.Client(base_url=url_b, timeout=30) as client_b,
        ):
            local = [trial(client_a, client_a) for _ in range(trials)]
            remote = [trial(client_a, client_b) for _ in range(trials)]
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    (l50, l99), (r50, r99) = percentiles(local), percentiles(remote)
    print(f"cancel over HTTP, {trials} trials; {machine()}")
    print(f"{'path':<14}{'p50':>10}{'p99':>10}")
    print(f"{'in-process':<14}{l50:>8.2f}ms{l99:>8.2f}ms")
    print(
        f"{'cross-worker':<14}{r50:>8.2f}ms{r99:>8.2f}ms   ({r50 / l50:.2f}x / {r99 / l99:.2f}x in-process)"
    )
    save("cross_worker_cancel", {"machine": machine(), "in-process": local, "cross-worker": remote})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
