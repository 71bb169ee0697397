"""The per-run options of ``arun``/``run`` (run_id, session_id, user_id, timeout, history)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from ._messages import Message
from .exceptions import ConfigurationError


class RunOptions(TypedDict, total=False):
    """The per-run keyword options of ``arun``/``run``, kept together on their way to the run.

    - ``run_id``: choose the id yourself (so you can cancel before the first event);
    - ``session_id``: groups the runs of one conversation;
    - ``timeout``: a deadline in seconds (default: the agent's), ending in ``RunCancelled(source="timeout")``;
    - ``history``: earlier messages to continue from, e.g. a previous ``RunOutput.messages``;
    - ``user_id``: who the run is for, recorded on the output and in storage.
    """

    run_id: str | None
    session_id: str | None
    user_id: str | None
    timeout: float | None
    history: Sequence[Message] | None


@dataclass(frozen=True)
class Options:
    """RunOptions as the agent passes them on, plus what only tether sets."""

    run_id: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    timeout: float | None = None
    history: Sequence[Message] | None = None
    parent_run_id: str | None = None
    unused_checked: bool = False  # the caller-chosen run id was checked against storage already


def parse_options(given: RunOptions) -> Options:
    unknown = set(given) - set(RunOptions.__annotations__)
    if unknown:
        raise ConfigurationError(
            f"unknown run option(s) {', '.join(sorted(unknown))}; use {', '.join(RunOptions.__annotations__)}"
        )
    return Options(**given)


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds (got {timeout!r})")
    return timeout
