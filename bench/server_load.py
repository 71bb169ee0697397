"""One ``tether serve`` worker under load: SSE throughput with 100 streaming clients, cancel latency.

    .venv/bin/python bench/server_load.py [--clients 100] [--chunks 2000] [--trials 200]
                                          [--pace 0.16 | --load-share SHARE] [--load-seconds 20]

About a minute on a quiet 2-core machine, two when other processes compete for it; Linux only (CPU
times come from /proc). Cross-worker cancel is measured by ``bench/cross_worker_cancel.py``, not here.

Set-up. The model is ``OpenAIChat`` against tether's loopback OpenAI-compatible server running in a
process of its own, so the server under test pays for a real provider stream (HTTP, chunked SSE, one
JSON document per chunk). ``tether serve`` runs one worker (uvicorn) with a fresh SQLite file in a
temp folder. Every table shows the CPU each process used (cores: CPU time / wall time), and ``rest``:
every other process on the machine, since a busy neighbour changes every figure.

1. SSE throughput. ``--clients`` streams (one asyncio program, this process) each run an agent whose
   model sends ``--chunks`` chunks unpaced, and read the SSE to the terminal event: aggregate chunks/s
   and events/s. Baseline in the same run: the same clients read the model server's stream directly.
   Two client kinds, each on both sides: httpx reading lines (a typical Python client) and a bare
   socket HTTP/1.1 client counting frames with ``bytes.count`` (next to no client cost).
   What bounds each figure: "direct, httpx" is bound by the client (one core busy in httpx/h11 while
   the model server uses half a core or less); "direct, bare socket" by the model server's one event
   loop: that is the machine's limit for this shape. The tether rows are bound by tether's one event
   loop (a core busy); they come out within about 15% of each other and the bare client is not the
   faster one, so the client is not what they measure.
   "tether µs/chunk" (tether's CPU time per chunk) is the figure least moved by a busy neighbour.

2. Cancel latency. A probe client in this process starts a streamed run (paced 10 ms a chunk), waits
   for its first RunContent, sends ``POST /agents/probe/runs/{run_id}/cancel?wait=0`` and times (a) the
   POST's round trip and (b) POST sent -> RunCancelled read on the run's stream (read concurrently),
   plus GET /health before each run (the floor for any request then) and run start -> first chunk.
   ``--trials`` probes with no load, then as many (at most ``--load-seconds``) while ``--clients``
   endless streams run, each sending a chunk every ``--pace`` seconds (default 0.16: 625 chunks/s for
   100 streams), or offering ``--load-share`` of the chunks/s tether reached in part 1. A paced chunk
   costs tether many times an unpaced one (it crosses every layer alone: 300-400 µs of CPU against
   15-18 unpaced, where this was measured), so a fixed pace keeps the load one the worker sustains
   (about half its core); a load it cannot sustain makes each probe take up to seconds. The load's
   clients run in a child process, so their work does not delay
   the probe's timestamps. Also printed: how many RunContent events reached the probe after its
   cancel was sent, i.e. what was queued ahead of RunCancelled.
   What bounds it: with no load, the HTTP round trips through uvicorn and FastAPI and the run's end
   (closing the provider stream, the SQLite final write, which comes before RunCancelled); under
   load, the server's one event loop: each step of a probe waits behind the streams' work. The probes
   are load too: back to back they start and cancel about 20 runs/s, a third of tether's core.

Storage: each run costs three SQLite operations (a read for the client-chosen run id, the RUNNING row,
the final row), none per chunk, on one connection in worker threads. Measured apart on this machine a
final write takes about 0.3 ms and 100 at once about 40 ms, so SQLite is a small part of these figures:
it delays the start and end of part 1's 100 simultaneous runs by tens of ms at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from _common import machine, save

SCRIPT = str(Path(__file__).resolve())
# The model server. Each stdin line "PACE CHUNKS" sets how the "paced" model streams from then on:
# part 2's pace is known only once part 1 has measured the server.
LOOPBACK = """
import signal, sys
from tether.testing import LoopbackServer, Reply
def words(n):
    return [f"w{i} " for i in range(n)]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with LoopbackServer(Reply(chunks=words(int(sys.argv[1])))) as server:
    server.route("probe", Reply(chunks=words(3000), pace=0.01))
    print(server.base_url, flush=True)
    for line in sys.stdin:
        pace, chunks = line.split()
        server.route("paced", Reply(chunks=words(int(chunks)), pace=float(pace)))
        print("ok", flush=True)
