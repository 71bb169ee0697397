"""Clients for a tether server: ``AsyncTetherClient`` and the blocking ``TetherClient`` (on httpx).

Events come back as the library's own event classes; errors as :class:`~tether.APIError` carrying the
server's ``error_code``. Leaving a stream early closes the HTTP response, which (by default) cancels
the run on the server with ``source="consumer"`` (not a ``background=True`` run).

A stream whose connection is lost mid-run reconnects by itself through ``GET .../events`` with the
``event_index`` of the last event it delivered as ``Last-Event-ID`` (up to ``reconnects`` times in a
row, after 0.2, 0.4, 0.8 s...): the caller's loop sees every event once, in order, with no gap. Only
a connection lost before the server answered is not retried (the run may not exist).

Every failure is an :class:`~tether.APIError` raised ``from`` the original: no answer or a broken
connection (``status_code`` None), an error answer (its status and ``error_code``), an answer that
is not what the API promises (bad JSON, an unknown event, a stream that ends before the run's
terminal event). Streams are parsed as the SSE specification says (``httpx-sse``): lines end only at
CR, LF or CRLF, so U+2028, U+2029 or U+0085 in a model's text come back as they were sent.

Example::

    async with AsyncTetherClient("http://127.0.0.1:7777", security_key="s3cret") as client:
        async for event in client.stream("storyteller", "Write a story", run_id="r-1"):
            ...
        await client.cancel_run("storyteller", "r-1", reason="stop")
        started = await client.run("storyteller", "Write a story", background=True)  # 202 at once
        async for event in client.resume("storyteller", started.run_id, last_event_index=3):
            ...
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import httpx
from httpx_sse import EventSource, SSEError
from pydantic import TypeAdapter

from ._background_loop import background_loop
from ._loopbound import LoopBound
from ._run import BaseRunEvent, RunOutput, RunOutputEvent
from ._text import scrub
from ._wire import AgentInfo, CancelResult
from .exceptions import APIError

__all__ = ["AsyncTetherClient", "TetherClient"]

T = TypeVar("T")

_EVENTS: TypeAdapter[BaseRunEvent] = TypeAdapter(RunOutputEvent)
_AGENTS = TypeAdapter(list[AgentInfo])
_OUTPUT = TypeAdapter(RunOutput)
_CANCEL = TypeAdapter(CancelResult)
RECONNECT_BACKOFF = 0.2
"""Seconds before the first reconnect of a lost stream; doubled for each next one in a row."""


class AsyncTetherClient:
    """An async client for a tether server. Safe to use from several event loops.

    ``reconnects``: how many times in a row a stream that lost its connection mid-run is reconnected
    before it raises :class:`~tether.APIError` (0: never).
    """

    def __init__(
        self, base_url: str, security_key: str | None = None, *, timeout: float = 60.0, reconnects: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reconnects = reconnects
        headers = {"Authorization": f"Bearer {security_key}"} if security_key else {}
        make = functools.partial(httpx.AsyncClient, base_url=self.base_url, headers=headers, timeout=timeout)
        self._http = LoopBound(make, lambda client: client.aclose())

    async def list_agents(self) -> list[AgentInfo]:
        """The agents the server serves. Raises APIError."""
        return await self._json(_AGENTS, "GET", "/agents")

    async def run(
        self, agent_id: str, message: str, *, background: bool = False, **fields: str | None
    ) -> RunOutput:
        """Run to the end and return the RunOutput (``session_id``, ``user_id``, ``run_id`` optional).

        ``background=True`` returns at once (the server's 202), as ``agent.arun(background=True)`` does:
        a RunOutput with the run's ids and its status (PENDING or RUNNING); read the run with
        :meth:`resume`, stop it with :meth:`cancel_run`.
        Raises APIError (the run itself failing is not an error here: its output says ``ERROR``).
        """
        data = {"message": scrub(message), "stream": "false", **_present(fields)}
        if background:
            data["background"] = "true"
        return await self._json(_OUTPUT, "POST", f"/agents/{agent_id}/runs", data=data)

    def stream(
        self, agent_id: str, message: str, *, background: bool = False, **fields: str | None
    ) -> AsyncGenerator[BaseRunEvent, None]:
        """The run's events as they happen, ending with its terminal event. Raises APIError.

        Leaving early (``break``, ``aclose()``) closes the response: the server then cancels the run
        (``source="consumer"``) unless it was started with ``on_disconnect="continue"`` or
        ``background=True`` (then it goes on; read it again with :meth:`resume`). A connection lost
        mid-run is reconnected (see the module doc).
        """
        data = {"message": scrub(message), "stream": "true", **_present(fields)}
        if background:
            data["background"] = "true"
        first = _Request("POST", f"/agents/{agent_id}/runs", {"data": data})
        return self._follow(agent_id, first, _Position(run_id=fields.get("run_id")))

    def resume(
        self,
        agent_id: str,
        run_id: str,
        last_event_index: int | None = None,
        *,
        session_id: str | None = None,
    ) -> AsyncGenerator[BaseRunEvent, None]:
        """The events of run ``run_id`` after ``last_event_index`` (all when None), then its live ones,
        ending with its terminal event; a run that has ended is replayed. Raises APIError (404: no such
        run, or not of ``session_id``). Leaving early never stops the run. Nothing when the run has
        ended at or before ``last_event_index``.
        """
        body = {"last_event_index": last_event_index, "session_id": session_id}
        first = _Request("POST", f"/agents/{agent_id}/runs/{run_id}/resume", {"json": body})
        position = _Position(run_id=run_id, last=last_event_index, session_id=session_id, resuming=True)
        return self._follow(agent_id, first, position)

    async def cancel_run(
        self,
        agent_id: str,
        run_id: str,
        *,
        reason: str | None = None,
        mode: Literal["immediate", "after_turn"] = "immediate",
        grace: float | None = None,
        wait: float = 5.0,
    ) -> CancelResult:
        """Cancel a run; returns the 200 body (the run's status after waiting up to ``wait`` s)."""
        body = {"reason": None if reason is None else scrub(reason), "mode": mode, "grace": grace}
        path = f"/agents/{agent_id}/runs/{run_id}/cancel"
        return await self._json(_CANCEL, "POST", path, json=body, params={"wait": wait})

    async def get_run(self, agent_id: str, run_id: str) -> RunOutput:
        """The stored run (live runs too, as far as they got). Raises APIError (404: no such run)."""
        return await self._json(_OUTPUT, "GET", f"/agents/{agent_id}/runs/{run_id}")

    async def aclose(self) -> None:
        client = await self._http.get()
        await client.aclose()

    async def __aenter__(self) -> AsyncTetherClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _follow(
        self, agent_id: str, request: _Request, at: _Position
    ) -> AsyncGenerator[BaseRunEvent, None]:
        """The events ``request`` answers; a connection lost mid-run goes on through the events route."""
        client = await self._http.get()
        failures = 0
        first: BaseException | None = None  # what lost the connection, before the reconnects
        while True:
            try:
                async with contextlib.aclosing(_one_stream(client, self.base_url, request, at)) as events:
                    async for event in events:
                        failures, first = 0, None
                        yield event
                return
            except _Lost as lost:
                cause = lost.__cause__
                first = first or cause
                where = f"the connection to the tether server at {self.base_url} was lost"
                if at.run_id is None:
                    raise APIError(f"{where} before the run's id was known: {cause}") from cause
                if failures >= self.reconnects:
                    if not failures:
                        raise APIError(f"{where}: {cause}") from cause
                    raise APIError(
                        f"{where} ({first}) and {failures} reconnect(s) failed: {cause}"
                    ) from cause
                await anyio.sleep(RECONNECT_BACKOFF * 2**failures)
                failures += 1
                request = at.events_request(agent_id)

    async def _json(self, adapter: TypeAdapter[T], method: str, path: str, **kwargs: Any) -> T:
        client = await self._http.get()
        with _translated(self.base_url):
            response = await client.request(method, path, **kwargs)
            if response.status_code >= 400:
                raise _error(response)
            return adapter.validate_json(response.content)


class TetherClient:
    """The blocking client: the same calls as :class:`AsyncTetherClient`, usable from any thread."""

    def __init__(
        self, base_url: str, security_key: str | None = None, *, timeout: float = 60.0, reconnects: int = 3
    ) -> None:
        self._client = AsyncTetherClient(base_url, security_key, timeout=timeout, reconnects=reconnects)
        self.base_url = self._client.base_url

    def list_agents(self) -> list[AgentInfo]:
        return background_loop.call(self._client.list_agents)

    def run(
        self, agent_id: str, message: str, *, background: bool = False, **fields: str | None
    ) -> RunOutput:
        call = functools.partial(self._client.run, agent_id, message, background=background, **fields)
        return background_loop.call(call)

    def stream(
        self, agent_id: str, message: str, *, background: bool = False, **fields: str | None
    ) -> Iterator[BaseRunEvent]:
        return _blocking(self._client.stream(agent_id, message, background=background, **fields))

    def resume(
        self,
        agent_id: str,
        run_id: str,
        last_event_index: int | None = None,
        *,
        session_id: str | None = None,
    ) -> Iterator[BaseRunEvent]:
        return _blocking(self._client.resume(agent_id, run_id, last_event_index, session_id=session_id))

    def cancel_run(self, agent_id: str, run_id: str, **options: Any) -> CancelResult:
        return background_loop.call(functools.partial(self._client.cancel_run, agent_id, run_id, **options))

    def get_run(self, agent_id: str, run_id: str) -> RunOutput:
        return background_loop.call(functools.partial(self._client.get_run, agent_id, run_id))

    def close(self) -> None:
        background_loop.call(self._client.aclose)

    def __enter__(self) -> TetherClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_SSE_HEADERS = {"Accept": "text/event-stream"}


def _blocking(events: AsyncGenerator[BaseRunEvent, None]) -> Iterator[BaseRunEvent]:
    """An async generator of the client's, iterated from the background loop."""
    try:
        while True:
            try:
                yield background_loop.call(events.__anext__)
            except StopAsyncIteration:
                return
    finally:
        background_loop.call(events.aclose)


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Position:
    """Where a followed run is: its id (once known), the last event_index delivered."""

    run_id: str | None = None
    last: int | None = None
    session_id: str | None = None
    resuming: bool = False  # the first request was a resume: it may rightly have nothing to send

    def events_request(self, agent_id: str) -> _Request:
        """The request that goes on from here: GET .../events with Last-Event-ID."""
        headers = {} if self.last is None else {"Last-Event-ID": str(self.last)}
        params = {} if self.session_id is None else {"session_id": self.session_id}
        path = f"/agents/{agent_id}/runs/{self.run_id}/events"
        return _Request("GET", path, {"headers": headers, "params": params})


class _Lost(Exception):
    """The connection was lost mid-run (raised from httpx's error): the stream may go on elsewhere."""


async def _one_stream(
    client: httpx.AsyncClient, base_url: str, request: _Request, at: _Position
) -> AsyncGenerator[BaseRunEvent, None]:
    """The events of one response, each after ``at.last`` (``at`` moves along). Raises _Lost for a
    connection lost after the server answered (or, for a reconnect, before), else APIError."""
    options = dict(request.options)
    headers = {**_SSE_HEADERS, **options.pop("headers", {})}
    answered = False
    with _translated(base_url):
        try:
            async with client.stream(request.method, request.path, headers=headers, **options) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error(response)
                answered = True
                events = _events(response, allow_empty=at.resuming and at.last is not None)
                async with contextlib.aclosing(events):
                    async for event in events:
                        at.resuming = False
                        if at.last is not None and event.event_index <= at.last:
                            continue  # never twice, whatever a server sends
                        at.run_id, at.last = event.run_id, event.event_index
                        yield event
        except SSEError:
            raise  # a TransportError too for httpx-sse, but no loss: the answer was not an event stream
        except httpx.TransportError as exc:
            if answered or request.method == "GET":  # a reconnect: the run exists
                raise _Lost from exc
            raise


async def _events(
    response: httpx.Response, *, allow_empty: bool = False
) -> AsyncGenerator[BaseRunEvent, None]:
    """The run events of an SSE response, up to the terminal one, which must come last.

    ``allow_empty``: a stream with no event at all is no error (the run ended before the index asked).
    """
    messages = EventSource(response).aiter_sse()
    ended = False
    count = 0
    try:
        async for message in messages:
            if not message.data:
                continue  # the SSE spec dispatches no event without data (httpx-sse does, after an id:)
            if ended:
                raise ValueError(f"a {message.event!r} event came after the run's terminal event")
            event = _EVENTS.validate_json(message.data)
            if event.event.value != message.event:
                raise ValueError(f"an SSE event named {message.event!r} carries a {event.event.value} event")
            ended = event.is_terminal
            count += 1
            yield event
    finally:
        await messages.aclose()
    if not ended and not (allow_empty and count == 0):
        raise httpx.RemoteProtocolError("the event stream ended before the run's terminal event")


@contextlib.contextmanager
def _translated(base_url: str) -> Iterator[None]:
    """The one boundary where httpx's, httpx-sse's and pydantic's errors become APIError."""
    try:
        yield
    except SSEError as exc:  # before HTTPError, its base class: the answer was not an event stream
        raise APIError(f"the tether server at {base_url} did not answer with events: {exc}") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise APIError(f"could not reach the tether server at {base_url}: {exc}") from exc
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise APIError(f"the connection to the tether server at {base_url} failed: {detail}") from exc
    except ValueError as exc:  # bad JSON or an unexpected shape (pydantic's ValidationError)
        raise APIError(f"the tether server at {base_url} answered something unexpected: {exc}") from exc


def _present(fields: dict[str, str | None]) -> dict[str, str]:
    allowed = {"session_id", "user_id", "run_id"}
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"unknown run field(s) {sorted(unknown)}; use {sorted(allowed)}")
    return {key: scrub(value) for key, value in fields.items() if value is not None}


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        detail, code = str(body.get("detail")), body.get("error_code")
    except ValueError:
        detail, code = response.text or response.reason_phrase, None
    return APIError(detail, status_code=response.status_code, error_code=code)
