"""RedisCancellation: stop a run from any process, by push, with an acknowledgement.

Keys, under ``prefix``:

- ``runs`` (hash): run id -> ``{"owner", "agent"}``; written when a run registers (and awaited before
  its first event), removed when it ends, and rewritten for every live run by the heartbeat (so a Redis
  restart loses nothing for long);
- ``owner:<owner>``: the owner's liveness, refreshed by one heartbeat pipeline every few seconds;
- ``cancel:<owner>`` (pub/sub): cancel requests for that owner's runs;
- ``ack:<request>`` (pub/sub): the owner's answer to one request;
- ``marker:<run>``: a durable copy of a cancel request, written before publishing; the owner's heartbeat
  applies it, so a lost message still stops the run within one heartbeat.

Nothing is sent per streamed chunk: one command when a run registers (awaited before its first event,
so any worker can find the run once a client has seen it), one when it ends, one pipeline per heartbeat.
All Redis I/O runs on tether's background event loop (the sync bridge's), so runs on any loop, in any
thread, can use it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import time
import uuid
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .._background_loop import background_loop as bridge
from .._run._handle import RunHandle
from .._run._lifecycle import CancelMode
from .._run._registry import RunRegistry, registry
from ..exceptions import RemoteCancelError
from ..storage._base import owner_id
from ._protocol import RemoteOutcome

logger = logging.getLogger("tether.distributed")

MARKER_TTL = 60


class RedisCancellation:
    """Cross-process cancellation over Redis, attached to this process's run registry.

    Example::

        RedisCancellation("redis://127.0.0.1:6379/0", prefix="myapp:").attach()
        agent.cancel_run(run_id)   # works for a run owned by another process too
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tether:",
        heartbeat_interval: float = 2.0,
        owner_ttl: float = 10.0,
        ack_timeout: float = 1.0,
        connect_timeout: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.owner_ttl = owner_ttl
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._owner = owner_id()
        self._live: dict[str, str] = {}  # run id -> agent id, of runs living in this process
        self._writes: dict[str, concurrent.futures.Future[None]] = {}  # entries of runs not yet started
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[Any]] = set()  # commands sent by _soon, in flight
        self._registry: RunRegistry | None = None
        self._down_since: float | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"RedisCancellation(prefix={self.prefix!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, to: RunRegistry = registry) -> RedisCancellation:
        """Start listening and heartbeating, and route remote cancels of ``to`` through Redis.

        Never waits for Redis: if it is down, runs and local cancels work and it is retried.
        At interpreter exit this process's entries are removed (a crash leaves them to expire).
        """
        self._claim(to)
        bridge.call(self._start)
        return self

    async def aattach(self, to: RunRegistry = registry) -> RedisCancellation:
        """:meth:`attach` from async code (it does not block the event loop)."""
        self._claim(to)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._start(), bridge.loop()))
        return self

    def detach(self) -> None:
        """Stop listening and heartbeating; this process's runs are forgotten in Redis."""
        self._release()
        with contextlib.suppress(RuntimeError):  # the bridge already stopped
            bridge.call(self._stop)

    async def adetach(self) -> None:
        """:meth:`detach` from async code."""
        self._release()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop(), bridge.loop()))

    def _claim(self, to: RunRegistry) -> None:
        if to.remote is not None and to.remote is not self:
            raise RemoteCancelError("another remote canceller is already attached to this registry")
        if self._registry is None:
            atexit.register(self._at_exit)  # registered after the bridge's, so it runs before it stops
        self._registry = to
        for handle in to.handles():
            self._live[handle.run_id] = handle.agent_id
        to.remote = self

    def _release(self) -> None:
        if self._registry is not None and self._registry.remote is self:
            self._registry.remote = None

    async def _start(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(self.ack_timeout, 1.0),
            retry=Retry(NoBackoff(), 0),
        )
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._heartbeat())]

    def _at_exit(self) -> None:
        if self._client is not None:
            self.detach()

    async def _stop(self) -> None:
        # A flag as well as cancel(): on Python 3.11 a cancel that lands as redis-py's read timeout
        # expires becomes a TimeoutError, which it takes for "no message", and the loop would go on.
        self._stopping = True
        client, self._client = self._client, None  # no command starts from here on
        for task in self._tasks:
            task.cancel()
        # Commands in flight end on their own (bounded by the socket timeout); closing the client under
        # one that is still connecting would leave its new socket open.
        if waiting := [*self._tasks, *self._sending]:
            await asyncio.wait(waiting, timeout=3)
        self._tasks = []
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._forget_mine(client)
            await client.aclose()

    async def _forget_mine(self, client: aioredis.Redis) -> None:
        """Remove this owner and every run entry it wrote (also of runs whose removal is in flight)."""
        await client.delete(self._key("owner", self._owner))
        entries = await client.hgetall(self._key("runs"))
        mine = [rid for rid, raw in entries.items() if json.loads(raw).get("owner") == self._owner]
        if mine:
            await client.hdel(self._key("runs"), *mine)

    # -- hooks from the registry (any thread, never blocking) ------------------------------------

    def run_registered(self, handle: RunHandle) -> None:
        self._live[handle.run_id] = handle.agent_id
        entry = json.dumps({"owner": self._owner, "agent": handle.agent_id})
        written = self._soon(lambda client: client.hset(self._key("runs"), handle.run_id, entry))
        if written is not None:
            self._writes[handle.run_id] = written

    async def run_started(self, handle: RunHandle) -> None:
        """Wait (at most ``connect_timeout``) until Redis has the entry :meth:`run_registered` sent.

        So a cancel sent to any worker once the run's first event is out finds the run. With Redis
        known to be down the run does not wait: the heartbeat writes the entry when Redis is back.
        """
        written = self._writes.pop(handle.run_id, None)
        if written is None or written.done() or self._down_since is not None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.connect_timeout):
            # shield(): giving up waiting must not cancel the write itself
            await asyncio.shield(asyncio.wrap_future(written))

    def run_unregistered(self, handle: RunHandle) -> None:
        self._live.pop(handle.run_id, None)
        self._writes.pop(handle.run_id, None)  # a run that never started
        self._soon(lambda client: client.hdel(self._key("runs"), handle.run_id))

    def _soon(self, command: Any) -> concurrent.futures.Future[None] | None:
        """Send ``command`` from the bridge's loop; its future, or None when the bridge is stopping."""

        async def send() -> None:
            client = self._client
            task = asyncio.current_task()
            if client is None or task is None:
                return
            self._sending.add(task)
            try:
                await command(client)
            except RedisError as exc:
                self._note_down(exc)  # the heartbeat re-registers live runs when Redis is back
            finally:
                self._sending.discard(task)

        try:
            return bridge.portal().start_task_soon(send)
        except RuntimeError:  # the bridge is shutting down
            return None

    # -- cancelling a run that lives elsewhere ---------------------------------------------------

    async def cancel(
        self, run_id: str, *, agent_id: str | None, reason: str | None, mode: CancelMode, grace: float | None
    ) -> RemoteOutcome:
        """Deliver a cancel to the run's owner and wait (bounded) for its answer."""
        request = {"run_id": run_id, "agent_id": agent_id, "reason": reason, "mode": mode, "grace": grace}
        future = asyncio.run_coroutine_threadsafe(self._deliver(request), bridge.loop())
        return await asyncio.wrap_future(future)

    async def _deliver(self, request: dict[str, Any]) -> RemoteOutcome:
        client = self._client
        if client is None:
            raise RemoteCancelError("remote cancellation is not running")
        try:
            return await self._exchange(client, request)
        except (RedisError, OSError) as exc:
            self._note_down(exc)
            run_id = request["run_id"]
            raise RemoteCancelError(f"could not reach Redis to cancel run {run_id}: {exc}") from exc

    async def _exchange(self, client: aioredis.Redis, request: dict[str, Any]) -> RemoteOutcome:
        run_id = request["run_id"]
        raw = await client.hget(self._key("runs"), run_id)
        if raw is None:
            return RemoteOutcome.not_found
        entry = json.loads(raw)
        if request["agent_id"] is not None and entry["agent"] != request["agent_id"]:
            return RemoteOutcome.not_found
        if not await client.exists(self._key("owner", entry["owner"])):
            return RemoteOutcome.not_found  # its owner died; the store's reaper marks the run ERROR
        request["id"] = uuid.uuid4().hex
        payload = json.dumps(request)
        await client.set(self._key("marker", run_id), payload, ex=MARKER_TTL)
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(self._key("ack", request["id"]))
            for _attempt in range(2):  # one retry: a message lost in transit is sent again
                await client.publish(self._key("cancel", entry["owner"]), payload)
                answer = await _next_message(pubsub, self.ack_timeout / 2)
                if answer is not None:
                    return RemoteOutcome(json.loads(answer)["result"])
        if await self._owner_is_fresh(client, entry["owner"]):
            return RemoteOutcome.cancelled  # no answer yet, but its next heartbeat applies the marker
        await client.delete(self._key("marker", run_id))
        return RemoteOutcome.not_found

    async def _owner_is_fresh(self, client: aioredis.Redis, owner: str) -> bool:
        """Did ``owner`` heartbeat within two of its intervals? Measured on Redis' own clock (its TTL)."""
        key = self._key("owner", owner)
        raw, left_ms = await client.get(key), await client.pttl(key)
        if raw is None or left_ms < 0:
            return False
        beat = json.loads(raw)
        age = float(beat["ttl"]) - left_ms / 1000
        return age <= 2 * float(beat["interval"]) + 0.5

    # -- the owner's side ----------------------------------------------------------------------

    async def _listen(self) -> None:
        channel = self._key("cancel", self._owner)
        while not self._stopping:
            client = self._client
            try:
                assert client is not None
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    while not self._stopping:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None:
                            await self._answer(client, json.loads(message["data"]))
            except (RedisError, OSError) as exc:
                self._note_down(exc)
                await asyncio.sleep(min(self.heartbeat_interval, 1.0))

    async def _answer(self, client: aioredis.Redis, request: dict[str, Any]) -> None:
        result = self._apply(request)
        await client.delete(self._key("marker", request["run_id"]))
        await client.publish(self._key("ack", request["id"]), json.dumps({"result": result.value}))

    def _apply(self, request: dict[str, Any]) -> RemoteOutcome:
        handle = self._registry.get(request["run_id"]) if self._registry is not None else None
        if handle is None or (request.get("agent_id") not in (None, handle.agent_id)):
            return RemoteOutcome.not_found
        mode: CancelMode = "after_turn" if request.get("mode") == "after_turn" else "immediate"
        accepted = handle.request_cancel(
            request.get("reason"), "remote", mode=mode, grace=request.get("grace")
        )
        return RemoteOutcome.cancelled if accepted else RemoteOutcome.ended

    async def _heartbeat(self) -> None:
        while not self._stopping:
            client = self._client
            live = dict(self._live)
            try:
                assert client is not None
                pipe = client.pipeline(transaction=False)
                beat = json.dumps({"interval": self.heartbeat_interval, "ttl": self.owner_ttl})
                pipe.set(self._key("owner", self._owner), beat, px=int(self.owner_ttl * 1000))
                if live:
                    entries = {rid: json.dumps({"owner": self._owner, "agent": a}) for rid, a in live.items()}
                    pipe.hset(self._key("runs"), mapping=cast("dict[Any, Any]", entries))
                    pipe.mget([self._key("marker", rid) for rid in live])
                results = await pipe.execute()
                self._note_up()
                for marker in results[2] if live else []:
                    if marker is not None:
                        await self._answer(client, json.loads(marker))  # a cancel whose message was lost
            except (RedisError, OSError) as exc:
                self._note_down(exc)
            await asyncio.sleep(self.heartbeat_interval)

    # -- plumbing ------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _note_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("Redis at %s is unreachable (%s); local runs and cancels go on", self.url, exc)

    def _note_up(self) -> None:
        if self._down_since is not None:
            logger.warning("Redis is reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None


async def _next_message(pubsub: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            return message["data"]
    return None
