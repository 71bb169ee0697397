"""``tether serve``'s start-up: each way it can fail is one line on stderr and exit code 3.

Left to uvicorn, a lifespan that fails (storage or Redis unreachable) is logged with the whole
traceback Starlette formats (75 lines for an unreachable PostgreSQL), and a port in use is a log
line followed by ``sys.exit``. So ``tether serve`` binds its socket itself (:func:`bind`) and
enters the app's lifespan itself (:func:`started`), uvicorn then running with ``lifespan="off"``;
with several workers the parent runs the lifespan once (:func:`check`) before it starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from ..exceptions import TetherError

__all__ = [
    "STARTUP_FAILURE",
    "StartupError",
    "bind",
    "check",
    "log_leftover",
    "missing_extra",
    "one_line",
    "started",
]

logger = logging.getLogger("tether.server")
EXTRAS = {"asyncpg": "postgres", "redis": "redis", "fastapi": "server", "uvicorn": "server"}
"""The extra that brings each optional module tether imports."""


class StartupError(Exception):
    """The server could not start (port, storage, Redis): one line on stderr, exit code 3."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound as uvicorn binds it (SO_REUSEADDR, inheritable by workers); raises StartupError.

    Its protocol is IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections accepted from
    such a socket (``base_events._set_nodelay``); without it a keep-alive response waits ~40 ms for
    the client's delayed ACK (Nagle's algorithm).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[None]:
    """The app's lifespan (storage opened, Redis attached); a failure to enter it is a StartupError."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(app.router.lifespan_context(app))
        except Exception as exc:
            raise StartupError(one_line(exc)) from exc
        yield


async def check(app: FastAPI) -> None:
    """Enter and leave the app's lifespan once: what a worker would fail on, reported here."""
    async with started(app):
        pass


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: tether's own message, or the type and message of anything else."""
    if isinstance(exc, ModuleNotFoundError) and (hint := missing_extra(exc)):
        return hint
    text = str(exc) if isinstance(exc, TetherError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """ "X is not installed: pip install 'tether[extra]'" when ``exc`` is about an optional module."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRAS.get(top)
    return f"{top} is not installed: pip install 'tether[{extra}]'" if extra else None


def log_leftover(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """What a start stopped halfway leaves behind goes to the debug log, not to the terminal.

    asyncpg's TLS upgrade, cancelled while it waits for the server, drops a future holding
    ``ConnectionError('unexpected connection_lost() call')`` that nobody awaits.
    """
    logger.debug("left by the stopped start: %s", context.get("message"), exc_info=context.get("exception"))
