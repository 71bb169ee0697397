"""``tether serve``: agents over HTTP under uvicorn; a shutdown signal cancels the live runs at once.

Why at once: uvicorn's graceful shutdown waits for open connections, and a streaming run keeps one
open, *before* the app's lifespan (which cancels too, and waits until the runs are stored) gets its
turn. So the signal itself cancels every live run (``source="shutdown"``). In one process
:class:`_Server` does it in ``handle_exit``. With ``workers > 1`` uvicorn's supervisor starts plain
``uvicorn.Server`` workers that build the app with :func:`app_from_env` from ``TETHER_*`` environment
variables; that factory runs after the worker installed its signal handlers and chains the same
step in front of them.

Start-up failures (port in use, storage unreachable, a bad Redis URL) are one line and exit code 3: see
``tether.server._startup``, which binds the socket and runs the app's lifespan before uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from .._agent import Agent
from .._run import registry
from ..exceptions import ConfigurationError, StorageError
from ..storage import storage_from_url
from ..testing import demo_model
from ._app import DEFAULT_STORAGE_URL, create_app
from ._disconnect import DisconnectPolicy
from ._startup import STARTUP_FAILURE, StartupError, bind, check, log_leftover, missing_extra, started

logger = logging.getLogger("tether.server")

TARGET_ENV = "TETHER_SERVE_TARGET"
STORAGE_ENV = "TETHER_STORAGE_URL"
KEY_ENV = "TETHER_SECURITY_KEY"
ON_DISCONNECT_ENV = "TETHER_ON_DISCONNECT"
FACTORY = "tether.server._serve:app_from_env"
SHUTDOWN_REASON = "server shutting down"
# Runs are already cancelled when uvicorn starts waiting for connections; this only bounds slow
# non-run requests. The lifespan then waits (up to SHUTDOWN_WAIT) for the runs to be stored.
GRACEFUL_SHUTDOWN = 5
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEMO_ID = "storyteller"

Handler = Callable[[int, FrameType | None], Any]
Target = list[Agent] | FastAPI


class TargetError(Exception):
    """A bad ``MODULE:ATTR`` or option: reported as one line, exit code 2."""


@dataclass(frozen=True)
class ServeSettings:
    """What ``tether serve`` builds the app from; ``None`` means "not given".

    ``target`` is ``MODULE:ATTR`` (``None``: the demo agent). The other three are
    :func:`create_app`'s options; for an app target they must stay ``None``.
    """

    target: str | None = None
    storage_url: str | None = None
    security_key: str | None = None
    on_disconnect: DisconnectPolicy | None = None

    def resolved(self) -> ServeSettings:
        """The defaults filled in: ``TETHER_STORAGE_URL`` or ``tether.db``, ``TETHER_SECURITY_KEY``."""
        return ServeSettings(
            self.target,
            self.storage_url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE_URL,
            self.security_key if self.security_key is not None else os.environ.get(KEY_ENV) or None,
            self.on_disconnect or "cancel",
        )

    def environ(self) -> dict[str, str | None]:
        """The variables :func:`app_from_env` reads (``None``: unset it)."""
        return {
            TARGET_ENV: self.target,
            STORAGE_ENV: self.storage_url,
            KEY_ENV: self.security_key,
            ON_DISCONNECT_ENV: self.on_disconnect,
        }

    @classmethod
    def from_env(cls) -> ServeSettings:
        policy = os.environ.get(ON_DISCONNECT_ENV) or None
        if policy not in (None, "cancel", "continue"):
            raise TargetError(f"{ON_DISCONNECT_ENV} must be 'cancel' or 'continue' (got {policy!r})")
        return cls(
            os.environ.get(TARGET_ENV) or None,
            os.environ.get(STORAGE_ENV) or None,
            os.environ.get(KEY_ENV) or None,
            cast("DisconnectPolicy | None", policy),
        )


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 7777, workers: int = 1) -> int:
    """Serve until SIGTERM or Ctrl-C, then return the exit code (0 after a signal).

    A bad target or option is one line on stderr and exit code 2; a server that cannot start (port
    in use, storage unreachable) one line and exit code 3. On the signal every live run is
    cancelled at once (``source="shutdown"``) and stored before the process ends.

    Example::

        sys.exit(serve(ServeSettings("myapp:agent", storage_url="sqlite:///runs.db"), port=8000))
    """
    try:
        loaded = load_target(settings.target) if settings.target else None
        if isinstance(loaded, FastAPI) and (
            settings.storage_url is not None
            or settings.security_key is not None
            or settings.on_disconnect is not None
        ):
            raise TargetError(
                f"{settings.target} is an app from create_app: pass storage, security_key and "
                "on_disconnect to create_app, not --storage/--security-key/--on-disconnect"
            )
        if workers > 1:
            return _serve_workers(loaded, settings, host, port, workers)
        return _serve_one(loaded, settings, host, port)
    except TargetError as exc:
        _say(f"tether: {exc}")
        return EXIT_USAGE
    except StartupError as exc:
        _say(f"tether: {exc}")
        return STARTUP_FAILURE


def load_target(spec: str) -> Target:
    """The agents or app named by ``MODULE:ATTR``, imported with the current directory on the path."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TargetError(f"bad target {spec!r}: expected MODULE:ATTR, e.g. myproject.agents:agent")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the project in the current directory
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise TargetError(f"no module named {module_name!r} (target {spec!r})") from None
        raise TargetError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the user's module is broken: say how, in one line
        raise TargetError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(found, Agent):
        return [found]
    if isinstance(found, list | tuple) and found and all(isinstance(a, Agent) for a in found):
        return list(found)
    if isinstance(found, FastAPI):
        if _agent_ids(found) is None:
            raise TargetError(f"{spec} is a FastAPI app not made by tether's create_app")
        return found
    raise TargetError(
        f"{spec} must be an Agent, a list of Agents or an app from create_app (got {type(found).__name__})"
    )