"""
AGENTS = """
from tether import Agent
from tether.models.openai import OpenAIChat
agents = [
    Agent(id=name, name=name, model=OpenAIChat(id=name, base_url={url!r}, max_retries=0))
    for name in ("fast", "paced", "probe")
]
"""
DIRECT_BODY = json.dumps(
    {
        "model": "fast",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "stream_options": {"include_usage": True},  # what OpenAIChat asks for, so both streams match
    }
).encode()
TETHER_CHUNK = b"event: RunContent\n"
DIRECT_CHUNK = b'"delta":{"content":"w'
Reader = Callable[["Tally"], Awaitable[None]]
DIRECT_PASSES = 3
BUSY_NEIGHBOURS = 0.25  # cores used by other processes above which the figures are flagged


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a set of streaming clients received, and the CPU each process spent meanwhile."""

    expected: int = 0  # streams: ``everyone`` is set once they have all started
    everyone: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0  # streams whose response headers arrived
    runs: int = 0  # streams that ended as they should
    lost: int = 0  # streams that ended early
    events: int = 0
    chunks: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> cores used (1.0 = one core busy)

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds

    def start(self) -> None:
        self.started += 1
        if self.started == self.expected:
            self.everyone.set()


class Frames:
    """Counts the SSE frames of one stream in raw bytes and keeps the last one.

    ``bytes.count`` (a C loop) rather than Python per line keeps the client's cost per event well below
    the servers'. Only whole frames are counted: a marker may be split between two reads.
    """

    def __init__(self, tally: Tally, marker: bytes) -> None:
        self.tally, self.marker = tally, marker
        self.carry = self.whole = b""

    def feed(self, data: bytes) -> None:
        self.carry += data
        cut = self.carry.rfind(b"\n\n") + 2
        if cut > 1:
            self.whole, self.carry = self.carry[:cut], self.carry[cut:]
            self.tally.events += self.whole.count(b"\n\n")
            self.tally.chunks += self.whole.count(self.marker)

    def last(self) -> bytes:
        return self.whole[:-2].rsplit(b"\n\n", 1)[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class CpuMeter:
    """Cores used by each of our processes over an interval, plus by everything else on the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.own, self.busy = time.process_time(), machine_busy()

    def read(self, seconds: float) -> dict[str, float]:
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        used["clients"] = time.process_time() - self.own  # this process
        used["rest"] = max(0.0, machine_busy() - self.busy - sum(used.values()))
        return {name: spent / seconds for name, spent in used.items()}


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[round(share * (len(ordered) - 1))]


# -- processes ------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait: tether serve cancels and stores its live runs before it exits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class ModelServer:
    pid: int
    url: str
    proc: subprocess.Popen[bytes]

    def pace(self, seconds: float, chunks: int) -> None:
        """From now on the "paced" model sends ``chunks`` chunks, ``seconds`` apart."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds} {chunks}\n".encode())
        self.proc.stdin.flush()
        if self.proc.stdout.readline() != b"ok\n":
            raise RuntimeError("the loopback model server did not take the new pace")


@contextlib.contextmanager
def loopback(folder: Path, chunks: int) -> Iterator[ModelServer]:
    """The OpenAI-compatible model server, in a process of its own."""
    command = [sys.executable, "-c", LOOPBACK, str(chunks)]
    with (folder / "loopback.log").open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdin is not None and proc.stdout is not None
    with proc.stdin, proc.stdout:
        try:
            url = proc.stdout.readline().decode().strip()
            if not url:
                raise RuntimeError(f"the loopback model server did not start (see {folder}/loopback.log)")
            yield ModelServer(proc.pid, url, proc)
        finally:
            stop(proc)


@contextlib.contextmanager
def tether_serve(folder: Path, model_url: str) -> Iterator[tuple[int, str]]:
    """``tether serve`` (one worker, a fresh SQLite file) with the agents fast, paced and probe."""
    (folder / "bench_agents.py").write_text(AGENTS.format(url=model_url))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tether", "serve", "bench_agents:agents", "--port", str(port),
               "--storage", f"sqlite:///{folder / 'runs.db'}"]  # fmt: skip
    with (folder / "serve.log").open("wb") as log:
        proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    yield proc.pid, url
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"tether serve did not start (see {folder}/serve.log)")
    finally:
        stop(proc)


