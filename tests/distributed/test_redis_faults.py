"""Redis faults: garbage in every key and channel, a restarted Redis, a killed owner, a busy background loop.

Every remote cancel's answer is exact (cancelled / ended / not found / owner dead / RemoteCancelError),
garbage is logged and skipped, and registering a run never waits for Redis nor for the background loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

import tether
from tether import Agent, RemoteCancelError, RunEvent, RunStatus
from tether._background_loop import background_loop as bridge
from tether._run._registry import RunRegistry
from tether.distributed import RedisCancellation, RemoteOutcome
from tether.server import create_app
from tether.storage import SqliteStorage
from tether.storage._base import owner_id
from tether.testing import ScriptedModel

from ..server.conftest import LiveServer
from .conftest import ThrowawayRedis, next_message
from .test_redis_cancellation import _until

pytestmark = pytest.mark.anyio

OWNER = """
import sys, json
from tether import Agent
from tether.distributed import RedisCancellation
from tether.testing import ScriptedModel

url, prefix, ttl = sys.argv[1:]
RedisCancellation(url, prefix=prefix, heartbeat_interval=0.2, owner_ttl=float(ttl)).attach()
agent = Agent(name="worker", model=ScriptedModel(["w0 ", "w1 "], stall=60, stall_at=2))
for event in agent.run("go", stream=True, run_id="owned-1"):
    print(json.dumps(event.model_dump(mode="json")), flush=True)
"""

CANCELLER = """
import sys, tether
from tether.distributed import RedisCancellation

