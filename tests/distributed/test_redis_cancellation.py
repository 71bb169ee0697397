"""Cross-process cancellation in the library: a real worker process owns the run; we cancel it by id."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anyio
import pytest
import redis

import tether
from tether import Agent, RemoteCancelError, RunEvent, RunStatus
from tether._run import registry
from tether.distributed import RedisCancellation
from tether.storage._base import owner_id
from tether.testing import ScriptedModel

from .conftest import ThrowawayRedis, free_port, next_message

pytestmark = pytest.mark.anyio

OWNER = """
import sys, json
from tether import Agent
from tether.distributed import RedisCancellation
from tether.testing import ScriptedModel

url, prefix = sys.argv[1:]
RedisCancellation(url, prefix=prefix, heartbeat_interval=0.2).attach()
agent = Agent(name="worker", model=ScriptedModel([f"w{i} " for i in range(500)], delay=0.01))
for event in agent.run("go", stream=True, run_id="owned-1"):
    print(json.dumps(event.model_dump(mode="json")), flush=True)
"""


@pytest.fixture
def attached(redis_url: str, prefix: str) -> Iterator[RedisCancellation]:
    remote = RedisCancellation(redis_url, prefix=prefix, heartbeat_interval=0.2).attach()
    yield remote
    remote.detach()


def test_cancel_a_run_owned_by_another_process(
    redis_url: str, prefix: str, attached: RedisCancellation
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", OWNER, redis_url, prefix], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    try:
        events = [json.loads(owner.stdout.readline()) for _ in range(4)]  # started + 3 chunks
        assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunContent"
        assert registry.get("owned-1") is None, "the run lives in the other process"
        assert tether.cancel_run("owned-1", reason="from another process") is True
        rest = [json.loads(line) for line in owner.stdout]
        assert owner.wait(10) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.stdout.close()
    terminal = rest[-1]
    assert terminal["event"] == "RunCancelled"
    assert (terminal["source"], terminal["reason"]) == ("remote", "from another process")
    delivered = "".join(e["content"] for e in events + rest if e["event"] == "RunContent")
    assert terminal["content"] == delivered
    assert tether.cancel_run("owned-1") is False, "ended: no live run has that id"
    assert tether.cancel_run("never-existed") is False
    assert Agent(name="other", model=ScriptedModel()).cancel_run("owned-1") is False


async def test_no_redis_command_per_streamed_chunk(prefix: str) -> None:
    server = ThrowawayRedis().start()  # ours alone: its command counts are not anyone else's
    remote = await RedisCancellation(server.url, prefix=prefix, heartbeat_interval=0.2).aattach()
    counter = redis.Redis(port=server.port)

    def commands() -> int:
        stats = counter.info("commandstats")
        return sum(int(value["calls"]) for value in stats.values())

    async def run_with(chunks: int) -> int:
        agent = Agent(name="counted", model=ScriptedModel([f"c{i} " for i in range(chunks)]))
        before = commands()
        out = await agent.arun("go")
        await anyio.sleep(0.1)  # let the registration commands land
        assert out.status is RunStatus.completed and len(out.content.split()) == chunks
        return commands() - before - 1  # our own INFO call

    try:
        small, large = await run_with(20), await run_with(2000)
        assert large <= small + 3, f"{large} commands for 2000 chunks vs {small} for 20"
        assert large <= 12
    finally:
        counter.close()
        await remote.adetach()
        server.stop()


async def test_a_burst_of_runs_is_registered_through_a_few_connections(prefix: str) -> None:
    server = ThrowawayRedis().start()
    remote = await RedisCancellation(server.url, prefix=prefix).aattach()
    watcher = redis.Redis(port=server.port)
    try:
        agent = Agent(name="burst", model=ScriptedModel(["ok"]))
        outputs = await asyncio.gather(*(agent.arun("go") for _ in range(300)))
        assert [out.content for out in outputs] == ["ok"] * 300
        stats = watcher.info("stats")
        # the listener's, the heartbeat's and the writer's, a few more at most (and ours)
        assert int(stats["total_connections_received"]) <= 8, stats["total_connections_received"]
        await _until(lambda: watcher.hlen(f"{prefix}runs") == 0)
    finally:
        watcher.close()
        await remote.adetach()
        server.stop()


async def test_remote_cancels_open_no_connection_and_get_their_own_answers(prefix: str) -> None:
    """Answers come on this process's one reply subscription, each to the request it answers."""
    server = ThrowawayRedis().start()
    # A heartbeat that does not come again: the command pool's size is the rounds' concurrency.
    canceller = RedisCancellation(server.url, prefix=prefix, ack_timeout=2, heartbeat_interval=60)
    remote = await canceller.aattach()
    owner = redis.Redis(port=server.port)
    owner.set(f"{prefix}owner:scripted", b'{"interval": 30, "ttl": 60}', ex=60)
    results = {"run-a": "cancelled", "run-b": "ended", "run-c": "not_found"}
    owner.hset(f"{prefix}runs", mapping=dict.fromkeys(results, b'{"owner": "scripted", "agent": "a"}'))
    inbox = owner.pubsub(ignore_subscribe_messages=True)
    inbox.subscribe(f"{prefix}cancel:scripted")
    rounds = 20  # of 6 concurrent cancels, the first one to fill the command pool

    def scripted_owner() -> None:  # answers the requests in pairs, the second one first
        for _ in range(rounds * 3):
            pair = [json.loads(next_message(inbox)["data"]) for _ in range(2)]
            for request in reversed(pair):
                answer = {"request": request["id"], "result": results[request["run_id"]]}
                owner.publish(f"{prefix}reply:{request['reply_to']}", json.dumps(answer))

    answers: dict[str, str] = {}

    async def cancel(run_id: str) -> None:
        outcome = await remote.cancel(run_id, agent_id="a", reason=None, mode="immediate", grace=None)
        answers[run_id] = outcome.value

    try:
        await _until(lambda: owner.pubsub_numsub(f"{prefix}reply:{owner_id()}")[0][1] == 1)
        thread = threading.Thread(target=scripted_owner)
        thread.start()
        for round_ in range(rounds):
            if round_ == 1:
                before = int(owner.info("stats")["total_connections_received"])
            answers.clear()
            async with anyio.create_task_group() as tg:
                for run_id in [*results, *results]:
                    tg.start_soon(cancel, run_id)
            assert answers == results
        await anyio.to_thread.run_sync(thread.join)
        assert int(owner.info("stats")["total_connections_received"]) == before
    finally:
        inbox.close()
        owner.close()
        await remote.adetach()
        server.stop()