# -- streaming clients ----------------------------------------------------------------------------


def http_client(base_url: str = "") -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(120))


async def httpx_tether(client: httpx.AsyncClient, agent: str, tally: Tally) -> None:
    """One streamed run over tether's SSE, read to its terminal event with httpx, as lines."""
    async with client.stream("POST", f"/agents/{agent}/runs", data={"message": "go"}) as response:
        response.raise_for_status()
        tally.start()
        last = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                tally.events += 1
                tally.chunks += line == "event: RunContent"
                last = line
    expect(tally, last.encode(), b"event: RunCompleted")


async def httpx_direct(client: httpx.AsyncClient, model_url: str, tally: Tally) -> None:
    """One stream straight from the model server with httpx, as lines: no tether in between."""
    async with client.stream("POST", f"{model_url}/chat/completions", content=DIRECT_BODY) as response:
        response.raise_for_status()
        tally.start()
        last = ""
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                tally.events += 1
                tally.chunks += line.startswith('"content":"w', line.find('"delta":{') + 9)
                last = line
    expect(tally, last.encode(), b"data: [DONE]")


async def raw_stream(url: str, path: str, body: bytes, kind: str, frames: Frames) -> None:
    """POST ``body`` on a bare socket and count the frames of the chunked SSE response.

    A minimal HTTP/1.1 client: a few C-level calls per read, where httpx (and h11) parse in Python.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: {kind}\r\n"
        writer.write(f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        response = await reader.readuntil(b"\r\n\r\n")
        if not response.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in response.lower():
            raise RuntimeError(f"unexpected response {response[:200]!r}")
        frames.tally.start()
        while size := int(await reader.readline(), 16):
            frames.feed((await reader.readexactly(size + 2))[:-2])
    finally:
        writer.close()
        await writer.wait_closed()


async def raw_tether(url: str, agent: str, tally: Tally) -> None:
    frames = Frames(tally, TETHER_CHUNK)
    form = "application/x-www-form-urlencoded"
    await raw_stream(url, f"/agents/{agent}/runs", b"message=go", form, frames)
    expect(tally, frames.last(), b"event: RunCompleted")


async def raw_direct(model_url: str, tally: Tally) -> None:
    frames = Frames(tally, DIRECT_CHUNK)
    path = f"{urlsplit(model_url).path}/chat/completions"
    await raw_stream(model_url, path, DIRECT_BODY, "application/json", frames)
    expect(tally, frames.last(), b"data: [DONE]")


def expect(tally: Tally, last: bytes, start: bytes) -> None:
    """A stream counts as a run only if it ended as it should (a completed run, the model's [DONE]);
    ``start`` begins one of the last frame's lines (tether's frames begin with ``id:``)."""
    if not any(line.startswith(start) for line in last.split(b"\n")):
        raise RuntimeError(f"a stream ended with {last[:100]!r}, not {start!r}")
    tally.runs += 1


async def load(clients: int, pids: dict[str, int], reader: Reader) -> Tally:
    """``clients`` concurrent streams read to their end."""
    tally, meter = Tally(), CpuMeter(pids)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(reader(tally))
    tally.seconds = time.perf_counter() - started
    tally.cpu = meter.read(tally.seconds)
    return tally


# -- 1. throughput --------------------------------------------------------------------------------


async def throughput(clients: int, pids: dict[str, int], tether_url: str, model_url: str) -> dict[str, Tally]:
    """Each client kind reads the model's stream directly, then the same stream through tether."""
    async with http_client(tether_url) as client:
        # Warm up, unmeasured: imports, the server's HTTP client to the model, the SQLite file.
        await load(3, {}, lambda tally: httpx_tether(client, "fast", tally))
        passes: dict[str, Reader] = {
            "direct, httpx": lambda tally: httpx_direct(client, model_url, tally),
            "tether, httpx": lambda tally: httpx_tether(client, "fast", tally),
            "direct, bare socket": lambda tally: raw_direct(model_url, tally),
            "tether, bare socket": lambda tally: raw_tether(tether_url, "fast", tally),
        }
        streams = {}
        for name, reader in passes.items():
            # A direct pass lasts about a second, so one is noisy: take the median of three.
            tries = [
                await load(clients, pids, reader) for _ in range(DIRECT_PASSES if "direct" in name else 1)
            ]
            streams[name] = sorted(tries, key=lambda tally: tally.rate)[len(tries) // 2]
        return streams


# -- 2. cancel latency ----------------------------------------------------------------------------


@dataclass
class Probe:
    health: float  # GET /health round trip: the floor for any request at that moment
    first: float  # run started -> its first RunContent
    post: float  # the cancel POST's round trip
    ended: float  # the cancel POST sent -> RunCancelled on the run's stream
    late: int  # RunContent events that arrived after the POST was sent


async def probe(client: httpx.AsyncClient) -> Probe:
    """Time GET /health; then start a streamed run, cancel it after its first chunk, time the cancel."""
    began = time.perf_counter()
    (await client.get("/health")).raise_for_status()
    health = time.perf_counter() - began
    run_id = uuid.uuid4().hex
    began = time.perf_counter()
    form = {"message": "go", "run_id": run_id}
    async with client.stream("POST", "/agents/probe/runs", data=form) as response:
        response.raise_for_status()
        lines = response.aiter_lines()
        await arrival(lines, "event: RunContent")
        first = time.perf_counter() - began
        async with asyncio.TaskGroup() as group:
            # Read the stream while the POST is in flight, so the event's arrival is timed, not
            # the moment we got round to reading it.
            cancelled = group.create_task(arrival(lines, "event: RunCancelled"))
            await asyncio.sleep(0)
            sent = time.perf_counter()
            reply = await client.post(f"/agents/probe/runs/{run_id}/cancel", params={"wait": 0})
            post = time.perf_counter() - sent
            reply.raise_for_status()
    at, late = cancelled.result()
    return Probe(health, first, post, at - sent, late)


async def arrival(lines: AsyncIterator[str], wanted: str) -> tuple[float, int]:
    """When the ``wanted`` event line arrives, and how many RunContent events came before it."""
    chunks = 0
    async for line in lines:
        if line == wanted:
            return time.perf_counter(), chunks
        if line == "event: RunContent":
            chunks += 1
        elif line.startswith("event: ") and line != "event: RunStarted":
            raise RuntimeError(f"a probe run ended with {line!r} before {wanted!r}")
    raise RuntimeError(f"a probe run's stream ended before {wanted!r}")


async def probes(tether_url: str, trials: int, seconds: float) -> tuple[list[Probe], float]:
    """``trials`` probes one after another, or fewer if ``seconds`` run out; and the time they took."""
    async with http_client(tether_url) as client:
        began = time.monotonic()
        await probe(client)  # not a sample: it opens the connections the next ones reuse
        samples: list[Probe] = []
        while len(samples) < trials and time.monotonic() - began < seconds:
            samples.append(await probe(client))
        return samples, time.monotonic() - began


async def paced_stream(client: httpx.AsyncClient, tally: Tally) -> None:
    try:
        await httpx_tether(client, "paced", tally)
    except Exception as exc:  # reported: the streams outlast the probes, so any end is a failure
        print(f"a load stream failed: {exc!r}", file=sys.stderr)
    tally.lost += 1


async def paced_load(tether_url: str, clients: int) -> None:
    """Part 2's load, in a process of its own (``--load-child``) so the probes' event loop stays quiet.

    Prints a JSON line once every stream delivers chunks, and another on SIGTERM, then stops.
    """
    tally, stopping = Tally(expected=clients), asyncio.Event()

    def stop_now() -> None:
        stopping.set()
        tally.everyone.set()  # also when the streams never all started

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_now)
    async with http_client(tether_url) as client:
        tasks = [asyncio.create_task(paced_stream(client, tally)) for _ in range(clients)]
        await tally.everyone.wait()
        if not stopping.is_set():
            await asyncio.sleep(0.5)  # past the start-up burst
            print(json.dumps({"at": time.monotonic(), "chunks": tally.chunks}), flush=True)
            await stopping.wait()
        print(json.dumps({"at": time.monotonic(), "chunks": tally.chunks, "lost": tally.lost}), flush=True)
        for task in tasks:
            task.cancel()  # the server sees the disconnects and cancels the runs
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Loaded:
    """The probes under load, and what the load was doing meanwhile."""

    probes: list[Probe]
    seconds: float  # the probes' time
    pace: float  # seconds between two chunks of a load stream
    rate: float  # chunks/s the load's clients received meanwhile
    lost: int  # load streams that ended early (none should)
    cpu: dict[str, float]  # cores used during the probes