url, prefix, run_id = sys.argv[1:]
remote = RedisCancellation(url, prefix=prefix, heartbeat_interval=0.2).attach()
print(tether.cancel_run(run_id, reason="after garbage"), flush=True)
remote.detach()
"""

GARBAGE: list[bytes] = [
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b"null",
    b'{"id": 1, "run_id": "target"}',
    b'{"id": "g1"}',
    b'{"id": "g2", "run_id": "target", "mode": "sideways"}',
    b'{"id": "g3", "run_id": "target", "grace": -1}',
    b'{"id": "g4", "run_id": "target", "reason": 7}',
]


@contextmanager
def owner_process(url: str, prefix: str, owner_ttl: float = 10.0) -> Iterator[subprocess.Popen[str]]:
    """A worker process owning run ``owned-1``, stalled after two chunks; killed at the end if still alive."""
    command = [sys.executable, "-W", "error", "-c", OWNER, url, prefix, str(owner_ttl)]
    owner = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    try:
        events = [json.loads(owner.stdout.readline())["event"] for _ in range(3)]
        assert events == ["RunStarted", "RunContent", "RunContent"]
        yield owner
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait(10)
        owner.stdout.close()


def owner_of(client: redis.Redis, prefix: str, run_id: str) -> str:
    raw = client.hget(f"{prefix}runs", run_id)
    assert isinstance(raw, bytes)
    return str(json.loads(raw)["owner"])


@pytest.fixture
def throwaway() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis().start()
    try:
        yield server
    finally:
        server.stop()


async def test_garbage_sent_to_an_owner_is_logged_and_skipped_then_a_remote_cancel_works(
    throwaway: ThrowawayRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    remote = await RedisCancellation(throwaway.url, prefix=prefix, heartbeat_interval=0.2).aattach()
    writer = redis.Redis(port=throwaway.port)
    try:
        agent = Agent(name="target", model=ScriptedModel(["a "], stall=60, stall_at=1))
        stream = agent.arun("go", stream=True, run_id="target")
        async for event in stream:
            if event.event != RunEvent.run_content:
                continue
            for junk in GARBAGE:  # on the listener's channel, as markers, as hash entries
                assert writer.publish(f"{prefix}cancel:{owner_id()}", junk) == 1
            writer.set(f"{prefix}marker:target", b'{"id": "m1", "run_id": "another-run"}')
            writer.hset(f"{prefix}runs", mapping={"junk-1": b"not json", "junk-2": b'{"owner": 3}'})
            # the heartbeat dropped the marker it cannot apply, and went on beating
            await _until(lambda: writer.get(f"{prefix}marker:target") is None)
            writer.set(f"{prefix}marker:target", b"\x00garbage")
            await _until(lambda: writer.get(f"{prefix}marker:target") is None)
            command = [sys.executable, "-W", "error", "-c", CANCELLER, throwaway.url, prefix, "target"]
            answer = await anyio.run_process(command)
            assert answer.stdout.decode() == "True\n"
        assert stream.output is not None
        assert (stream.output.status, stream.output.cancel_source, stream.output.cancel_reason) == (
            RunStatus.cancelled,
            "remote",
            "after garbage",
        )
        skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped a malformed")]
        for junk in GARBAGE:
            assert any(repr(junk) in message for message in skipped), junk
        assert any("marker:target" in message and "\\x00garbage" in message for message in skipped)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        writer.close()
        await remote.adetach()


async def test_garbage_sent_to_a_canceller_is_skipped_and_the_answer_is_exact(
    throwaway: ThrowawayRedis, prefix: str
) -> None:
    """A scripted owner answers with garbage on the ack channel first, then for real."""
    remote = await RedisCancellation(throwaway.url, prefix=prefix, ack_timeout=2).aattach()
    writer = redis.Redis(port=throwaway.port)
    writer.set(f"{prefix}owner:scripted", b'{"interval": 30, "ttl": 60}', ex=60)
    writer.hset(f"{prefix}runs", mapping={"remote-1": b'{"owner": "scripted", "agent": "a"}'})
    writer.hset(
        f"{prefix}runs", mapping={"junk-1": b"[1, 2]", "junk-2": b'{"owner": "scripted", "agent": 1}'}
    )
    listener = writer.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(f"{prefix}cancel:scripted")
    requests: list[dict[str, Any]] = []

    def scripted_owner() -> None:
        for result in ["cancelled", "failed"]:
            requests.append(json.loads(next_message(listener)["data"]))
            reply, request_id = f"{prefix}reply:{requests[-1]['reply_to']}", requests[-1]["id"]
            junk = [b"junk", b'{"result": "cancelled"}', json.dumps({"request": request_id, "result": 1})]
            junk += [b"{}", json.dumps({"request": "another", "result": "ended"})]
            for data in junk:
                writer.publish(reply, data)
            writer.publish(reply, json.dumps({"request": request_id, "result": result}))

    try:
        owner = threading.Thread(target=scripted_owner)
        owner.start()
        outcome = await remote.cancel("remote-1", agent_id="a", reason="r", mode="immediate", grace=None)
        assert outcome is RemoteOutcome.cancelled
        with pytest.raises(RemoteCancelError, match="the owner of run remote-1 failed to apply the cancel"):
            await remote.cancel("remote-1", agent_id=None, reason=None, mode="immediate", grace=None)
        await anyio.to_thread.run_sync(owner.join)
        assert requests[0] == {
            "id": requests[0]["id"],
            "run_id": "remote-1",
            "agent_id": "a",
            "reason": "r",
            "mode": "immediate",
            "grace": None,
            "reply_to": owner_id(),
        }
        for junk in ("junk-1", "junk-2"):  # an entry that cannot be read names no live run
            assert await remote.cancel(junk, agent_id=None, reason=None, mode="immediate", grace=None) is (
                RemoteOutcome.not_found
            )
    finally:
        listener.close()
        writer.close()
        await remote.adetach()


async def test_the_first_remote_cancel_after_a_redis_restart_is_answered_exactly(
    throwaway: ThrowawayRedis, prefix: str
) -> None:
    # A long heartbeat: nothing but the cancel itself finds the pooled connections stale.
    remote = await RedisCancellation(throwaway.url, prefix=prefix, heartbeat_interval=60).aattach()
    reader = redis.Redis(port=throwaway.port, socket_connect_timeout=0.5)
    try:
        with owner_process(throwaway.url, prefix) as owner:
            assert await remote.cancel("nope", agent_id=None, reason=None, mode="immediate", grace=None) is (
                RemoteOutcome.not_found  # the pool now holds a connection
            )
            throwaway.stop()
            throwaway.start()  # empty: the owner's heartbeat registers its run again
            await _until(lambda: reader.hget(f"{prefix}runs", "owned-1") is not None)
            outcome = await remote.cancel(
                "owned-1", agent_id=None, reason="after restart", mode="immediate", grace=None
            )
            assert outcome is RemoteOutcome.cancelled
            assert owner.stdout is not None
            last = json.loads((await anyio.to_thread.run_sync(owner.stdout.readlines))[-1])
            assert (last["event"], last["source"], last["reason"]) == (
                "RunCancelled",
                "remote",
                "after restart",
            )
            assert await anyio.to_thread.run_sync(owner.wait, 10) == 0
    finally:
        reader.close()
        await remote.adetach()


async def test_a_cancel_for_a_run_whose_owner_was_killed_says_so_and_removes_its_entries(
    redis_url: str, prefix: str
) -> None:
    remote = await RedisCancellation(
        redis_url, prefix=prefix, heartbeat_interval=0.2, ack_timeout=0.4
    ).aattach()
    reader = redis.Redis.from_url(redis_url)
    try:
        with owner_process(redis_url, prefix) as owner:
            dead = owner_of(reader, prefix, "owned-1")
            owner.send_signal(signal.SIGKILL)
            owner.wait(10)
        assert reader.exists(f"{prefix}owner:{dead}"), "its owner key outlives it (10 s)"
        started = time.monotonic()
        outcome = await remote.cancel("owned-1", agent_id=None, reason=None, mode="immediate", grace=None)
        assert outcome is RemoteOutcome.owner_dead
        assert time.monotonic() - started < 6
        assert reader.hget(f"{prefix}runs", "owned-1") is None
        assert not reader.exists(f"{prefix}owner:{dead}", f"{prefix}marker:owned-1")
        assert tether.cancel_run("owned-1") is False
    finally:
        reader.close()
        await remote.adetach()


async def test_every_live_worker_sweeps_the_entries_of_an_owner_whose_key_expired(
    redis_url: str, prefix: str
) -> None:
    remote = await RedisCancellation(redis_url, prefix=prefix, heartbeat_interval=0.2).aattach()
    reader = redis.Redis.from_url(redis_url)
    try:
        with owner_process(redis_url, prefix, owner_ttl=0.5) as owner:
            owner.send_signal(signal.SIGKILL)
            owner.wait(10)
        assert reader.hget(f"{prefix}runs", "owned-1") is not None
        await _until(lambda: reader.hget(f"{prefix}runs", "owned-1") is None)
        assert reader.hget(f"{prefix}runs", "owned-1") is None
    finally:
        reader.close()
        await remote.adetach()


def test_a_sync_run_on_the_background_loop_is_in_redis_before_its_first_event_and_gone_after(
    redis_url: str, prefix: str
) -> None:
    # A heartbeat too slow to write (or remove) anything during the test.
    remote = RedisCancellation(redis_url, prefix=prefix, heartbeat_interval=60).attach()
    reader = redis.Redis.from_url(redis_url)
    agent = Agent(name="sync", model=ScriptedModel(["a "], stall=60, stall_at=0))
    try:
        entries = []
        with agent.run("go", stream=True, run_id="sync-1") as events:
            for event in events:
                if event.event == RunEvent.run_started:
                    entries.append(reader.hget(f"{prefix}runs", "sync-1"))
                    assert tether.cancel_run("sync-1") is True
        assert [json.loads(raw) for raw in entries] == [{"owner": owner_id(), "agent": "sync"}]
        deadline = time.monotonic() + 5
        while reader.hget(f"{prefix}runs", "sync-1") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.hget(f"{prefix}runs", "sync-1") is None
    finally:
        reader.close()
        remote.detach()


async def test_starting_a_run_never_waits_for_a_busy_background_loop(redis_url: str, prefix: str) -> None:
    remote = await RedisCancellation(redis_url, prefix=prefix).aattach()
    busy = threading.Event()

    async def hog() -> None:
        busy.set()
        time.sleep(0.5)  # noqa: ASYNC251 (the point: the background loop can do nothing else meanwhile)

    try:
        hogging = asyncio.run_coroutine_threadsafe(hog(), bridge.loop())
        await anyio.to_thread.run_sync(busy.wait)
        started = time.monotonic()
        stream = Agent(name="quick", model=ScriptedModel(["ok"])).arun("go", stream=True)
        assert time.monotonic() - started < 0.1
        assert (await stream.collect()).content == "ok"
        await asyncio.wrap_future(hogging)
    finally:
        await remote.adetach()


class Exploding(RunRegistry):
    """A registry whose lookup of run ``boom`` raises KeyboardInterrupt (on the background loop)."""

    def get(self, run_id: str) -> Any:
        if run_id == "boom":
            raise KeyboardInterrupt
        return super().get(run_id)


async def test_a_keyboard_interrupt_in_the_listener_neither_ends_it_nor_the_background_loop(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    remote = await RedisCancellation(redis_url, prefix=prefix, heartbeat_interval=0.2).aattach(to=Exploding())
    writer = redis.Redis.from_url(redis_url)
    acks = writer.pubsub(ignore_subscribe_messages=True)
    acks.subscribe(f"{prefix}reply:scripted")
    try:
        channel = f"{prefix}cancel:{owner_id()}"
        await _until(lambda: writer.pubsub_numsub(channel)[0][1] == 1)
        for request_id, run_id in [("first", "boom"), ("second", "missing")]:
            request = {"id": request_id, "run_id": run_id, "reply_to": "scripted"}
            writer.publish(channel, json.dumps(request))
        answers = [await anyio.to_thread.run_sync(next_message, acks) for _ in range(2)]
        assert [json.loads(m["data"]) for m in answers] == [
            {"request": "first", "result": "failed"},
            {"request": "second", "result": "not_found"},
        ]
        assert await anyio.to_thread.run_sync(bridge.call, _answer) == 42
        failures = [r for r in caplog.records if r.levelname == "ERROR"]
        assert [r.getMessage() for r in failures] == [
            "tether's Redis canceller: applying cancel request first failed; skipped"
        ]
        assert failures[0].exc_info is not None and failures[0].exc_info[0] is KeyboardInterrupt
    finally:
        acks.close()
        writer.close()
        await remote.adetach()


async def _answer() -> int:
    return 42


async def test_a_frozen_redis_fails_remote_cancels_fast_and_nothing_is_lost_once_it_thaws(
    throwaway: ThrowawayRedis, prefix: str
) -> None:
    remote = await RedisCancellation(
        throwaway.url, prefix=prefix, heartbeat_interval=0.2, ack_timeout=0.5, connect_timeout=0.2
    ).aattach()
    try:
        with owner_process(throwaway.url, prefix) as owner:
            assert throwaway.process is not None
            throwaway.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(RemoteCancelError, match="could not reach Redis to cancel run owned-1"):
                    await remote.cancel("owned-1", agent_id=None, reason=None, mode="immediate", grace=None)
                assert time.monotonic() - started < 3
                started = time.monotonic()
                out = await Agent(name="local", model=ScriptedModel(["still ", "works"])).arun("go")
                assert (out.status, out.content) == (RunStatus.completed, "still works")
                assert time.monotonic() - started < 1
                await anyio.sleep(1.5)  # heartbeats and listeners on both sides time out meanwhile
            finally:
                throwaway.process.send_signal(signal.SIGCONT)
            # Connections whose reads were cut short by the freeze time out (1 s) and are replaced;
            # a cancel sent in that second may find its answer lost on the owner's stale connection.
            await anyio.sleep(2.0)
            outcome = await remote.cancel(
                "owned-1", agent_id=None, reason="thawed", mode="immediate", grace=None
            )
            assert outcome is RemoteOutcome.cancelled
            assert owner.stdout is not None
            last = json.loads((await anyio.to_thread.run_sync(owner.stdout.readlines))[-1])
            assert (last["event"], last["source"], last["reason"]) == ("RunCancelled", "remote", "thawed")
    finally:
        await remote.adetach()


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-c", script, *args], stdout=subprocess.PIPE, text=True
    )


RESTART_OWNER = """
import sys, json
from tether import Agent
from tether.distributed import RedisCancellation
from tether.testing import ScriptedModel

