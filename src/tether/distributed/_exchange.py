"""The canceller's side: deliver one cancel request to a run's owner and get its exact answer.

1. ``runs[<run>]`` names the owner (no entry, or another agent's run: ``not_found``). A Redis that has
   just restarted (empty) is given a heartbeat interval for the owners to write their entries again.
   With no entry at all, the request is kept as ``early:<run>`` (``remember`` seconds) for a run that
   registers later: the cancel overtook the start (see ``_local_runs``), and ``runs[<run>]`` is read once
   more, since a run that registered meanwhile may have missed it.
2. Write the durable ``marker:<run>`` and publish on ``cancel:<owner>`` (one round trip; published twice
   at most): a live owner answers on ``reply:<canceller>``, which this process's listener is subscribed
   to already (:class:`Replies`), within ``ack_timeout``. No connection is opened per cancel.
3. No answer: a live owner still answers when its next heartbeat applies the marker, so wait until that
   heartbeat is due (plus ``ack_timeout``), and on while the owner keeps beating (after a Redis outage
   every owner is late). No beat for two of its intervals while Redis answers us: the owner is dead;
   its entries are removed and the answer is ``owner_dead``. An answer lost in transit is read from the
   owner's durable copy, ``answer:<request>``.

The request id makes the exchange idempotent: sent twice (a retry), it is applied once and answered the
same way (the owner remembers its recent answers).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import redis.asyncio as aioredis

from ..exceptions import RemoteCancelError
from ._owners import forget_owner, last_beat, next_beat_within
from ._protocol import RemoteOutcome
from ._wire import Ack, Entry, Keys, Request, logger, parse

MARKER_TTL = 60
"""Seconds a marker lives: an owner applies it at its next heartbeat, well within that."""
ANSWER_WITHIN = 15.0
"""Seconds a cancel waits at most for an owner that keeps beating but has not answered yet."""
RECONNECT_MARGIN = 1.0
"""Seconds an owner may need to reconnect after Redis came back (its socket timeout)."""
RESTART_SETTLE = 5.0
"""At most this many seconds (plus ``ack_timeout``) after Redis started, an unknown run is looked up
again: owners write their entries again at their next heartbeat (every 2 s by default)."""


class Replies:
    """The answers this process's exchanges wait for, delivered by its listener (one subscription to
    ``reply:<owner>`` for every cancel this process sends). Used on the background loop only."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Ack]] = {}
        self.ready = asyncio.Event()
        """Set while the listener is subscribed: an answer published now reaches :meth:`deliver`."""

    def expect(self, request_id: str) -> asyncio.Future[Ack]:
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def deliver(self, ack: Ack) -> None:
        """Hand ``ack`` to the exchange waiting for it (an answer nobody waits for is dropped)."""
        future = self._waiting.get(ack.request)
        if future is not None and not future.done():
            future.set_result(ack)


