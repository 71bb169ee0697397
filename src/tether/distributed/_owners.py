"""Owners' liveness: when a live owner answers at the latest, and removing what a dead one left behind.

An owner refreshes ``owner:<owner>`` (a :class:`Beat`, expiring after its ``ttl``) and rewrites its
``runs`` entries at every heartbeat. A dead owner's entries are removed by the canceller that found it
dead (:func:`forget_owner`) and by every live worker's heartbeat (:func:`sweep`, one page per beat).
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from ._wire import Beat, Entry, Keys, parse

SWEEP_PAGE = 200
"""Entries of the ``runs`` hash looked at by one heartbeat's sweep."""


async def next_beat_within(client: aioredis.Redis, keys: Keys, owner: str, default_interval: float) -> float:
    """Seconds until ``owner``'s next heartbeat is due (0 if overdue), on Redis' own clock (the key's TTL).

    Without a readable beat (expired, never written, garbage), ``default_interval`` (this worker's own).
    """
    key = keys.owner(owner)
    raw, left_ms = await client.get(key), await client.pttl(key)
    beat = parse(Beat, raw, key) if raw is not None else None
    if beat is None or left_ms < 0:
        return default_interval
    age = beat.ttl - left_ms / 1000
    return max(beat.interval - age, 0.0)


async def last_beat(client: aioredis.Redis, keys: Keys, owner: str) -> tuple[float, float] | None:
    """When ``owner`` last beat, on Redis' own clock (seconds), and its interval; None without a beat."""
    key = keys.owner(owner)
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    pipe.time()
    raw, left_ms, (seconds, micros) = await pipe.execute()
    beat = parse(Beat, raw, key) if raw is not None else None
    if beat is None or left_ms < 0:
        return None
    now = float(seconds) + float(micros) / 1e6
    return now - (beat.ttl - left_ms / 1000), beat.interval


async def forget_owner(client: aioredis.Redis, keys: Keys, owner: str) -> int:
    """Remove ``owner``'s key and every ``runs`` entry it owns; the number of entries removed."""
    await client.delete(keys.owner(owner))
    theirs = [
        run_id
        async for run_id, raw in client.hscan_iter(keys.runs, count=SWEEP_PAGE)
        if (entry := parse(Entry, raw, f"{keys.runs}[{run_id!r}]")) is not None and entry.owner == owner
    ]
    if theirs:
        await client.hdel(keys.runs, *theirs)
    return len(theirs)


async def sweep(client: aioredis.Redis, keys: Keys, cursor: int, me: str) -> int:
    """Look at one page of ``runs``; remove the entries of owners whose key has expired. The next cursor."""
    cursor, page = await client.hscan(keys.runs, cursor, count=SWEEP_PAGE)
    owners: dict[str, list[Any]] = {}
    for run_id, raw in cast("dict[Any, Any]", page).items():
        entry = parse(Entry, raw, f"{keys.runs}[{run_id!r}]")
        if entry is not None and entry.owner != me:
            owners.setdefault(entry.owner, []).append(run_id)
    if owners:
        pipe = client.pipeline(transaction=False)
        for owner in owners:
            pipe.exists(keys.owner(owner))
        alive = await pipe.execute()
        dead = [
            run_id for (owner, ids), up in zip(owners.items(), alive, strict=True) if not up for run_id in ids
        ]
        if dead:
            await client.hdel(keys.runs, *dead)
    return int(cursor)