async def loaded_probes(
    args: argparse.Namespace, pace: float, tether_url: str, pids: dict[str, int]
) -> Loaded:
    command = (SCRIPT, "--clients", str(args.clients), "--load-child", tether_url)
    child = await asyncio.create_subprocess_exec(sys.executable, *command, stdout=PIPE)
    assert child.stdout is not None
    try:
        ready = json.loads(await asyncio.wait_for(child.stdout.readline(), 60) or "null")
        if ready is None:
            raise RuntimeError("the load process failed before its streams started")
        meter = CpuMeter({**pids, "load": child.pid})
        samples, seconds = await probes(tether_url, args.trials, args.load_seconds)
        cpu = meter.read(seconds)
        child.send_signal(signal.SIGTERM)
        end = json.loads(await child.stdout.readline() or "null")
        await asyncio.wait_for(child.wait(), 20)
        if end is None:
            raise RuntimeError("the load process failed")
    finally:
        if child.returncode is None:  # failed before the SIGTERM above, or ignored it
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 20)
            except TimeoutError:
                child.kill()
                await child.wait()
    rate = (end["chunks"] - ready["chunks"]) / (end["at"] - ready["at"])
    return Loaded(samples, seconds, pace, rate, end["lost"], cpu)


# -- report ---------------------------------------------------------------------------------------


