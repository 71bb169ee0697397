"""Redis fixtures: the machine's Redis (``TETHER_TEST_REDIS_URL``), a key prefix per test, cleaned up.

Unreachable, these tests fail in CI (``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

REDIS_URL = os.environ.get("TETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as probe:
            probe.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    chosen = f"tether-test-{uuid.uuid4().hex[:10]}:"
    yield chosen
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{chosen}*"))
    if keys:
        client.delete(*keys)
    client.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayRedis:
    """A redis-server of our own on a free port, to stop and start again (the machine's stays up)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # Closed at once: an unclosed client's socket is reported whenever a later GC pass finds it.
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as probe:
                    probe.ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("the throwaway redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


def next_message(pubsub: Any) -> Any:
    """The next published message (get_message also returns None for a subscription it skipped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (message := pubsub.get_message(timeout=deadline - time.monotonic())) is not None:
            return message
    raise AssertionError("no message within 5 s")
