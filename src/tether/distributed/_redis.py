"""RedisCancellation: stop a run from any process, by push, with an acknowledgement.

Keys, under ``prefix`` (their names and message shapes are in ``_wire``):

- ``runs`` (hash): run id -> ``{"owner", "agent"}``; written when a run registers (and awaited before
  its first event), removed when it ends, and rewritten for every live run by the heartbeat (so a Redis
  restart loses nothing for long);
- ``owner:<owner>``: the owner's liveness, refreshed by one heartbeat pipeline every few seconds; when it
  has expired, every live worker's heartbeat removes that owner's ``runs`` entries (a page per beat);
- ``cancel:<owner>`` (pub/sub): cancel requests for that owner's runs;
- ``reply:<canceller>`` (pub/sub): the owner's answers to one canceller's requests (from its listener
  or its heartbeat); every process's listener subscribes to its own, next to its ``cancel:`` channel;
- ``answer:<request>``: the owner's durable copy of its answer (for an answer lost in transit);
- ``marker:<run>``: a durable copy of a cancel request, written before publishing; the owner's heartbeat
  applies it, so a lost message still stops the run within one heartbeat;
- ``early:<run>``: a user's cancel for a run that no worker had yet (it overtook the start), kept for
  ``cancel_memory`` seconds; the worker where the run registers reads and removes it with the entry
  write (``_local_runs``), and the run starts cancelled.

Nothing is sent per streamed chunk: two commands when a run registers (its entry, and the read of an early
cancel; awaited before its first event, so any worker can find the run once a client has seen it), one
when it ends, one pipeline per heartbeat.
All Redis I/O runs on tether's background event loop (the sync bridge's), so runs on any loop, in any
thread, can use it; registering a run only queues a command for that loop (``_outbox``), it never waits.
Garbage read from Redis is logged and skipped; an outage or an error in a background task is logged and
the task goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .._background_loop import at_exit
from .._background_loop import background_loop as bridge
from .._run._handle import RunHandle
from .._run._lifecycle import CancelMode
from .._run._registry import RunRegistry, check_memory, registry
from ..exceptions import RemoteCancelError
from ..storage._base import owner_id
from ._answers import Answerer
from ._exchange import Replies, exchange
from ._local_runs import LocalRuns
from ._owners import forget_owner, sweep
from ._protocol import RemoteOutcome
from ._wire import Ack, Beat, Entry, Keys, Request, parse

logger = logging.getLogger("tether.distributed")


class RedisCancellation:
    """Cross-process cancellation over Redis, attached to this process's run registry.

    Example::

        RedisCancellation("redis://127.0.0.1:6379/0", prefix="myapp:").attach()
        agent.cancel_run(run_id)   # works for a run owned by another process too

    Times are in seconds. A remote cancel is answered once the owner acknowledges it (within
    ``ack_timeout`` when it is live and reachable by pub/sub, else at its next heartbeat); an owner that
    does not answer by then is dead, and what it left in Redis is removed.

    A user's cancel for a run id that no worker has yet answers ``not_found`` but is kept in Redis for
    ``cancel_memory`` seconds (default: the attached registry's, 60 s; 0 keeps none): a run that then
    registers with that id, in any worker, starts cancelled (``source="user"``).
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
        cancel_memory: float | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.owner_ttl = owner_ttl
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.cancel_memory = None if cancel_memory is None else check_memory(cancel_memory)
        self._keys = Keys(prefix)
        self._owner = owner_id()
        self._runs = LocalRuns(self._keys, self._owner)  # runs living in this process, their entries
        self._answerer = Answerer(self._keys, self._find)  # applies and answers requests for our runs
        self._client: aioredis.Redis | None = None  # commands
        self._subscriber: aioredis.Redis | None = None  # the listener's subscription
        self._replies: Replies | None = None  # answers to this process's cancels, from the listener
        self._loop: asyncio.AbstractEventLoop | None = None  # the background loop, all Redis I/O runs there
        self._tasks: list[asyncio.Task[None]] = []  # the listener and the heartbeat
        self._writer: asyncio.Task[None] | None = None  # sends the outbox
        self._registry: RunRegistry | None = None
        self._down_since: float | None = None
        self._sweep_cursor = 0
        self._stopping = False

    def __repr__(self) -> str:
        return f"RedisCancellation(prefix={self.prefix!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, to: RunRegistry = registry) -> RedisCancellation:
        """Start listening and heartbeating, and route remote cancels of ``to`` through Redis.

        Never waits for Redis: if it is down, runs and local cancels work and it is retried.
        At interpreter exit this process's entries are removed (a crash leaves them to expire).
        Raises :class:`~tether.exceptions.RemoteCancelError` if another canceller is attached to ``to``.
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
            at_exit(self._at_exit)  # registered after the background loop's, so it runs before it stops
        self._registry = to
        for handle in to.handles():
            self._runs.live[handle.run_id] = handle.agent_id
        to.remote = self

    def _release(self) -> None:
        if self._registry is not None and self._registry.remote is self:
            self._registry.remote = None

    async def _start(self) -> None:
        # Every command is idempotent (a request is applied once per id): after a Redis restart, a pooled
        # connection it dropped fails once and the command is sent again on a new one (not on a timeout:
        # a frozen Redis fails fast). Subscriptions get no such retry (redis-py's reconnecting pub/sub
        # can hang on cancel and leak its socket): a new one is made by the loop that needs it.
        self._client = self._connect(retries=1)
        self._subscriber = self._connect(retries=0)
        self._loop = loop = asyncio.get_running_loop()
        self._replies = Replies()
        self._stopping = False
        self._runs.outbox.open()
        pause = min(self.heartbeat_interval, 1.0)
        self._tasks = [
            loop.create_task(self._forever("listener", self._listen, pause)),
            loop.create_task(self._forever("heartbeat", self._beat, self.heartbeat_interval)),
        ]
        outbox = self._runs.outbox
        self._writer = loop.create_task(self._forever("writer", lambda: outbox.send(self._client), 0))

    def _connect(self, *, retries: int) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(self.ack_timeout, 1.0),
            retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
        )

    def _at_exit(self) -> None:
        if self._client is not None:
            self.detach()

    async def _stop(self) -> None:
        # A flag as well as cancel(): on Python 3.11 a cancel that lands as redis-py's read timeout
        # expires becomes a TimeoutError, which it takes for "no message", and the loop would go on.
        self._stopping = True
        client, self._client = self._client, None  # no command starts from here on
        subscriber, self._subscriber = self._subscriber, None
        for task in self._tasks:
            task.cancel()
        self._runs.outbox.close()  # the writer sends what is queued, then ends
        # Commands in flight end on their own (bounded by the socket timeout); closing the client under
        # one that is still connecting would leave its new socket open.
        if waiting := [*self._tasks, *([self._writer] if self._writer is not None else [])]:
            await asyncio.wait(waiting, timeout=3)
        self._tasks, self._writer = [], None
        self._runs.outbox.discard()  # anything queued too late: forget_owner removes every entry of ours
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await forget_owner(client, self._keys, self._owner)
            await client.aclose()
        if subscriber is not None:
            await subscriber.aclose()

    # -- hooks from the registry (any thread, never blocking) ------------------------------------

    def run_registered(self, handle: RunHandle) -> None:
        self._runs.registered(handle)

    async def run_started(self, handle: RunHandle) -> None:
        """Wait (at most ``connect_timeout``) until Redis has the entry :meth:`run_registered` sent.

        So a cancel sent to any worker once the run's first event is out finds the run, and an early
        cancel kept for it is applied before that event. With Redis known to be down the run does not
        wait: the heartbeat writes the entry when Redis is back.
        """
        await self._runs.started(handle, 0 if self._down_since is not None else self.connect_timeout)

    def run_unregistered(self, handle: RunHandle) -> None:
        self._runs.unregistered(handle)

    # -- cancelling a run that lives elsewhere ---------------------------------------------------

    async def cancel(
        self, run_id: str, *, agent_id: str | None, reason: str | None, mode: CancelMode, grace: float | None
    ) -> RemoteOutcome:
        """Deliver a cancel to the run's owner and wait (bounded) for its exact answer.

        Raises :class:`~tether.exceptions.RemoteCancelError` when Redis cannot be reached (a connection it
        dropped is retried once) or the owner failed to apply the cancel.
        """
        loop = self._loop
        if loop is None or self._client is None:
            raise RemoteCancelError("remote cancellation is not running")
        request = Request(
            id=uuid.uuid4().hex,
            run_id=run_id,
            agent_id=agent_id,
            reason=reason,
            mode=mode,
            grace=grace,
            reply_to=self._owner,
        )
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._deliver(request), loop))

    async def _deliver(self, request: Request) -> RemoteOutcome:
        client, replies = self._client, self._replies
        if client is None or replies is None:
            raise RemoteCancelError("remote cancellation is not running")
        try:
            return await exchange(
                client,
                replies,
                self._keys,
                request,
                ack_timeout=self.ack_timeout,
                default_interval=self.heartbeat_interval,
                remember=self._cancel_memory(),
            )
        except (RedisError, OSError) as exc:
            self._note_down(exc)
            raise RemoteCancelError(f"could not reach Redis to cancel run {request.run_id}: {exc}") from exc
        except (KeyboardInterrupt, SystemExit) as exc:  # must not end the background loop
            raise RemoteCancelError(f"cancelling run {request.run_id} was interrupted: {exc!r}") from exc

    # -- the owner's side ----------------------------------------------------------------------

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]], pause: float) -> None:
        """Run ``step`` until stopped; whatever it raises (an outage, garbage, a bug) is logged."""
        while not self._stopping:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._note_down(exc)
            except BaseException:
                logger.exception("tether's Redis %s failed; it goes on", name)
            await asyncio.sleep(pause)

    async def _listen(self) -> None:
        """One subscription to this process's cancel and reply channels, until stopped: it applies and
        answers the requests for its runs, and hands the answers to its own requests to their exchange."""
        client, subscriber, replies = self._client, self._subscriber, self._replies
        if client is None or subscriber is None or replies is None:
            return
        cancels, answers = self._keys.cancel(self._owner), self._keys.reply(self._owner)
        async with subscriber.pubsub() as pubsub:
            try:
                await pubsub.subscribe(cancels, answers)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    channel, data = message["channel"].decode(errors="replace"), message["data"]
                    if message["type"] == "subscribe" and data == 2:  # both confirmed
                        replies.ready.set()
                    elif message["type"] != "message":
                        continue
                    elif channel == answers and (ack := parse(Ack, data, channel)) is not None:
                        replies.deliver(ack)
                    elif channel == cancels and (request := parse(Request, data, channel)) is not None:
                        await self._answerer.answer(client, request)
            finally:
                replies.ready.clear()

    async def _beat(self) -> None:
        """One heartbeat: refresh this owner and its runs' entries, apply markers, sweep a page."""
        if (client := self._client) is None:
            return
        live = dict(self._runs.live)
        pipe = client.pipeline(transaction=False)
        beat = Beat(interval=self.heartbeat_interval, ttl=self.owner_ttl).dumps()
        pipe.set(self._keys.owner(self._owner), beat, px=int(self.owner_ttl * 1000))
        if live:
            entries = {rid: Entry.written(self._owner, agent) for rid, agent in live.items()}
            pipe.hset(self._keys.runs, mapping=cast("dict[Any, Any]", entries))
            pipe.mget([self._keys.marker(rid) for rid in live])
        results = await pipe.execute()
        self._note_up()
        for run_id, raw in zip(live, results[2] if live else [], strict=False):
            if raw is not None:  # a cancel whose message was lost (or not yet answered)
                await self._answerer.apply_marker(client, run_id, raw)
        self._sweep_cursor = await sweep(client, self._keys, self._sweep_cursor, self._owner)

    # -- plumbing ------------------------------------------------------------------------------

    def _find(self, run_id: str) -> RunHandle | None:
        return self._registry.get(run_id) if self._registry is not None else None

    def _cancel_memory(self) -> float:
        if self.cancel_memory is not None:
            return self.cancel_memory
        return self._registry.cancel_memory if self._registry is not None else registry.cancel_memory

    def _note_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("Redis at %s is unreachable (%s); local runs and cancels go on", self.url, exc)

    def _note_up(self) -> None:
        if self._down_since is not None:
            logger.warning("Redis is reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