url, prefix = sys.argv[1:]
RedisCancellation(url, prefix=prefix).attach()   # the default heartbeat (2 s)
agent = Agent(name="worker", model=ScriptedModel(["w0 ", "w1 "], stall=60, stall_at=2))
for event in agent.run("go", stream=True, run_id="owned-r"):
    print(json.dumps(event.model_dump(mode="json")), flush=True)
"""


async def test_a_remote_cancel_just_after_a_redis_restart_finds_the_live_run() -> None:
    """Redis restarted empty: the owner writes its entry again at its next heartbeat; the answer waits."""
    server = ThrowawayRedis().start()
    owner = _start(RESTART_OWNER, server.url, "restart:")
    assert owner.stdout is not None
    remote = await RedisCancellation(server.url, prefix="restart:", heartbeat_interval=60).aattach()
    try:
        lines = [await anyio.to_thread.run_sync(owner.stdout.readline) for _ in range(3)]
        assert [json.loads(line)["event"] for line in lines] == ["RunStarted", "RunContent", "RunContent"]
        server.stop()
        server.start()  # empty, as a Redis without persistence comes back
        outcome = await remote.cancel(
            "owned-r", agent_id=None, reason="after restart", mode="immediate", grace=None
        )
        assert outcome is RemoteOutcome.cancelled
        last = json.loads((await anyio.to_thread.run_sync(owner.stdout.readlines))[-1])
        assert (last["event"], last["source"], last["reason"]) == ("RunCancelled", "remote", "after restart")
    finally:
        await remote.adetach()
        if owner.poll() is None:
            owner.kill()
        await anyio.to_thread.run_sync(owner.wait, 10)
        owner.stdout.close()
        server.stop()


def test_a_stop_click_for_a_stored_run_answers_from_storage_while_redis_is_frozen(
    throwaway: ThrowawayRedis, tmp_path: Path
) -> None:
    assert throwaway.process is not None
    agent = Agent(name="teller", model=ScriptedModel(["a ", "b "]))
    app = create_app([agent], storage=SqliteStorage(tmp_path / "runs.db"), redis_url=throwaway.url)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        done = http.post("/agents/teller/runs", json={"message": "go", "stream": False, "run_id": "ended-1"})
        assert done.json()["status"] == "COMPLETED"
        throwaway.process.send_signal(signal.SIGSTOP)
        try:
            answer = http.post("/agents/teller/runs/ended-1/cancel")
        finally:
            throwaway.process.send_signal(signal.SIGCONT)
    assert (answer.status_code, answer.json()["detail"]) == (
        400,
        "Run ended-1 has already ended with status COMPLETED",
    )
