"""Run storage: the ``Storage`` protocol, ``SqliteStorage`` (embedded default), ``PostgresStorage``.

``PostgresStorage`` needs the ``postgres`` extra (``pip install tether[postgres]``, for asyncpg).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from ._base import Storage
from ._sqlite import SqliteStorage

if TYPE_CHECKING:
    from ._postgres import PostgresStorage

__all__ = ["PostgresStorage", "SqliteStorage", "Storage", "storage_from_url"]


def storage_from_url(url: str) -> Storage:
    """A store from a URL: ``sqlite:///path/to/runs.db`` or ``postgresql://user@host:5432/db``."""
    if url.startswith("sqlite:///"):
        return SqliteStorage(url.removeprefix("sqlite:///") or "tether.db")
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStorage

        return PostgresStorage(url)
    raise ConfigurationError(f"unsupported storage URL {url!r}: use sqlite:///path or postgresql://...")


def __getattr__(name: str) -> Any:
    if name == "PostgresStorage":  # imported on demand: asyncpg is an optional dependency
        from ._postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
