"""The canceller's side: deliver one cancel request to a run's owner and get its exact answer.

1. ``runs[<run>]`` names the owner (no entry, or another agent's run: ``not_found``). A Redis that has
   just restarted (empty) is given a heartbeat interval for the owners to write their entries again.
2. Subscribe to ``ack:<request>``, then write the durable ``marker:<run>``, then publish on
   ``cancel:<owner>`` (twice at most): a live owner answers by pub/sub within ``ack_timeout``.
3. No answer: a live owner still answers when its next heartbeat applies the marker, so wait until that
   heartbeat is due (plus ``ack_timeout``). No answer by then: the owner is dead; its entries are
   removed and the answer is ``owner_dead``.

The request id makes the exchange idempotent: sent twice (a retry), it is applied once and answered the
same way (the owner remembers its recent answers).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import redis.asyncio as aioredis

from ..exceptions import RemoteCancelError
from ._owners import forget_owner, next_beat_within
from ._protocol import RemoteOutcome
from ._wire import Ack, Entry, Keys, Request, logger, parse

MARKER_TTL = 60
"""Seconds a marker lives: an owner applies it at its next heartbeat, well within that."""
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
    await client.delete(keys.marker(request.run_id))
    removed = await forget_owner(client, keys, entry.owner)
    logger.warning(
        "owner %s of run %s did not answer a cancel: it is gone; removed its %d run entries",
        entry.owner,
        request.run_id,
        removed,
    )
    return RemoteOutcome.owner_dead


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
