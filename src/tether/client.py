"""Clients for a tether server: ``AsyncTetherClient`` and the blocking ``TetherClient`` (on httpx).

Events come back as the library's own event classes; errors as :class:`~tether.APIError` carrying the
server's ``error_code``. Leaving a stream early closes the HTTP response, which (by default) cancels
the run on the server with ``source="consumer"``.

Example::

    async with AsyncTetherClient("http://127.0.0.1:7777", security_key="s3cret") as client:
        async for event in client.stream("storyteller", "Write a story", run_id="r-1"):
            ...
        await client.cancel_run("storyteller", "r-1", reason="stop")
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Literal

import httpx
from pydantic import TypeAdapter

from ._background_loop import background_loop
from ._loopbound import LoopBound
from ._run import BaseRunEvent, RunOutput, RunOutputEvent
from ._wire import AgentInfo, CancelResult
from .exceptions import APIError

__all__ = ["AsyncTetherClient", "TetherClient"]

_EVENTS: TypeAdapter[BaseRunEvent] = TypeAdapter(RunOutputEvent)


class AsyncTetherClient:
    """An async client for a tether server. Safe to use from several event loops."""

    def __init__(self, base_url: str, security_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {security_key}"} if security_key else {}
        make = functools.partial(httpx.AsyncClient, base_url=self.base_url, headers=headers, timeout=timeout)
        self._http = LoopBound(make, lambda client: client.aclose())

    async def list_agents(self) -> list[AgentInfo]:
        return [AgentInfo.model_validate(a) for a in await self._json("GET", "/agents")]

    async def run(self, agent_id: str, message: str, **fields: str | None) -> RunOutput:
        """Run to the end and return the RunOutput (``session_id``, ``user_id``, ``run_id`` optional)."""
        data = {"message": message, "stream": "false", **_present(fields)}
        return RunOutput.model_validate(await self._json("POST", f"/agents/{agent_id}/runs", data=data))

    async def stream(
        self, agent_id: str, message: str, **fields: str | None
    ) -> AsyncGenerator[BaseRunEvent, None]:
        """The run's events as they happen, ending with its terminal event."""
        data = {"message": message, "stream": "true", **_present(fields)}
        client = await self._http.get()
        async with client.stream("POST", f"/agents/{agent_id}/runs", data=data) as response:
            if response.status_code != 200:
                await response.aread()
                raise _error(response)
            async for event in _parse_sse(response.aiter_lines()):
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
        body = {"reason": reason, "mode": mode, "grace": grace}
        path = f"/agents/{agent_id}/runs/{run_id}/cancel"
        return CancelResult.model_validate(await self._json("POST", path, json=body, params={"wait": wait}))

    async def get_run(self, agent_id: str, run_id: str) -> RunOutput:
        return RunOutput.model_validate(await self._json("GET", f"/agents/{agent_id}/runs/{run_id}"))

    async def aclose(self) -> None:
        client = await self._http.get()
        await client.aclose()

    async def __aenter__(self) -> AsyncTetherClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        client = await self._http.get()
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(f"could not reach the tether server at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


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


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncGenerator[BaseRunEvent, None]:
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            yield _EVENTS.validate_json("\n".join(data))
            data = []


def _present(fields: dict[str, str | None]) -> dict[str, str]:
    allowed = {"session_id", "user_id", "run_id"}
    unknown = set(fields) - allowed
    if unknown:
        raise TypeError(f"unknown run field(s) {sorted(unknown)}; use {sorted(allowed)}")
    return {key: value for key, value in fields.items() if value is not None}


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
        detail, code = str(body.get("detail")), body.get("error_code")
    except ValueError:
        detail, code = response.text or response.reason_phrase, None
    return APIError(detail, status_code=response.status_code, error_code=code)
