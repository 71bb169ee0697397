"""Clients for a tether server: ``AsyncTetherClient`` and the blocking ``TetherClient`` (on httpx).

Events come back as the library's own event classes; errors as :class:`~tether.APIError` carrying the
server's ``error_code``. Leaving a stream early closes the HTTP response, which (by default) cancels
the run on the server with ``source="consumer"``.

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
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar

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


class AsyncTetherClient:
    """An async client for a tether server. Safe to use from several event loops."""

    def __init__(self, base_url: str, security_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {security_key}"} if security_key else {}
        make = functools.partial(httpx.AsyncClient, base_url=self.base_url, headers=headers, timeout=timeout)
        self._http = LoopBound(make, lambda client: client.aclose())

    async def list_agents(self) -> list[AgentInfo]:
        """The agents the server serves. Raises APIError."""
        return await self._json(_AGENTS, "GET", "/agents")

    async def run(self, agent_id: str, message: str, **fields: str | None) -> RunOutput:
        """Run to the end and return the RunOutput (``session_id``, ``user_id``, ``run_id`` optional).

        Raises APIError (the run itself failing is not an error here: its output says ``ERROR``).
        """
        data = {"message": scrub(message), "stream": "false", **_present(fields)}
        return await self._json(_OUTPUT, "POST", f"/agents/{agent_id}/runs", data=data)

    async def stream(
        self, agent_id: str, message: str, **fields: str | None
    ) -> AsyncGenerator[BaseRunEvent, None]:
        """The run's events as they happen, ending with its terminal event. Raises APIError.

        Leaving early (``break``, ``aclose()``) closes the response: the server then cancels the run
        (``source="consumer"``) unless it was started with ``on_disconnect="continue"``.
        """
        data = {"message": scrub(message), "stream": "true", **_present(fields)}
        client = await self._http.get()
        path = f"/agents/{agent_id}/runs"
        with _translated(self.base_url):
            async with client.stream("POST", path, data=data, headers=_SSE_HEADERS) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _error(response)
                async for event in _events(response):
                    yield event

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

    async def _json(self, adapter: TypeAdapter[T], method: str, path: str, **kwargs: Any) -> T:
        client = await self._http.get()
        with _translated(self.base_url):
            response = await client.request(method, path, **kwargs)
            if response.status_code >= 400:
                raise _error(response)
            return adapter.validate_json(response.content)


class TetherClient:
    """The blocking client: the same calls as :class:`AsyncTetherClient`, usable from any thread."""

    def __init__(self, base_url: str, security_key: str | None = None, *, timeout: float = 60.0) -> None:
        self._client = AsyncTetherClient(base_url, security_key, timeout=timeout)
        self.base_url = self._client.base_url

    def list_agents(self) -> list[AgentInfo]:
        return background_loop.call(self._client.list_agents)

    def run(self, agent_id: str, message: str, **fields: str | None) -> RunOutput:
        return background_loop.call(functools.partial(self._client.run, agent_id, message, **fields))

    def stream(self, agent_id: str, message: str, **fields: str | None) -> Iterator[BaseRunEvent]:
        events = self._client.stream(agent_id, message, **fields)
        try:
            while True:
                try:
                    yield background_loop.call(events.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            background_loop.call(events.aclose)

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


async def _events(response: httpx.Response) -> AsyncGenerator[BaseRunEvent, None]:
    """The run events of an SSE response, up to the terminal one, which must come last."""
    messages = EventSource(response).aiter_sse()
    ended = False
    try:
        async for message in messages:
            if ended:
                raise ValueError(f"a {message.event!r} event came after the run's terminal event")
            event = _EVENTS.validate_json(message.data)
            if event.event.value != message.event:
                raise ValueError(f"an SSE event named {message.event!r} carries a {event.event.value} event")
            ended = event.is_terminal
            yield event
    finally:
        await messages.aclose()
    if not ended:
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