def row(name: str, cells: list[str], widths: list[int]) -> str:
    return f"{name:<20}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))


def print_throughput(streams: dict[str, Tally], clients: int) -> None:
    chunks = next(iter(streams.values())).chunks // clients
    print(
        f"\n1. SSE throughput: {clients} concurrent streamed runs of {chunks:,} chunks each, read to the end"
    )
    widths = [9, 10, 11, 8, 9, 15, 7, 8, 6]
    head = [
        "chunks/s",
        "events/s",
        "chunks/run",
        "seconds",
        "tether",
        "cores: tether",
        "model",
        "clients",
        "rest",
    ]
    print(row("", head, widths))
    print(row("", ["", "", "", "", "µs/chunk", "", "", "", ""], widths))
    for name, tally in streams.items():
        cpu, through = tally.cpu, name.startswith("tether")
        cost = f"{cpu['server'] * tally.seconds / tally.chunks * 1e6:.0f}" if through else ""
        figures = [tally.rate, tally.events / tally.seconds, tally.chunks / tally.runs]
        cells = [f"{value:,.0f}" for value in figures] + [f"{tally.seconds:.2f}", cost]
        cells += [f"{cpu[process]:.2f}" for process in ("server", "model", "clients", "rest")]
        print(row(name, cells, widths))
    for client in ("httpx", "bare socket"):
        ratio = streams[f"tether, {client}"].rate / streams[f"direct, {client}"].rate
        print(f"tether / direct with {client} clients: {ratio:.1%} of the chunks/s")
    print(f"(direct: the median of {DIRECT_PASSES} passes; tether: one pass each)")
    if any(tally.cpu["rest"] > BUSY_NEIGHBOURS for tally in streams.values()):
        print("WARNING: other processes used the CPU meanwhile (rest): these figures are low")


def figures(samples: list[Probe]) -> list[float]:
    columns = [[getattr(p, name) for p in samples] for name in ("health", "post", "ended", "first")]
    return [percentile(column, share) * 1e3 for column in columns for share in (0.5, 0.99)]


