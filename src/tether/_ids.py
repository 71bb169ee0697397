"""Identifiers: generated ids and the one pattern every id must match."""

from __future__ import annotations

import re
import uuid

from .exceptions import ConfigurationError

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid id, else raise a ConfigurationError naming ``kind``."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ConfigurationError(
            f"invalid {kind} {value!r}: use 1 to 128 characters from A-Z a-z 0-9 . _ : -"
        )
    return value


def slug(name: str) -> str:
    """A stable id derived from a display name: ``"Story Teller"`` -> ``"story-teller"``."""
    text = re.sub(r"[^a-z0-9._:-]+", "-", name.lower()).strip("-")
    return text[:128] or "agent"
