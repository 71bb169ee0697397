"""Run storage: the ``Storage`` protocol, ``SqliteStorage`` (embedded default), ``PostgresStorage``.

``PostgresStorage`` needs the ``postgres`` extra (``pip install tether[postgres]``, for asyncpg).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Storage
from ._sqlite import SqliteStorage

if TYPE_CHECKING:
    from ._postgres import PostgresStorage

__all__ = ["PostgresStorage", "SqliteStorage", "Storage"]


def __getattr__(name: str) -> Any:
    if name == "PostgresStorage":  # imported on demand: asyncpg is an optional dependency
        from ._postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