def app_from_env() -> FastAPI:
    """The app of one ``tether serve --workers N`` worker, built from the variables its parent set.

    Also makes this worker's shutdown signals cancel its live runs at once (see the module doc).
    """
    try:
        settings = ServeSettings.from_env()
        loaded = load_target(settings.target) if settings.target else None
        app, demo = _build(loaded, settings, _WORKER_RESOURCES)
        if demo:
            _say(f"tether: worker {os.getpid()}: {demo}")
    except TargetError as exc:
        logger.error("tether: %s", exc)
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor then stops instead of restarting us in a loop
    _chain_signal_handlers()
    return app


# What a worker's app needs for the worker's whole life (the demo model); never closed: the
# process ends instead.
_WORKER_RESOURCES = contextlib.ExitStack()


def _serve_one(loaded: Target | None, settings: ServeSettings, host: str, port: int) -> int:
    with bind(host, port) as sock, contextlib.ExitStack() as resources:
        app, demo = _build(loaded, settings, resources)
        banner = [f"tether: {demo}"] if demo else []
        banner.append(f"tether: serving agents {', '.join(_agent_ids(app) or [])} on {_url(host, port)}")
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN
        )
        server = _Server(config, banner)
        server.run([sock])
    if server.stopped_by is not None:
        _say("tether: stopped before the server started")
        return EXIT_INTERRUPTED if server.stopped_by == signal.SIGINT else 0
    return 0 if server.started else STARTUP_FAILURE