async def test_a_run_is_in_redis_before_its_first_event_and_gone_after_its_end(
    redis_url: str, prefix: str, attached: RedisCancellation
) -> None:
    # A "Stop" sent to another worker as soon as the run's first event arrives must find the run.
    reader = redis.Redis.from_url(redis_url)
    agent = Agent(name="visible", model=ScriptedModel(["a "], stall=30, stall_at=0))
    try:
        entries = []
        async for event in agent.arun("go", stream=True, run_id="seen-1"):
            if event.event == RunEvent.run_started:
                entries.append(reader.hget(f"{prefix}runs", "seen-1"))
                assert await agent.acancel_run("seen-1") is True
        assert [json.loads(raw) for raw in entries] == [{"owner": owner_id(), "agent": "visible"}]
        await _until(lambda: reader.hget(f"{prefix}runs", "seen-1") is None)
    finally:
        reader.close()


async def test_a_lost_message_is_not_lost_the_durable_marker_stops_the_run(
    redis_url: str, prefix: str, attached: RedisCancellation
) -> None:
    agent = Agent(name="marked", model=ScriptedModel(["a ", "b "], stall=30, stall_at=1))
    stream = agent.arun("go", stream=True, run_id="marked-1")
    writer = redis.Redis.from_url(redis_url)
    async for event in stream:
        if event.event == RunEvent.run_content:
            request = {
                "id": "lost-request",
                "run_id": "marked-1",
                "agent_id": "marked",
                "reason": "lost in transit",
            }
            writer.set(
                f"{prefix}marker:marked-1", json.dumps({**request, "mode": "immediate", "grace": None})
            )
    writer.close()
    out = stream.output
    assert out is not None and (out.status, out.cancel_source, out.cancel_reason) == (
        RunStatus.cancelled,
        "remote",
        "lost in transit",
    )


async def test_redis_down_runs_and_local_cancels_work_remote_cancel_fails_fast(prefix: str) -> None:
    remote = RedisCancellation(f"redis://127.0.0.1:{free_port()}/0", prefix=prefix, heartbeat_interval=0.2)
    await remote.aattach()
    try:
        agent = Agent(name="offline", model=ScriptedModel([f"w{i} " for i in range(50)], delay=0.01))
        stream = agent.arun("go", stream=True)
        async for event in stream:
            if event.event == RunEvent.run_content:
                assert await agent.acancel_run(stream.run_id, reason="local") is True
        assert stream.output is not None and stream.output.cancel_reason == "local"
        started = time.monotonic()
        with pytest.raises(RemoteCancelError, match="could not reach Redis"):
            await agent.acancel_run("elsewhere-1")
        assert time.monotonic() - started < 2
        assert (await agent.arun("again")).status is RunStatus.completed
    finally:
        await remote.adetach()


async def test_a_redis_that_never_answers_delays_a_run_start_by_connect_timeout_at_most(prefix: str) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        remote = RedisCancellation(url, prefix=prefix, connect_timeout=0.2, ack_timeout=0.4)
        await remote.aattach()
        try:
            agent = Agent(name="unheard", model=ScriptedModel(["still ", "answers"]))
            started = time.monotonic()
            out = await agent.arun("go")
            assert (out.status, out.content) == (RunStatus.completed, "still answers")
            assert time.monotonic() - started < 0.9  # its commands time out only after 1 s
        finally:
            await remote.adetach()


async def test_live_runs_are_registered_again_when_redis_comes_back(prefix: str) -> None:
    server = ThrowawayRedis().start()
    remote = RedisCancellation(server.url, prefix=prefix, heartbeat_interval=0.2)
    await remote.aattach()
    client = redis.Redis(port=server.port, socket_connect_timeout=0.5)
    try:
        agent = Agent(name="durable", model=ScriptedModel(["x "], stall=30, stall_at=1))
        stream = agent.arun("go", stream=True, run_id="back-1")
        async for event in stream:
            if event.event == RunEvent.run_content:
                break
        await _until(lambda: client.hget(f"{prefix}runs", "back-1") is not None)
        server.stop()
        await anyio.sleep(0.5)  # heartbeats fail meanwhile; runs go on
        assert registry.get("back-1") is not None
        server.start()  # an empty Redis: everything it knew is gone
        await _until(lambda: client.hget(f"{prefix}runs", "back-1") is not None)
        await stream.aclose()
    finally:
        client.close()
        await remote.adetach()
        server.stop()


async def _until(check: object, seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            await anyio.sleep(0.05)
