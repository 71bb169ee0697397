"""The owner's side of a remote cancel: apply a request once per id, and answer it durably and by publish.

A request reaches the owner by pub/sub (``cancel:<owner>``) or, when that message was lost, as the durable
``marker:<run>`` its heartbeat reads. Either way it is applied once per request id (a request delivered
twice is answered alike), its answer is kept as ``answer:<request>``, then published on
``reply:<canceller>``, and the marker is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .._run._handle import RunHandle
from ._wire import Ack, AckResult, Keys, Request, logger, parse

ANSWERS_KEPT = 1024
"""Recent answers an owner remembers by request id, so a request delivered twice is answered alike."""
ANSWER_TTL = 60
"""Seconds the durable copy of an answer lives (a canceller waits far less)."""


class Answerer:
    """Applies and answers the cancel requests sent to this owner. Used on the background loop only."""

    def __init__(self, keys: Keys, find: Callable[[str], RunHandle | None]) -> None:
        self._keys = keys
        self._find = find  # a live run of this process by id
        self._answered: dict[str, AckResult] = {}  # request id -> answer, the latest ANSWERS_KEPT

    async def apply_marker(self, client: aioredis.Redis, run_id: str, raw: bytes) -> None:
        """Apply the durable copy of a request whose message was lost (or not answered yet)."""
        key = self._keys.marker(run_id)
        request = parse(Request, raw, key)
        if request is None or request.run_id != run_id:
            if request is not None:
                logger.warning("skipped a marker at %s for another run (%s)", key, request.run_id)
            await client.delete(key)  # it can never be applied
            return
        await self.answer(client, request)

    async def answer(self, client: aioredis.Redis, request: Request) -> None:
        """Apply ``request`` (once per request id), clear its marker, and publish the answer."""
        result = self._answered.get(request.id)
        if result is None:
            result = "failed"  # unless applying it returns
            with _survive(f"applying cancel request {request.id}"):
                result = self._apply(request)
            self._answered[request.id] = result
            if len(self._answered) > ANSWERS_KEPT:
                del self._answered[next(iter(self._answered))]
        ack = Ack(request=request.id, result=result).dumps()
        pipe = client.pipeline(transaction=False)  # in this order: the published answer may be lost
        pipe.set(self._keys.answer(request.id), ack, ex=ANSWER_TTL)
        if request.reply_to is not None:
            pipe.publish(self._keys.reply(request.reply_to), ack)
        pipe.delete(self._keys.marker(request.run_id))
        await pipe.execute()

    def _apply(self, request: Request) -> AckResult:
        handle = self._find(request.run_id)
        if handle is None or request.agent_id not in (None, handle.agent_id):
            return "not_found"
        accepted = handle.request_cancel(request.reason, "remote", mode=request.mode, grace=request.grace)
        return "cancelled" if accepted else "ended"


@contextlib.contextmanager
def _survive(what: str) -> Iterator[None]:
    """Log and swallow what ``what`` raised, but Redis errors and cancellation (their callers handle them)."""
    try:
        yield
    except (RedisError, OSError, asyncio.CancelledError):
        raise
    except BaseException:
        logger.exception("tether's Redis canceller: %s failed; skipped", what)
