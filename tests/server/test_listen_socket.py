"""The socket ``tether serve`` listens on: connections accepted from it send at once (TCP_NODELAY).

Without it, a response on a kept-alive connection waited ~40 ms for the client's delayed ACK.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tether.server._startup import bind


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_accepted_connections_have_tcp_nodelay(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    accepted: asyncio.Queue[int] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        await accepted.put(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        await writer.wait_closed()

    with bind(host, 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(host, sock.getsockname()[1])
            assert await asyncio.wait_for(accepted.get(), 5) == 1
            writer.close()
            await writer.wait_closed()