def print_cancel(quiet: list[Probe], loaded: Loaded, args: argparse.Namespace, busy: bool) -> None:
    print(
        "\n2. cancel latency (ms): POST /agents/probe/runs/{run_id}/cancel?wait=0 after the first RunContent"
    )
    widths = [6] + [10, 11] * 4
    groups = ["GET /health", "cancel POST", "POST -> RunCancelled", "start -> 1st chunk"]
    print(row("", ["trials", *groups], [6] + [21] * 4))
    print(row("", [""] + ["p50", "p99"] * 4, widths))
    quiet_row, loaded_row = figures(quiet), figures(loaded.probes)
    print(row("no load", [str(len(quiet))] + [f"{value:.2f}" for value in quiet_row], widths))
    print(row("under load", [str(len(loaded.probes))] + [f"{value:.2f}" for value in loaded_row], widths))
    ratios = [f"{b / a:.1f}x" for a, b in zip(quiet_row, loaded_row, strict=True)]
    print(row("under load / none", ["", *ratios], widths))
    for name, samples in (("no load", quiet), ("under load", loaded.probes)):
        late = [float(p.late) for p in samples]
        p50, p99 = percentile(late, 0.5), percentile(late, 0.99)
        print(f"RunContent events read after the cancel was sent, {name}: p50 {p50:.0f}, p99 {p99:.0f}")
    offered, cpu = args.clients / loaded.pace, loaded.cpu
    print(
        f"load: {args.clients} endless streams, a chunk every {loaded.pace * 1e3:.1f} ms each: "
        f"{offered:,.0f} chunks/s offered, {loaded.rate:,.0f} delivered ({loaded.rate / offered:.0%})"
    )
    used = ", ".join(
        f"{label} {cpu[process]:.2f}"
        for label, process in [("tether", "server"), ("model", "model"), ("load clients", "load")]
        + [("probe client", "clients"), ("rest", "rest")]
    )
    print(f"cores during the {loaded.seconds:.1f} s of probes under load: {used}")
    if len(loaded.probes) < args.trials:
        print(f"WARNING: {len(loaded.probes)} of {args.trials} probes under load in {args.load_seconds:g} s")
    if loaded.lost:
        print(f"WARNING: {loaded.lost} load streams ended before the probes did")
    if busy or cpu["rest"] > BUSY_NEIGHBOURS:
        print("WARNING: other processes used the CPU meanwhile (rest): these latencies are high")


# -- main -----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, model: ModelServer, server_pid: int, tether_url: str) -> None:
    pids = {"server": server_pid, "model": model.pid}
    streams = await throughput(args.clients, pids, tether_url, model.url)
    meter = CpuMeter(pids)
    quiet, seconds = await probes(tether_url, args.trials, float("inf"))
    busy = meter.read(seconds)["rest"] > BUSY_NEIGHBOURS
    pace = args.clients / (args.load_share * streams["tether, httpx"].rate) if args.load_share else args.pace
    # Endless for the probes' purposes: they outlast the probing even when the server falls behind.
    await asyncio.to_thread(model.pace, pace, round(2 * args.load_seconds / pace) + 1000)
    loaded = await loaded_probes(args, pace, tether_url, pids)
    print(f"tether serve under load; {machine()}")
    print("cores: CPU time / wall time of each process (1.00 = one core busy); rest: every other process")
    print_throughput(streams, args.clients)
    print_cancel(quiet, loaded, args, busy)
    keys = [f"{name} {share}" for name in ("health", "post", "ended", "first") for share in ("p50", "p99")]
    save(
        "server_load",
        {
            "machine": machine(),
            "clients": args.clients,
            "sse": {name: tally.rate for name, tally in streams.items()},
            "no load": dict(zip(keys, figures(quiet), strict=True)),
            "under load": dict(zip(keys, figures(loaded.probes), strict=True)),
            "load": {"pace": loaded.pace, "offered": args.clients / loaded.pace, "delivered": loaded.rate},
        },
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add = parser.add_argument
    add("--clients", type=int, default=100, help="concurrent streams (default 100)")
    add("--chunks", type=int, default=2000, help="chunks per run in part 1 (default 2000)")
    add("--trials", type=int, default=200, help="cancels timed with no load, then under load (default 200)")
    add("--load-share", type=float, help="part 2's load, as a share of part 1's tether chunks/s")
    add("--pace", type=float, default=0.16, help="seconds between a load stream's chunks (default 0.16)")
    add("--load-seconds", type=float, default=20, help="at most this long probing under load (default 20)")
    add("--load-child", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.load_child:
        asyncio.run(paced_load(args.load_child, args.clients))
        return
    # A SIGTERM unwinds like Ctrl-C, so the servers and the load process are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("server_load: terminated"))
    folder = Path(tempfile.mkdtemp(prefix="tether-server-load-"))
    with loopback(folder, args.chunks) as model, tether_serve(folder, model.url) as (server_pid, tether_url):
        asyncio.run(bench(args, model, server_pid, tether_url))
    shutil.rmtree(folder)  # kept on failure: it holds the servers' logs


if __name__ == "__main__":
    main()