async def exchange(
    client: aioredis.Redis,
    replies: Replies,
    keys: Keys,
    request: Request,
    *,
    ack_timeout: float,
    default_interval: float,
    remember: float = 0,
) -> RemoteOutcome:
    """Deliver ``request`` (its ``reply_to`` set: answers come through ``replies``); its outcome.

    ``remember``: seconds a request for a run with no entry is kept for a run that registers later.

    Raises redis' errors (the caller translates them), and
    :class:`~tether.exceptions.RemoteCancelError` if the owner failed to apply it."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hget(keys.runs, request.run_id)
    (seconds, micros), raw = await pipe.execute()
    since = float(seconds) + float(micros) / 1e6
    if raw is None:  # unknown, or Redis restarted empty and the owner has not written it again yet
        settle = min(default_interval, RESTART_SETTLE) + ack_timeout
        raw = await _read_again_after_a_restart(client, keys, request.run_id, settle)
    early = raw is None and remember > 0
    if early:
        raw = await _keep_early(client, keys, request, remember)
    entry = parse(Entry, raw, f"{keys.runs}[{request.run_id!r}]") if raw is not None else None
    if entry is None or request.agent_id not in (None, entry.agent):
        if early and raw is not None:  # the run registered meanwhile: it is not "early"
            await client.delete(keys.early(request.run_id))
        return RemoteOutcome.not_found
    payload = request.dumps()
    answer = replies.expect(request.id)
    try:
        with anyio.move_on_after(ack_timeout):  # the listener (re)subscribing: its answer would be lost
            await replies.ready.wait()
        for attempt in range(2):  # one retry: a message lost in transit is sent again
            pipe = client.pipeline(transaction=False)
            if attempt == 0:
                pipe.set(keys.marker(request.run_id), payload, ex=MARKER_TTL)
                if early:  # the run registered meanwhile: delivered as to any live run
                    pipe.delete(keys.early(request.run_id))
            pipe.publish(keys.cancel(entry.owner), payload)
            await pipe.execute()
            if (ack := await _within(answer, ack_timeout / 2)) is not None:
                return _outcome(ack, request)
        due = await next_beat_within(client, keys, entry.owner, default_interval)
        if (ack := await _within(answer, due + ack_timeout)) is not None:
            return _outcome(ack, request)
        waited = await _while_it_beats(client, answer, keys, entry.owner, request, ack_timeout, since)
        if waited is not None:
            return _outcome(waited, request)
    finally:
        replies.forget(request.id)
    await client.delete(keys.marker(request.run_id))
    removed = await forget_owner(client, keys, entry.owner)
    logger.warning(
        "owner %s of run %s did not answer a cancel: it is gone; removed its %d run entries",
        entry.owner,
        request.run_id,
        removed,
    )
    return RemoteOutcome.owner_dead


async def _keep_early(client: aioredis.Redis, keys: Keys, request: Request, seconds: float) -> Any:
    """Keep ``request`` as ``early:<run>`` for ``seconds``; then the run's entry, read again.

    The owner writes the entry, then reads (GETDEL) ``early:<run>``; here it is the other way round. So
    either the owner finds the request, or the entry read here is there (and the request is delivered).
    """
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.early(request.run_id), request.dumps(), px=max(1, round(seconds * 1000)))
    pipe.hget(keys.runs, request.run_id)
    _, raw = await pipe.execute()
    return raw


async def _while_it_beats(
    client: aioredis.Redis,
    answer: asyncio.Future[Ack],
    keys: Keys,
    owner: str,
    request: Request,
    ack_timeout: float,
    since: float,
) -> Ack | None:
    """Wait for the answer while ``owner`` keeps beating; None once it has not beaten for two of its
    intervals (and ``ack_timeout`` and a reconnect margin) counted from ``since`` (when this exchange
    started, on Redis' clock) or its last beat, whichever is later: it is dead. An owner that beats but
    does not answer within ``ANSWER_WITHIN`` is a RemoteCancelError.

    After a Redis outage (a freeze, a restart) every owner is late at once: counting from ``since``
    gives each one its full chance once Redis answers again.
    """
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        if (kept := await _kept_answer(client, keys, request)) is not None:
            return kept  # it answered, but the ack was lost in transit (it may have exited since)
        beat = await last_beat(client, keys, owner)
        if beat is None:
            return None  # its key is gone: it died (or exited without answering)
        beat_at, interval = beat
        limit = max(beat_at, since) + 2 * interval + ack_timeout + RECONNECT_MARGIN
        now = await _redis_now(client)
        if now >= limit:  # no heartbeat for two of its intervals while Redis answered: dead...
            return await _kept_answer(client, keys, request)  # ...unless it answered just now
        if (ack := await _within(answer, limit - now)) is not None:
            return ack
        if time.monotonic() > deadline:
            raise RemoteCancelError(
                f"the owner of run {request.run_id} is alive but did not answer the cancel"
            )
        since = max(since, beat_at)


async def _kept_answer(client: aioredis.Redis, keys: Keys, request: Request) -> Ack | None:
    """The owner's durable copy of its answer to ``request`` (None if it has not answered)."""
    key = keys.answer(request.id)
    raw = await client.get(key)
    return parse(Ack, raw, key) if raw is not None else None


async def _redis_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + float(micros) / 1e6


async def _read_again_after_a_restart(client: aioredis.Redis, keys: Keys, run_id: str, settle: float) -> Any:
    """The run's entry, read again once every live owner has re-registered its runs, if Redis is younger
    than ``settle`` seconds (a heartbeat interval and a margin); None at once otherwise."""
    try:
        uptime = float((await client.info("server"))["uptime_in_seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if uptime >= settle:
        return None
    await anyio.sleep(settle - uptime)
    return await client.hget(keys.runs, run_id)


def _outcome(ack: Ack, request: Request) -> RemoteOutcome:
    if ack.result == "failed":
        raise RemoteCancelError(f"the owner of run {request.run_id} failed to apply the cancel (see its log)")
    return RemoteOutcome(ack.result)


async def _within(answer: asyncio.Future[Ack], seconds: float) -> Ack | None:
    """The answer, if it comes within ``seconds``; None otherwise (the future stays usable)."""
    if not answer.done():
        await asyncio.wait((answer,), timeout=max(seconds, 0))
    return answer.result() if answer.done() else None
