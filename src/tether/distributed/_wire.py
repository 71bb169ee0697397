"""What travels through Redis: the keys, the messages, and the one place where they are parsed.

Everything read from Redis (pub/sub messages, hash entries, markers, owner beats, acks) goes through
:func:`parse`: anything that is not the expected JSON shape, with the expected types, is logged and
skipped (None), so garbage never ends a background task nor becomes a wrong answer.
"""

from __future__ import annotations

import json
import logging
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger("tether.distributed")

M = TypeVar("M", bound="Message")


class Message(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    def dumps(self) -> str:
        return self.model_dump_json()


class Entry(Message):
    """``runs`` hash value: who owns the run, and for which agent."""

    owner: str
    agent: str

    @staticmethod
    def written(owner: str, agent: str) -> str:
        """The entry as written: plain ``json.dumps``, a third of a model's cost (on every run start)."""
        return json.dumps({"owner": owner, "agent": agent})


class Request(Message):
    """A cancel request: published on ``cancel:<owner>`` and stored as ``marker:<run>`` (or ``early:<run>``
    when no worker had the run yet)."""

    id: str
    run_id: str
    agent_id: str | None = None
    reason: str | None = None
    mode: Literal["immediate", "after_turn"] = "immediate"
    grace: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reply_to: str | None = None
    """The canceller's owner id: the answer is published on ``reply:<reply_to>`` (None: not at all)."""


AckResult = Literal["cancelled", "ended", "not_found", "failed"]
"""An outcome's value, or ``failed``: the owner could not apply the request (its log says why)."""


class Ack(Message):
    """The owner's answer to one request: published on ``reply:<canceller>``, kept as ``answer:<request>``."""

    request: str
    result: AckResult


class Beat(Message):
    """``owner:<owner>``: the owner's heartbeat settings, in seconds (the key expires after ``ttl``)."""

    interval: float = Field(gt=0, allow_inf_nan=False)
    ttl: float = Field(gt=0, allow_inf_nan=False)


def parse(kind: type[M], raw: object, where: str) -> M | None:
    """``raw`` (bytes or str of JSON, read at ``where``) as a ``kind``; None, logged, if it is not one."""
    try:
        if not isinstance(raw, (bytes, str)):
            raise TypeError(f"expected bytes, got {type(raw).__name__}")
        return kind.model_validate_json(raw)
    except (ValidationError, TypeError, ValueError) as exc:
        logger.warning("skipped a malformed %s at %s in Redis: %r (%s)", kind.__name__, where, raw, _why(exc))
        return None


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}"
    return str(exc)


class Keys:
    """The key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.runs = prefix + "runs"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def cancel(self, owner: str) -> str:
        return f"{self.prefix}cancel:{owner}"

    def reply(self, owner: str) -> str:
        """The channel on which ``owner`` (as a canceller) receives the answers to its requests."""
        return f"{self.prefix}reply:{owner}"

    def marker(self, run_id: str) -> str:
        return f"{self.prefix}marker:{run_id}"

    def early(self, run_id: str) -> str:
        """A user's cancel for a run no worker had yet: applied by the worker where the run registers."""
        return f"{self.prefix}early:{run_id}"

    def answer(self, request_id: str) -> str:
        """A durable copy of the owner's answer to one request (an ack lost in transit is read here)."""
        return f"{self.prefix}answer:{request_id}"
