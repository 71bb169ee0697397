"""Resume latency over HTTP: a client reconnects to a live run and waits for the first event it missed.

One ``tether serve`` process. A background run streams a word every 5 ms; the client reads it through
``GET /agents/{id}/runs/{run_id}/events``, leaves after a few events, waits until it has missed some, and
reconnects with ``Last-Event-ID``. Measured: the reconnecting request is sent -> its first event (a
missed one) is read. Baseline in the same run: a new streaming run's request is sent -> its first event
(``RunStarted``), over the same kind of connection. Median and p99 of TRIALS, each figure the median of
PASSES passes with the spread (min-max of the pass medians).

    .venv-bench/bin/python bench/resume_latency.py [TRIALS]
"""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import machine, percentiles, save, serve

PASSES = 3
MODULE = """
from tether import Agent
from tether.testing import ScriptedModel
paced = Agent(name="Paced", model=ScriptedModel([f"w{i} " for i in range(400)], delay=0.005))
"""


def first_event(client: httpx.Client, method: str, path: str, **request: object) -> tuple[float, int]:
    """Seconds from sending the request to its first event, and that event's index."""
    sent = time.perf_counter()
    with client.stream(method, path, **request) as response:  # type: ignore[arg-type]
        for line in response.iter_lines():
            if line.startswith("id:"):
                return time.perf_counter() - sent, int(line[3:])
    raise AssertionError("no event")


def trial(client: httpx.Client) -> tuple[float, float]:
    form = {"message": "go", "background": "true", "stream": "false"}
    started = client.post("/agents/paced/runs", data=form)
    run_id = started.json()["run_id"]
    events = f"/agents/paced/runs/{run_id}/events"
    _, seen = first_event(client, "GET", events)  # a client that reads, then its tab reloads
    time.sleep(0.05)  # ~10 events go out meanwhile
    resume, index = first_event(client, "GET", events, headers={"Last-Event-ID": str(seen)})
    assert index == seen + 1, (index, seen)
    fresh, index = first_event(client, "POST", "/agents/paced/runs", data={"message": "go", "stream": "true"})
    assert index == 0
    client.post(f"/agents/paced/runs/{run_id}/cancel")
    return resume, fresh


def main(trials: int) -> None:
    folder = Path(tempfile.mkdtemp())
    (folder / "bench_agents.py").write_text(MODULE)
    proc, url = serve(folder, "bench_agents:paced")
    passes: list[tuple[list[float], list[float]]] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(PASSES):
                results = [trial(client) for _ in range(trials)]
                passes.append(([r for r, _ in results], [f for _, f in results]))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    figures = {name: [percentiles(p[i]) for p in passes] for i, name in enumerate(("resume", "new run"))}
    print(f"resume over HTTP, {PASSES} passes of {trials} trials; {machine()}")
    print(f"{'request -> first event':<24}{'p50':>10}{'p99':>10}   (spread of the pass p50s)")
    for name, pairs in figures.items():
        p50s, p99s = [a for a, _ in pairs], [b for _, b in pairs]
        print(
            f"{name:<24}{statistics.median(p50s):>8.2f}ms{statistics.median(p99s):>8.2f}ms"
            f"   ({min(p50s):.2f}-{max(p50s):.2f} ms)"
        )
    ratio = statistics.median(a for a, _ in figures["resume"]) / statistics.median(
        a for a, _ in figures["new run"]
    )
    print(f"resume / new run (p50): {ratio:.2f}x")
    save(
        "resume_latency",
        {"machine": machine(), "passes": [{"resume": r, "new run": f} for r, f in passes]},
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