def _serve_workers(loaded: Target | None, settings: ServeSettings, host: str, port: int, n: int) -> int:
    with bind(host, port) as sock:
        # Built here to check the options and the start-up (its lifespan, once), and to name the
        # agents; each worker builds its own.
        with contextlib.ExitStack() as resources:
            app, demo = _build(loaded, settings, resources)
            checking = check(app)
            try:
                asyncio.run(checking)
            finally:
                checking.close()  # not started if a Ctrl-C came first: no "never awaited" warning
        if demo:
            _say("tether: no MODULE:ATTR given: each worker serves a demo agent on the built-in model")
        # An app target was configured by its module (maybe from these very variables): only name it.
        target_only = isinstance(loaded, FastAPI)
        environ = {TARGET_ENV: settings.target} if target_only else settings.resolved().environ()
        for name, value in environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        ids = ", ".join(_agent_ids(app) or [])
        _say(f"tether: serving agents {ids} on {_url(host, port)} with {n} workers")
        config = uvicorn.Config(
            FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=n,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def _build(
    loaded: Target | None, settings: ServeSettings, resources: contextlib.ExitStack
) -> tuple[FastAPI, str | None]:
    """The app for ``loaded`` (the demo agent when None, its model kept open in ``resources``).

    Also a note saying that the demo agent is served, and on what (None for a target).
    """
    if isinstance(loaded, FastAPI):
        return loaded, None
    demo = None
    if loaded is None:
        model, where = resources.enter_context(demo_model())
        demo = f"no MODULE:ATTR given: serving a demo agent on {where}"
        loaded = [Agent(id=DEMO_ID, name="Storyteller", model=model, description="Writes long stories")]
    options = settings.resolved()
    assert options.storage_url is not None and options.on_disconnect is not None
    try:
        storage = storage_from_url(options.storage_url)
        app = create_app(
            loaded, storage=storage, security_key=options.security_key, on_disconnect=options.on_disconnect
        )
    except (ConfigurationError, StorageError) as exc:  # a bad URL or path: checked before any I/O
        raise TargetError(str(exc)) from None
    except ImportError as exc:  # a storage URL whose driver is an extra not installed
        hint = missing_extra(exc) if isinstance(exc, ModuleNotFoundError) else None
        raise TargetError(hint or str(exc)) from None
    return app, demo


class _Server(uvicorn.Server):
    """uvicorn's server, whose shutdown signal first cancels the live runs, and which exits cleanly.

    It runs the app's lifespan itself, around uvicorn's (``lifespan="off"``): a failure to start is
    then a :class:`StartupError`, one line, and ``banner`` is printed only once the app is up. A
    shutdown signal while the app starts (e.g. connecting to a storage that does not answer) stops
    the start at once: ``stopped_by`` is then that signal.
    """

    def __init__(self, config: uvicorn.Config, banner: list[str]) -> None:
        super().__init__(config)
        self.banner = banner
        self.stopped_by: int | None = None
        self._starting: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    async def serve(self, sockets: list[Any] | None = None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._starting = (asyncio.get_running_loop(), task)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await stack.enter_async_context(started(cast(FastAPI, self.config.app)))
                finally:
                    self._starting = None
                for line in self.banner:
                    _say(line)
                await super().serve(sockets)
        except asyncio.CancelledError:
            if self.stopped_by is None:
                raise
            task.uncancel()  # the cancel was ours, for the signal: the start is over, nothing failed

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        _cancel_live_runs_soon()
        super().handle_exit(sig, frame)

    def run(self, sockets: list[Any] | None = None) -> None:
        # uvicorn re-raises the signal after shutting down, for the handler it found: make that one
        # ask for an exit, so SIGTERM ends with code 0 (not killed by the signal) and a signal that
        # comes before uvicorn took over still stops the server.
        with _signals_handled_by(self._exit_requested):
            super().run(sockets)

    def _exit_requested(self, sig: int, frame: FrameType | None) -> None:
        self.should_exit = True
        if self._starting is not None:  # a signal handler: only schedule the cancel on the loop
            self.stopped_by = sig
            loop, task = self._starting
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(loop.set_exception_handler, log_leftover)
                loop.call_soon_threadsafe(task.cancel)


def _chain_signal_handlers() -> None:
    """Put run cancellation in front of the shutdown signal handlers installed now (uvicorn's)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread has signal handlers; uvicorn does not install any then either
    for sig in SIGNALS:
        installed = signal.getsignal(sig)
        if callable(installed):
            signal.signal(sig, _cancelling_first(installed))


def _cancelling_first(handler: Handler) -> Handler:
    def cancel_then_handle(sig: int, frame: FrameType | None) -> None:
        _cancel_live_runs_soon()
        handler(sig, frame)

    return cancel_then_handle


def _cancel_live_runs_soon() -> None:
    """Called in a signal handler: cancel every live run from the event loop, not from here.

    The interrupted code may hold the locks ``request_cancel`` takes, or be inside a cancel scope;
    ``call_soon_threadsafe`` only appends to the loop's queue, as asyncio's own signal handling does.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop running yet or any more: no runs to stop
    with contextlib.suppress(RuntimeError):  # the loop is closing
        loop.call_soon_threadsafe(_cancel_live_runs)


def _cancel_live_runs() -> None:
    for handle in registry.handles():
        handle.request_cancel(SHUTDOWN_REASON, "shutdown")


@contextlib.contextmanager
def _signals_handled_by(handler: Handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _agent_ids(app: FastAPI) -> list[str] | None:
    """The ids of the agents an app from ``create_app`` serves; None for any other app."""
    agents = getattr(getattr(app.state, "tether", None), "agents", None)
    return list(agents) if isinstance(agents, dict) else None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
