"""The canceller's side: deliver one cancel request to a run's owner and get its exact answer.

1. ``runs[<run>]`` names the owner (no entry, or another agent's run: ``not_found``). A Redis that has
   just restarted (empty) is given a heartbeat interval for the owners to write their entries again.
2. Subscribe to ``ack:<request>``, then write the durable ``marker:<run>``, then publish on
   ``cancel:<owner>`` (twice at most): a live owner answers by pub/sub within ``ack_timeout``.
3. No answer: a live owner still answers when its next heartbeat applies the marker, so wait until that
   heartbeat is due (plus ``ack_timeout``), and on while the owner keeps beating (after a Redis outage
   every owner is late). No beat for two of its intervals while Redis answers us: the owner is dead;
   its entries are removed and the answer is ``owner_dead``.

The request id makes the exchange idempotent: sent twice (a retry), it is applied once and answered the
same way (the owner remembers its recent answers).
"""

from __future__ import annotations

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


async def exchange(
    client: aioredis.Redis,
    subscriber: aioredis.Redis,
    keys: Keys,
    request: Request,
    *,
    ack_timeout: float,
    default_interval: float,
) -> RemoteOutcome:
    """Deliver ``request`` (commands on ``client``, the ack subscription on ``subscriber``); its outcome.

    Raises redis' errors (the caller translates them), and
    :class:`~tether.exceptions.RemoteCancelError` if the owner failed to apply it."""
    since = await _redis_now(client)
    raw = await client.hget(keys.runs, request.run_id)
    if raw is None:  # unknown, or Redis restarted empty and the owner has not written it again yet
        settle = min(default_interval, RESTART_SETTLE) + ack_timeout
        raw = await _read_again_after_a_restart(client, keys, request.run_id, settle)
    entry = parse(Entry, raw, f"{keys.runs}[{request.run_id!r}]") if raw is not None else None
    if entry is None or request.agent_id not in (None, entry.agent):
        return RemoteOutcome.not_found
    payload = request.dumps()
    async with subscriber.pubsub() as pubsub:
        await pubsub.subscribe(keys.ack(request.id))  # before the marker: an answer to it is not missed
        await client.set(keys.marker(request.run_id), payload, ex=MARKER_TTL)
        for _attempt in range(2):  # one retry: a message lost in transit is sent again
            await client.publish(keys.cancel(entry.owner), payload)
            if (ack := await _next_ack(pubsub, ack_timeout / 2, keys.ack(request.id))) is not None:
                return _outcome(ack, request)
        due = await next_beat_within(client, keys, entry.owner, default_interval)
        if (ack := await _next_ack(pubsub, due + ack_timeout, keys.ack(request.id))) is not None:
            return _outcome(ack, request)
        waited = await _while_it_beats(client, pubsub, keys, entry.owner, request, ack_timeout, since)
        if waited is not None:
            return _outcome(waited, request)
    await client.delete(keys.marker(request.run_id))
    removed = await forget_owner(client, keys, entry.owner)
    logger.warning(
        "owner %s of run %s did not answer a cancel: it is gone; removed its %d run entries",
        entry.owner,
        request.run_id,
        removed,
    )
    return RemoteOutcome.owner_dead


async def _while_it_beats(
    client: aioredis.Redis,
    pubsub: Any,
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
        if (ack := await _next_ack(pubsub, limit - now, keys.ack(request.id))) is not None:
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


async def _next_ack(pubsub: Any, within: float, where: str) -> Ack | None:
    """The first well-formed answer within ``within`` seconds (garbage on the channel is skipped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None and (ack := parse(Ack, message["data"], where)) is not None:
            return ack
    return None
